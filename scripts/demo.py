"""The demo pipeline (called by scripts/demo.sh): the base is built first, then everything runs
through the services of one cluster, LoRA only, with no restart.

    python scripts/demo.py base RUN_DIR       # the tiny model's short pre-training (no cluster)
    python scripts/demo.py sft RUN_DIR        # held-out accuracy, LoRA SFT job, accuracy again
    python scripts/demo.py rm RUN_DIR         # LoRA reward model from the SFT adapter
    python scripts/demo.py dpo RUN_DIR        # LoRA DPO from the SFT adapter, fetched, evaluated
    python scripts/demo.py ppo RUN_DIR        # PPO from the SFT adapter, rewarded by the RM
    python scripts/demo.py sft-arith RUN_DIR  # full SFT on half of the sums n + 1 (the GRPO base)
    python scripts/demo.py grpo RUN_DIR       # GRPO on the other half, answers checked by a rule
                                              # (after `llamafleet add-base` of that model)

The task: "Increment the digits of 3819" -> "4920" (each digit plus one, 9 wraps to 0), which a
freshly built model cannot do. A LoRA on a random-initialised model learns little, so the built
model first gets a short full pre-training with the ``pt`` recipe (``base``, in this process, as a
real base model would have had it before anyone serves it); scripts/demo.sh then starts the
cluster once with that base, two rollout workers and one reward worker. Accuracy is measured by
generating through the rollout service (greedy), before with the base and after with the SFT
job's adapter.

The later stages start from the SFT job's adapter (``init_adapter: demo-sft@N``), as
LLaMA-Factory's ``adapter_name_or_path`` chains stages: ``rm`` continues it under a new score head
(pairs of the same task: the correct answer chosen, the digits copied back rejected; held-out
pairs use numbers never trained on) and scores held-out pairs through the reward service; ``dpo``
continues it against base + the SFT adapter as its reference, so its loss starts at log 2, and the
demo fetches the DPO adapter (``FetchAdapter``) to compare log pi(chosen) with log pi(rejected)
against the SFT adapter; ``ppo`` starts its policy as the SFT adapter (KL 0 at step 0, the fleet
serves the SFT weights as version 1) and is rewarded by the RM job's adapter through the reward
workers.

``sft-arith`` trains all weights of the base on half of the sums and exports the result
(``ExportModel``) as the model folder ``sums-model``; scripts/demo.sh then serves it as a second
base of the same cluster (``llamafleet add-base``: its own rollout and reward workers and queues,
nothing restarted), and ``grpo`` trains a LoRA over it, its tasks routed to those workers by the
job's base_model, accuracy measured through that base's rollout service.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

from llamafleet.chat import ChatBackend
from llamafleet.client import Client
from llamafleet.cluster import ClusterError, ClusterState
from llamafleet.common.v1 import common_pb2
from llamafleet.data.v1 import data_pb2, data_service_pb2
from llamafleet.reward.v1 import reward_pb2, reward_service_pb2
from llamafleet.rollout.v1 import rollout_pb2
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api

from services.training.tiny.corpus import synthetic_corpus

SUCCESSOR = str.maketrans("0123456789", "1234567890")
# LLAMAFLEET_DEMO_QUICK=1: a few steps per job, to check the pipeline's plumbing on a busy machine
QUICK = os.environ.get("LLAMAFLEET_DEMO_QUICK") == "1"
PRETRAIN_STEPS = 20 if QUICK else 150
SFT_STEPS = 20 if QUICK else 250
PPO_STEPS, PPO_LR = (3 if QUICK else 12), 1e-3
RM_STEPS = 10 if QUICK else 150
DPO_STEPS = 10 if QUICK else 100


def digit_pairs(seed: int, count: int, exclude: set[str]) -> list[tuple[str, str]]:
    rng, pairs = random.Random(seed), []
    while len(pairs) < count:
        digits = "".join(rng.choice("0123456789") for _ in range(4))
        if digits not in exclude:
            exclude.add(digits)
            pairs.append((f"Increment the digits of {digits}", digits.translate(SUCCESSOR)))
    return pairs


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def inline_dataset(path: Path, fmt: int, cutoff: int) -> pb.DatasetRef:
    source = data_pb2.DatasetSource(
        files=data_pb2.FileSource(paths=[str(path)]), format=data_pb2.FormatOptions(format=fmt)
    )
    tokenization = data_pb2.TokenizationOptions(cutoff_len=cutoff)
    return pb.DatasetRef(
        spec=data_pb2.DatasetSpec(sources=[source], tokenization=tokenization, packing=True)
    )


def run_job(client: Client, spec: pb.TrainingJobSpec) -> pb.TrainingJob:
    """Create the job (idempotent on its id) and follow it to the end, printing progress."""
    client.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
    request = api.WatchTrainingJobRequest(job_id=spec.job_id)
    for reply in client.training.WatchTrainingJob(request, timeout=1800):
        event = reply.event
        if event.HasField("metrics") and event.metrics.HasField("loss"):
            m = event.metrics
            print(
                f"  {spec.job_id} step {m.step:4d}  loss {m.loss:.3f}  "
                f"{m.tokens_per_second:7.0f} tok/s",
                flush=True,
            )
    job = client.training.GetTrainingJob(api.GetTrainingJobRequest(job_id=spec.job_id)).job
    if job.state != pb.JOB_STATE_SUCCEEDED:
        sys.exit(f"job {spec.job_id} ended {pb.JobState.Name(job.state)}: {job.failure_message}")
    return job


def pretrain_base(run_dir: Path) -> None:
    """The tiny model's short full pre-training with the ``pt`` recipe, in this process (the
    base exists before the cluster serves it): plain-text rows, every token trained."""
    import torch
    from transformers import AutoTokenizer

    from services.training.loop.batches import InMemorySource
    from services.training.recipes import pt
    from services.training.spec.settings import settings

    torch.set_num_threads(2)
    model = run_dir / "tiny-model"
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows, ids, positions, cuts = [], [], [], [0]
    for text in synthetic_corpus(PRETRAIN_STEPS * 8 * 3):  # packed greedily into 256 tokens
        piece = (tokenizer(text)["input_ids"] + [tokenizer.eos_token_id])[:256]
        if len(ids) + len(piece) > 256:
            rows.append(data_pb2.TokenRow(input_ids=ids, labels=ids, position_ids=positions,
                                          cu_seqlens=cuts))  # fmt: skip
            ids, positions, cuts = [], [], [0]  # (the last partial row is left out)
        ids, positions = ids + piece, positions + list(range(len(piece)))
        cuts.append(len(ids))
    spec = pb.TrainingJobSpec(
        base_model=str(model),
        stage=pb.STAGE_PT,
        finetuning=pb.FinetuningConfig(type=pb.FINETUNING_TYPE_FULL),
        hyperparameters=pb.Hyperparameters(
            learning_rate=2e-3,
            lr_scheduler=pb.LR_SCHEDULER_TYPE_COSINE,
            warmup_steps=10,
            max_steps=PRETRAIN_STEPS,
            per_device_batch_size=8,
            logging_steps=25,
        ),
    )
    started = time.perf_counter()
    job_dir = run_dir / "demo" / "base"
    pt.run(settings(spec), InMemorySource(rows), job_dir)
    print(f"pre-trained in {time.perf_counter() - started:.0f}s: {job_dir / 'model'}")
    (run_dir / "demo" / "pretrained_model").write_text(str(job_dir / "model"))


def accuracy(backend: ChatBackend, model: str, pairs: list[tuple[str, str]]) -> float:
    sampling = rollout_pb2.SamplingParams(temperature=0.0, max_tokens=8)
    correct = 0
    for prompt, answer in pairs:
        text = ""
        for reply in backend.generate(model, [{"role": "user", "content": prompt}], sampling):
            if reply.HasField("tokens"):
                text += reply.tokens.text
        correct += text.strip() == answer
    return correct / len(pairs)


def sft(run_dir: Path, client: Client, base: str) -> None:
    seen: set[str] = set()
    held_out = digit_pairs(1, 50, seen)
    train = digit_pairs(2, 1600, seen)
    data = write_jsonl(
        run_dir / "demo" / "task.jsonl", [{"instruction": p, "output": a} for p, a in train]
    )
    backend = ChatBackend(client, base)
    print(f"task: '{held_out[0][0]}' -> '{held_out[0][1]}'; {len(train)} training pairs")
    before = accuracy(backend, "base", held_out)
    print(f"held-out exact match before SFT (pre-trained base): {before:.0%}")
    spec = pb.TrainingJobSpec(
        job_id="demo-sft",
        base_model=base,
        stage=pb.STAGE_SFT,
        dataset=inline_dataset(data, data_pb2.DATASET_FORMAT_ALPACA, cutoff=256),
        finetuning=pb.FinetuningConfig(
            type=pb.FINETUNING_TYPE_LORA,
            lora=pb.LoraConfig(rank=16, alpha=32.0, target_modules=["all"]),
        ),
        hyperparameters=pb.Hyperparameters(
            learning_rate=2e-3,
            lr_scheduler=pb.LR_SCHEDULER_TYPE_CONSTANT_WITH_WARMUP,
            warmup_steps=10,
            max_steps=SFT_STEPS,
            per_device_batch_size=4,
            logging_steps=25,
        ),
    )
    started = time.perf_counter()
    job = run_job(client, spec)
    version = job.adapter_versions[-1].version
    print(f"SFT (LoRA) in {time.perf_counter() - started:.0f}s; adapter {job.id}@{version}")
    after = accuracy(backend, job.id, held_out)
    print(f"held-out exact match after SFT (adapter through the rollout service): {after:.0%}")
    print(f"demo result: {before:.0%} -> {after:.0%}")
    (run_dir / "demo" / "sft_adapter").write_text(f"{job.id}@{version}")


def sft_adapter(run_dir: Path) -> common_pb2.AdapterRef:
    """The SFT job's adapter the later stages start from (LLaMA-Factory's adapter_name_or_path)."""
    job_id, _, version = (run_dir / "demo" / "sft_adapter").read_text().partition("@")
    return common_pb2.AdapterRef(id=job_id, version=int(version))


# --- preference steps --------------------------------------------------------------------------


def preference_files(run_dir: Path) -> tuple[Path, Path]:
    """Train and held-out preference pairs (preference_alpaca JSONL), written once."""
    train_path, held_path = (
        run_dir / "demo" / "pref-train.jsonl",
        run_dir / "demo" / "pref-held.jsonl",
    )
    seen: set[str] = set()
    for path, pairs in (
        (held_path, digit_pairs(11, 50, seen)),
        (train_path, digit_pairs(12, 600, seen)),
    ):
        rows = []
        for prompt, answer in pairs:  # rejected: the digits copied back
            rows.append({"instruction": prompt, "chosen": answer, "rejected": prompt.split()[-1]})
        write_jsonl(path, rows)
    return train_path, held_path


def preference_dataset(path: Path) -> pb.DatasetRef:
    return inline_dataset(path, data_pb2.DATASET_FORMAT_PREFERENCE_ALPACA, cutoff=128)


def preference_spec(
    job_id: str, base: str, stage: int, steps: int, learning_rate: float, files, start
) -> pb.TrainingJobSpec:
    train, held = files
    spec = pb.TrainingJobSpec(
        job_id=job_id,
        base_model=base,
        stage=stage,
        init_adapter=start,  # continue the SFT adapter (its rank, alpha and targets)
        dataset=preference_dataset(train),
        eval_dataset=preference_dataset(held),
        finetuning=pb.FinetuningConfig(
            type=pb.FINETUNING_TYPE_LORA, lora=pb.LoraConfig(rank=16, alpha=32.0)
        ),
        preference=pb.PreferenceConfig(beta=0.5),
        hyperparameters=pb.Hyperparameters(
            learning_rate=learning_rate,
            lr_scheduler=pb.LR_SCHEDULER_TYPE_LINEAR,
            warmup_steps=10,
            max_steps=steps,
            per_device_batch_size=8,
            logging_steps=25,
            eval_steps=steps,
        ),
    )
    for d in (spec.dataset, spec.eval_dataset):
        d.spec.packing = False  # preference pairs are never packed
    return spec


def held_out_accuracy(client: Client, job_id: str) -> list[tuple[int, float, float, float]]:
    """(step, accuracy, margin, loss) of every held-out evaluation the job reported."""
    request = api.WatchTrainingJobRequest(job_id=job_id)
    out = []
    for reply in client.training.WatchTrainingJob(request, timeout=60):
        extra = reply.event.metrics.extra
        if reply.event.HasField("metrics") and "eval_rewards/accuracy" in extra:
            m = reply.event.metrics
            out.append((m.step, extra["eval_rewards/accuracy"], extra["eval_rewards/margin"],
                        m.eval_loss))  # fmt: skip
    return out


def held_out_pairs(client: Client, path: Path, base: str) -> list[data_pb2.PreferencePair]:
    """The held-out pairs as the data service tokenizes them (the same ids the jobs see)."""
    spec = preference_dataset(path).spec
    spec.packing = False
    spec.tokenization.tokenizer_path = base
    request = data_service_pb2.PrepareDatasetRequest(dataset_id="demo-pref-held", spec=spec)
    client.data.PrepareDataset(request, timeout=600)
    stream = data_service_pb2.StreamBatchesRequest(dataset_id="demo-pref-held", batch_rows=64)
    return [p for r in client.data.StreamBatches(stream, timeout=600) for p in r.batch.pairs]


def split(row: data_pb2.TokenRow) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids): the completion starts at the first trained label."""
    start = next(i for i, y in enumerate(row.labels) if y != -100)
    return list(row.input_ids[:start]), list(row.input_ids[start:])


def as_rollout(completion: list[int], ends: set[int]) -> list[int]:
    """The completion a rollout engine produces for this response: up to and including its last
    end-of-turn token (the engine stops there), without the template text after it."""
    last = max((i for i, t in enumerate(completion) if t in ends), default=len(completion) - 1)
    return completion[: last + 1]


def rm(run_dir: Path, client: Client, base: str) -> None:
    files = preference_files(run_dir)
    spec = preference_spec("demo-rm", base, pb.STAGE_RM, RM_STEPS, 1e-3, files,
                           sft_adapter(run_dir))  # fmt: skip
    started = time.perf_counter()
    job = run_job(client, spec)
    version = job.adapter_versions[-1].version
    (_, before, _, _), *_, (_, after, margin, _) = held_out_accuracy(client, spec.job_id)
    print(
        f"reward model (LoRA from {spec.init_adapter.id}@{spec.init_adapter.version} + a new "
        f"score head) in {time.perf_counter() - started:.0f}s"
    )
    print(f"held-out pairwise accuracy of the job: {before:.0%} (fresh head) -> {after:.0%}")
    pairs = held_out_pairs(client, files[1], base)
    held = data_service_pb2.GetDatasetRequest(dataset_id="demo-pref-held")
    ends = set(client.data.GetDataset(held).dataset.end_token_ids)  # the template's end of turn
    wins = {}
    # as the data service's rows end (template text after the end of turn included), and as
    # rollouts arrive (generation stops at the end-of-turn token and keeps it)
    for form in ("rows", "rollouts"):
        request = reward_service_pb2.ScoreRolloutsRequest(
            scorer="reward_model", reward_adapter=common_pb2.AdapterRef(id=job.id, version=version)
        )
        for i, pair in enumerate(pairs):
            for side, row in (("chosen", pair.chosen), ("rejected", pair.rejected)):
                prompt, completion = split(row)
                if form == "rollouts":
                    completion = as_rollout(completion, ends)
                request.items.append(
                    reward_pb2.ScoreItem(
                        item_id=f"{i}:{side}", prompt_ids=prompt, completion_ids=completion
                    )
                )
        scores = {s.item_id: s.raw_score for s in client.reward.ScoreRollouts(request).scores}
        wins[form] = sum(scores[f"{i}:chosen"] > scores[f"{i}:rejected"] for i in range(len(pairs)))
        print(
            f"reward service ({job.id}@{version}), held-out pairs scored as {form}: chosen above "
            f"rejected on {wins[form]}/{len(pairs)} ({wins[form] / len(pairs):.0%})"
        )
    print(f"mean margin of the job's evaluation: {margin:.2f}")
    print(f"demo result (rm): {before:.0%} -> {wins['rollouts'] / len(pairs):.0%}")
    (run_dir / "demo" / "rm_adapter").write_text(f"{job.id}@{version}")


def policy_preference(model, pairs) -> float:
    """Fraction of pairs where log pi(chosen) > log pi(rejected) (response tokens summed)."""
    import torch

    def logp(row: data_pb2.TokenRow) -> float:
        logits = model(input_ids=torch.tensor([list(row.input_ids)])).logits[0, :-1]
        labels = torch.tensor(list(row.labels)[1:])
        keep = labels != -100
        return float(logits.log_softmax(-1)[keep].gather(1, labels[keep, None]).sum())

    with torch.no_grad():
        return sum(logp(p.chosen) > logp(p.rejected) for p in pairs) / len(pairs)


def dpo(run_dir: Path, client: Client, base: str) -> None:
    import io
    import tarfile

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    files = preference_files(run_dir)
    start = sft_adapter(run_dir)
    spec = preference_spec("demo-dpo", base, pb.STAGE_DPO, DPO_STEPS, 2e-3, files, start)
    started = time.perf_counter()
    job = run_job(client, spec)
    version = job.adapter_versions[-1].version
    (_, before, _, start_loss), *_, (_, after, margin, _) = held_out_accuracy(client, spec.job_id)
    print(f"DPO (LoRA from {start.id}@{start.version}, beta 0.5, reference = base + that adapter, "
          f"frozen beside it) in {time.perf_counter() - started:.0f}s")  # fmt: skip
    print(
        f"held-out loss before any update {start_loss:.4f} (log 2 = 0.6931: policy = reference); "
        f"implicit reward accuracy {before:.0%} -> {after:.0%}, mean margin beta*h {margin:.2f}"
    )
    pairs = held_out_pairs(client, files[1], base)
    prefs = {}
    for name, ref in (("SFT adapter (the reference)", start),
                      ("DPO policy", common_pb2.AdapterRef(id=job.id, version=version))):  # fmt: skip
        request = api.FetchAdapterRequest(adapter=ref)
        blob = b"".join(r.chunk.data for r in client.training.FetchAdapter(request, timeout=600))
        folder = run_dir / "demo" / f"adapter-{ref.id}-v{ref.version}"
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(folder, filter="data")
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder)
        prefs[name] = policy_preference(model.eval(), pairs)
    print(
        "held-out pairs where log pi(chosen) > log pi(rejected), fetched adapters: "
        + ", ".join(f"{name} {value:.0%}" for name, value in prefs.items())
    )
    base_pref, dpo_pref = prefs.values()
    print(f"demo result (dpo): {base_pref:.0%} -> {dpo_pref:.0%}")


# --- PPO across the fleets ----------------------------------------------------------------------


def ppo(run_dir: Path, client: Client, base: str) -> None:
    """PPO from the SFT adapter on digit prompts never trained on, rewarded by the RM job's adapter
    (scorer ``reward_model``): rollouts from two rollout workers, scores from one reward worker,
    all through Redis; the trainer holds one base with the LoRA policy, its value head and the
    reference (base + the SFT adapter, frozen beside the policy's copy of it)."""
    start = sft_adapter(run_dir)
    rm_job, _, rm_version = (run_dir / "demo" / "rm_adapter").read_text().partition("@")
    seen: set[str] = set()  # numbers the SFT and preference data used: none of them here
    for chain in (((1, 50), (2, 1600)), ((11, 50), (12, 600))):
        used: set[str] = set()
        for seed, count in chain:
            digit_pairs(seed, count, used)
        seen |= used
    rows = [{"instruction": p, "output": a} for p, a in digit_pairs(31, 400, seen)]
    data = write_jsonl(run_dir / "demo" / "ppo_prompts.jsonl", rows)
    dataset = inline_dataset(data, data_pb2.DATASET_FORMAT_ALPACA, cutoff=64)
    dataset.spec.packing = False
    dataset.spec.kind = data_pb2.EXAMPLE_KIND_PROMPT  # the prompt, and the output as reference
    spec = pb.TrainingJobSpec(
        job_id="demo-ppo",
        base_model=base,
        stage=pb.STAGE_PPO,
        dataset=dataset,
        init_adapter=start,  # the policy starts as the SFT adapter
        finetuning=pb.FinetuningConfig(type=pb.FINETUNING_TYPE_LORA),
        hyperparameters=pb.Hyperparameters(
            learning_rate=PPO_LR, per_device_batch_size=8, max_steps=PPO_STEPS, logging_steps=1,
            seed=0,
        ),
        ppo=pb.PpoConfig(
            sampling=rollout_pb2.SamplingParams(temperature=1.0, max_tokens=8, n=4, seed=11),
            reward_scorer="reward_model",
            reward_adapter=common_pb2.AdapterRef(id=rm_job, version=int(rm_version)),
            kl_coef=0.05,
        ),
    )  # fmt: skip
    client.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
    started = time.perf_counter()
    rewards, kls = [], []
    request = api.WatchTrainingJobRequest(job_id=spec.job_id)
    for reply in client.training.WatchTrainingJob(request, timeout=1800):
        m = reply.event.metrics
        if reply.event.HasField("metrics") and "reward/mean" in m.extra:
            rewards.append(m.extra["reward/mean"])
            kls.append(m.extra["ppo/kl"])
            print(
                f"  demo-ppo step {m.step:3d}  mean reward {m.extra['reward/mean']:.3f}  "
                f"kl {m.extra['ppo/kl']:.4f}  engine ratio {m.extra['ppo/engine_ratio']:.4f}  "
                f"waited {m.extra['time/wait_rollouts']:.1f}s  trained {m.extra['time/train']:.1f}s",
                flush=True,
            )
    job = client.training.GetTrainingJob(api.GetTrainingJobRequest(job_id=spec.job_id)).job
    if job.state != pb.JOB_STATE_SUCCEEDED:
        sys.exit(f"job {spec.job_id} ended {pb.JobState.Name(job.state)}: {job.failure_message}")
    counts = json.loads((run_dir / "jobs" / spec.job_id / "output" / "ppo_counts.json").read_text())
    print(
        f"PPO from {start.id}@{start.version} rewarded by {rm_job}@{rm_version} in "
        f"{time.perf_counter() - started:.0f}s: {counts['published']} rollout tasks published, "
        f"{counts['consumed']} scored rollouts consumed once each ({counts['redelivered']} "
        f"redelivered and skipped, {counts['stray']} stray); adapter "
        f"demo-ppo@{counts['final_adapter_version']}"
    )
    print(f"KL to base + SFT adapter at the first step: {kls[0]:.6f} (the policy starts there)")
    first, last = sum(rewards[:2]) / 2, sum(rewards[-3:]) / 3
    print(f"demo result (ppo): mean reward-model score {first:.3f} (first steps) -> {last:.3f}")


# --- GRPO on a verifiable task ------------------------------------------------------------------

GRPO_STEPS, GRPO_LR, ARITH_SFT_STEPS = 20, 1e-3, 300


def sums(seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Sums "What is n + 1?" -> "n+1" for two-digit n, split in two: 45 for the SFT, 44 that the
    SFT never shows (GRPO's prompts: it sees only their rewards)."""
    pairs = [(f"What is {n} + 1?", str(n + 1)) for n in range(10, 99)]
    random.Random(seed).shuffle(pairs)
    return pairs[:45], pairs[45:]


def sft_arith(run_dir: Path, client: Client, base: str) -> None:
    """A full SFT of the pre-trained base on the first half of the sums: it then gets part of
    the other half right (the verifiable reward is met only sometimes there)."""
    sft_pairs, _ = sums(0)
    rows = [{"instruction": p, "output": a} for p, a in sft_pairs]
    data = write_jsonl(run_dir / "demo" / "sums.jsonl", rows)
    spec = pb.TrainingJobSpec(
        job_id="demo-sft-arith",
        base_model=base,
        stage=pb.STAGE_SFT,
        dataset=inline_dataset(data, data_pb2.DATASET_FORMAT_ALPACA, cutoff=64),
        finetuning=pb.FinetuningConfig(type=pb.FINETUNING_TYPE_FULL),
        hyperparameters=pb.Hyperparameters(
            learning_rate=2e-3, max_steps=ARITH_SFT_STEPS, per_device_batch_size=8,
            logging_steps=50,
        ),
    )  # fmt: skip
    run_job(client, spec)
    # its own folder name: the cluster names a base (its queues, its model name) after the folder
    export = client.training.ExportModel(
        api.ExportModelRequest(
            job_id=spec.job_id,
            mode=pb.EXPORT_MODE_MERGED,
            output_dir=str(run_dir / "demo" / "sums-model"),
        )
    )
    (run_dir / "demo" / "arith_model").write_text(export.output_dir)
    print(f"sums model: {export.output_dir}")


def grpo(run_dir: Path, client: Client, base: str) -> None:
    """GRPO (group z-score advantages, no critic, no reference: beta 0) on the 44 sums the SFT
    never showed, groups of 8 samples per prompt; the reward is the `exact_match` rule of the
    reward service's `functions` scorer against each prompt's reference answer (the trainer never
    sees the answers). Accuracy: the per-step mean reward (sampled), and greedy exact match on
    those sums before (the base) and after (the GRPO adapter), generated through the rollout
    service."""
    _, pairs = sums(0)
    rows = [{"instruction": p, "output": a} for p, a in pairs]
    data = write_jsonl(run_dir / "demo" / "grpo_prompts.jsonl", rows)
    dataset = inline_dataset(data, data_pb2.DATASET_FORMAT_ALPACA, cutoff=64)
    dataset.spec.packing = False
    dataset.spec.kind = data_pb2.EXAMPLE_KIND_PROMPT  # the prompt, and the output as reference
    backend = ChatBackend(client, base)
    before = accuracy(backend, "base", pairs)
    print(f"greedy exact match on the GRPO sums before GRPO (the SFT model): {before:.0%}")
    correct = common_pb2.RewardFunctionRef(name="exact_match", label="correct")
    spec = pb.TrainingJobSpec(
        job_id="demo-grpo",
        base_model=base,
        stage=pb.STAGE_GRPO,
        dataset=dataset,
        finetuning=pb.FinetuningConfig(
            type=pb.FINETUNING_TYPE_LORA, lora=pb.LoraConfig(rank=8, alpha=16.0)
        ),
        hyperparameters=pb.Hyperparameters(
            learning_rate=GRPO_LR, per_device_batch_size=8, max_steps=GRPO_STEPS, logging_steps=1,
            seed=0, gradient_accumulation_steps=8,
        ),
        ppo=pb.PpoConfig(
            sampling=rollout_pb2.SamplingParams(temperature=1.0, max_tokens=4, n=8, seed=13),
            reward_scorer="functions",
            reward_settings=common_pb2.RewardSettings(functions=[correct]),
            rollout_batch_size=8,
            ppo_epochs=2,
        ),
        grpo=pb.GrpoConfig(
            advantage_estimator=pb.ADVANTAGE_ESTIMATOR_GRPO,
            loss_type=pb.GRPO_LOSS_TYPE_TOKEN_MEAN,
            epsilon=0.2, epsilon_high=0.28,
        ),
    )  # fmt: skip
    client.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
    started = time.perf_counter()
    rewards: list[float] = []
    request = api.WatchTrainingJobRequest(job_id=spec.job_id)
    for reply in client.training.WatchTrainingJob(request, timeout=1800):
        m = reply.event.metrics
        if reply.event.HasField("metrics") and "reward/mean" in m.extra:
            rewards.append(m.extra["reward/mean"])
            print(
                f"  demo-grpo step {m.step:3d}  accuracy (sampled) {m.extra['reward/mean']:.2f}  "
                f"zero-variance groups {m.extra['grpo/zero_variance_fraction']:.2f}  "
                f"clip low/high {m.extra['grpo/clip_ratio/low']:.3f}/"
                f"{m.extra['grpo/clip_ratio/high']:.3f}  "
                f"waiting share {m.extra['time/wait_share']:.2f}",
                flush=True,
            )
    job = client.training.GetTrainingJob(api.GetTrainingJobRequest(job_id=spec.job_id)).job
    if job.state != pb.JOB_STATE_SUCCEEDED:
        sys.exit(f"job {spec.job_id} ended {pb.JobState.Name(job.state)}: {job.failure_message}")
    counts = json.loads(
        (run_dir / "jobs" / spec.job_id / "output" / "grpo_counts.json").read_text()
    )
    after = accuracy(backend, spec.job_id, pairs)
    print(
        f"GRPO in {time.perf_counter() - started:.0f}s: {counts['trained_groups']} groups of 8 "
        f"trained once each ({counts['zero_variance_groups']} with equal rewards), "
        f"{counts['consumed']} scored rollouts consumed; adapter "
        f"demo-grpo@{counts['final_adapter_version']}"
    )
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    print(
        f"demo result (grpo): sampled accuracy {first:.0%} (first 3 steps) -> {last:.0%} (last 3); "
        f"greedy exact match {before:.0%} -> {after:.0%}"
    )


def main() -> None:
    phase, run_dir = sys.argv[1], Path(sys.argv[2]).resolve()
    if phase == "base":
        pretrain_base(run_dir)
        return
    state = ClusterState.load(run_dir)
    phases = {
        "sft": sft, "rm": rm, "dpo": dpo, "ppo": ppo, "sft-arith": sft_arith, "grpo": grpo,
    }  # fmt: skip
    base = state.base_model
    if phase == "grpo":  # over the sums model, served beside the first base (add-base)
        base = (run_dir / "demo" / "arith_model").read_text().strip()
        try:
            state.base(base)
        except ClusterError as exc:
            sys.exit(f"{exc}; run `llamafleet add-base {base}` first")
    with Client(state.addresses_for(base), timeout=120) as client:
        phases[phase](run_dir, client, base)


if __name__ == "__main__":
    main()
