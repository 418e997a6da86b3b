"""Benchmark: GRPO step throughput, llamafleet's ``grpo`` stage across its fleets vs TRL's
``GRPOTrainer`` generating in-process with transformers, same run, same machine. Results go to
BENCHMARKS.md ("GRPO").

Both sides: the same built model (``--size``, default ``small``), the same prompts ("Is <n> a good
number?" in the model's chat template), the same group size, sampling (temperature 1, ``max_tokens``
new tokens), LoRA rank 8 on every linear layer, learning rate, beta 0, one optimisation pass per
batch (TRL ``num_iterations=1``; llamafleet ``ppo_epochs=1``), one optimizer step per step (TRL's
batch of ``prompts x samples`` completions; llamafleet micro-batches of ``prompts`` rows
accumulated over the step), the reward 1 when the answer starts with "yes" (TRL: a Python
function; llamafleet: the reward service's ``regex`` scorer).

- ``fleet``: ``llamafleet.cluster.up`` (Redis, data, training, 1 rollout worker with the HF engine,
  1 reward worker) and a STAGE_GRPO job of ``--steps`` steps; the step wall time is the time
  between the job's checkpoints (one per step); the trainer's peak memory is the runner process's
  ``VmHWM``, read while it runs.
- ``trl``: after each fleet job (the two alternate), ``GRPOTrainer`` in a fresh subprocess (``--peer trl``), the step wall time from a
  ``TrainerCallback`` (generation, scoring and the update are all inside TRL's step); the peak is
  that process's ``VmHWM`` after training.

prompts/s = prompts per step / step wall; trained tokens/s = completion tokens in the step's loss
/ step wall. The first step (warm-up: loading, first adapter) is left out of the medians.

    .venv/bin/python bench/bench_grpo.py [--size small] [--steps 5] [--prompts 8] [--samples 4]
        [--max-tokens 16] [--repeats 1] [--max-staleness 1] [--work /tmp/bench-grpo]
        [--json out.json]

``--max-staleness 2`` lets the fleet generate step k+1 with the policy of step k while it trains
step k (off-policy by one version, weighted by the truncated engine ratio): not TRL's algorithm,
so it is a separate row, never the headline ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
YES = r"^\s*yes"
NUMBERS = range(3000, 3400)


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def vm_hwm_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_model(work: Path, size: str) -> Path:
    from services.training.tiny.model import build_tiny_model

    out = work / "models" / size
    if not (out / "config.json").exists():
        build_tiny_model(out, size, seed=0, force=True)
    return out


# --- llamafleet across its fleets --------------------------------------------------------------


def grpo_spec(job: str, model: Path, data: Path, args):
    from llamafleet.common.v1 import common_pb2
    from llamafleet.data.v1 import data_pb2
    from llamafleet.rollout.v1 import rollout_pb2
    from llamafleet.training.v1 import training_pb2 as pb

    source = data_pb2.DatasetSource(
        files=data_pb2.FileSource(paths=[str(data)]),
        format=data_pb2.FormatOptions(format=data_pb2.DATASET_FORMAT_ALPACA),
    )
    spec = pb.TrainingJobSpec(
        job_id=job, base_model=str(model), stage=pb.STAGE_GRPO,
        compute_dtype=pb.COMPUTE_DTYPE_FLOAT32,
    )  # fmt: skip
    spec.dataset.spec.CopyFrom(
        data_pb2.DatasetSpec(sources=[source], kind=data_pb2.EXAMPLE_KIND_PROMPT)
    )
    spec.finetuning.type = pb.FINETUNING_TYPE_LORA
    spec.finetuning.lora.rank, spec.finetuning.lora.alpha = 8, 16
    hp = spec.hyperparameters
    hp.learning_rate, hp.per_device_batch_size, hp.seed = 1e-3, args.prompts, 0
    hp.gradient_accumulation_steps = args.samples  # prompts x samples rows: one optimizer step
    hp.max_steps, hp.logging_steps = args.steps, 1
    p = spec.ppo
    p.rollout_batch_size, p.ppo_epochs = args.prompts, 1
    p.max_staleness = args.max_staleness  # 1: on-policy, as TRL; 2: generation overlaps training
    p.sampling.CopyFrom(
        rollout_pb2.SamplingParams(max_tokens=args.max_tokens, temperature=1.0, n=args.samples)
    )
    p.reward_scorer = "regex"
    p.reward_settings.CopyFrom(common_pb2.RewardSettings(regex_pattern=YES))
    spec.grpo.loss_type = pb.GRPO_LOSS_TYPE_SEQ_MEAN_TOKEN_MEAN  # TRL loss_type="grpo"
    return spec


def _ts(stamp: str) -> float:
    from google.protobuf import timestamp_pb2

    t = timestamp_pb2.Timestamp()
    t.FromJsonString(stamp)
    return t.ToNanoseconds() / 1e9


def run_fleet(args, work: Path, model: Path, between=lambda rep: None) -> list[dict]:
    """``args.repeats`` GRPO jobs across the services; ``between(rep)`` runs after each (the TRL
    peer, so that the two alternate under the same load)."""
    from llamafleet import cluster
    from llamafleet.training.v1 import training_pb2 as pb
    from llamafleet.training.v1 import training_service_pb2 as api

    data = work / "prompts.jsonl"
    rows = [{"instruction": f"Is {n} a good number?", "output": "yes"} for n in NUMBERS]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = work / f"cluster-{os.getpid()}"
    state = cluster.up(
        run, base_model=model, roots=[str(work)], rollout_workers=1, reward_workers=1,
        settings={"reward": {"worker_threads": "1"}}, timeout=300,
    )  # fmt: skip
    del state
    out = []
    try:
        client = cluster.connect(run, timeout=60)
        for rep in range(args.repeats):
            job = f"bench-grpo-{os.getpid()}-{rep}"
            client.training.CreateTrainingJob(
                api.CreateTrainingJobRequest(spec=grpo_spec(job, model, data, args))
            )
            job_dir = run / "jobs" / job
            peak, started = 0.0, time.time()
            terminal = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)
            while True:
                j = client.training.GetTrainingJob(api.GetTrainingJobRequest(job_id=job)).job
                if j.state in terminal:
                    break
                try:  # VmHWM only grows: the last read before exit is the peak (within 0.2 s)
                    pid = json.loads((job_dir / "runner.pid").read_text())["pid"]
                    peak = max(peak, vm_hwm_mib(pid))
                except (OSError, ValueError, KeyError):
                    pass
                if time.time() - started > 1800:
                    raise RuntimeError(f"GRPO job {job} did not finish in 30 minutes")
                time.sleep(0.2)
            if j.state != pb.JOB_STATE_SUCCEEDED:
                raise RuntimeError(f"GRPO job {job}: {pb.JobState.Name(j.state)} {j.message}")
            metrics = [json.loads(x) for x in (job_dir / "output" / "metrics.jsonl").open()]
            saved = {}
            first = None
            for line in (job_dir / "events.jsonl").read_text().splitlines():
                event = json.loads(line)
                if "adapterPublished" in event and first is None:
                    first = _ts(event["adapterPublished"]["createTime"])  # v1: step 0 starts
                if "checkpointSaved" in event:
                    c = event["checkpointSaved"]
                    saved[int(c.get("step", 0))] = _ts(c["createTime"])
            steps = []
            for k, m in enumerate(metrics):
                begin = saved.get(k, first)
                wall = saved[k + 1] - begin
                steps.append({
                    "wall": wall, "prompts": args.prompts, "tokens": m["grpo/trained_tokens"],
                    "wait_share": m["time/wait_share"], "reward": m["reward/mean"],
                })  # fmt: skip
            out.append({"steps": steps, "peak_mib": peak})
            print(f"  fleet rep {rep}: step walls {[round(s['wall'], 2) for s in steps]}, "
                  f"trainer peak {peak:.0f} MiB", flush=True)  # fmt: skip
            between(rep)
    finally:
        cluster.down(run)
    return out


# --- TRL GRPOTrainer in process ----------------------------------------------------------------


def run_trl(args, work: Path, model: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(model)
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"Is {n} a good number?"}]} for n in NUMBERS]
    )

    def yes_reward(completions, **kwargs):
        import re

        pattern = re.compile(YES)
        return [float(bool(pattern.match(c[0]["content"]))) for c in completions]

    class Clock(TrainerCallback):
        def __init__(self):
            self.walls, self.t = [], None

        def on_step_begin(self, a, s, c, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, s, c, **kw):
            self.walls.append(time.perf_counter() - self.t)

    config = GRPOConfig(
        output_dir=str(work / "trl-out"), use_cpu=True, bf16=False, fp16=False,
        per_device_train_batch_size=args.prompts * args.samples, gradient_accumulation_steps=1,
        num_generations=args.samples, max_completion_length=args.max_tokens, temperature=1.0,
        beta=0.0, loss_type="grpo", num_iterations=1, learning_rate=1e-3, max_steps=args.steps,
        logging_steps=1, report_to=[], save_strategy="no", seed=0, lr_scheduler_type="linear",
        dataloader_num_workers=0,
    )  # fmt: skip
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    trainer = GRPOTrainer(
        model=policy, reward_funcs=yes_reward, args=config, train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
    )  # fmt: skip
    clock = Clock()
    trainer.add_callback(clock)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    steps = []
    for wall, log in zip(clock.walls, logs, strict=False):
        tokens = log["completions/mean_length"] * args.prompts * args.samples
        steps.append({"wall": wall, "prompts": args.prompts, "tokens": tokens,
                      "reward": log.get("reward", float("nan"))})  # fmt: skip
    return {"steps": steps, "peak_mib": vm_hwm_mib()}


# --- report ------------------------------------------------------------------------------------


def summary(runs: list[dict]) -> dict:
    steps = [s for run in runs for s in run["steps"][1:]]  # step 0: warm-up
    return {
        "step_wall_s": median([s["wall"] for s in steps]),
        "prompts_per_s": median([s["prompts"] / s["wall"] for s in steps]),
        "trained_tokens_per_s": median([s["tokens"] / s["wall"] for s in steps]),
        "peak_trainer_mib": median([run["peak_mib"] for run in runs]),
        "steps_measured": len(steps),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="small")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--max-staleness", type=int, default=1,
        help="llamafleet's ppo.max_staleness (TRL has no such setting: it stays on-policy)",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="/tmp/bench-grpo")
    ap.add_argument("--json", default="")
    ap.add_argument("--peer", default="", help=argparse.SUPPRESS)  # internal: the TRL subprocess
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(work, args.size)
    if args.peer == "trl":
        print("PEER " + json.dumps(run_trl(args, work, model)))
        return 0
    print(f"== GRPO: {args.size} model, {args.steps} steps x {args.prompts} prompts x "
          f"{args.samples} samples, max_tokens {args.max_tokens}, {args.repeats} repeat(s), "
          f"fleet max_staleness {args.max_staleness}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
    trl = []

    def run_trl_peer(rep: int) -> None:
        cmd = [sys.executable, __file__, "--peer", "trl", *(argv or sys.argv[1:])]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = [x for x in done.stdout.splitlines() if x.startswith("PEER ")]
        if done.returncode or not line:
            print(done.stdout[-3000:], done.stderr[-3000:])
            raise SystemExit("the TRL peer failed")
        trl.append(json.loads(line[0][5:]))
        walls = [round(s["wall"], 2) for s in trl[-1]["steps"]]
        print(
            f"  trl rep {rep}: step walls {walls}, peak {trl[-1]['peak_mib']:.0f} MiB", flush=True
        )

    fleet = run_fleet(args, work, model, between=run_trl_peer)
    res = {"fleet": summary(fleet), "trl": summary(trl), "raw": {"fleet": fleet, "trl": trl}}
    f, t = res["fleet"], res["trl"]
    print(f"\n{'':22s}{'llamafleet (fleet)':>20s}{'TRL GRPOTrainer':>18s}{'ratio':>8s}")
    for key in ("step_wall_s", "prompts_per_s", "trained_tokens_per_s", "peak_trainer_mib"):
        print(f"{key:22s}{f[key]:20.2f}{t[key]:18.2f}{f[key] / t[key]:8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
