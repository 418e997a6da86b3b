"""DPO (and reward-model) throughput and memory: llamafleet vs TRL's DPOTrainer vs LLaMA-Factory.

    python bench/bench_preference.py --work /tmp/bench-pref --repeats 3 \\
        --peer-python /tmp/lf-venv-data/bin/python

Same built model (``tiny_model`` size ``small``, ~10M parameters), same preference pairs
(a prompt sentence from the built-in corpus, chosen and rejected replies of 2-5 sentences,
written once as a ``preference_alpaca`` JSON file that every framework reads), same method (LoRA
rank 8, alpha 16, every linear layer but the head; the DPO reference is the base with the
adapter disabled in all three), sigmoid loss with beta 0.1, 4 pairs per step, one epoch, lr 1e-4,
float32 on the CPU, one torch thread (``BENCH_THREADS``).

Each run is its own process; measured: the training loop's wall time (``train_runtime`` for the
HF-Trainer-based peers, the recipe's loop for llamafleet), pairs/s = pairs / that time, and the
process's peak RSS (``wait4`` ru_maxrss). ``sft`` runs are the same model and method trained on
the chosen conversations alone, 4 per step: the memory a DPO step adds over an SFT step. Runs
alternate between frameworks; the summary gives medians over ``--repeats``. TRL runs from this
venv (trl 1.16); LLaMA-Factory from ``--peer-python`` (its own venv). Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CUTOFF = 512
PAIRS_PER_STEP = 4
LORA = {"rank": 8, "alpha": 16}
LR = 1e-4
BETA = 0.1
SIZE = "small"


def preference_records(count: int, seed: int = 0) -> list[dict]:
    """Prompt sentence -> chosen / rejected replies of corpus sentences."""
    sys.path.insert(0, str(REPO))
    from services.training.tiny.corpus import synthetic_corpus

    texts = list(synthetic_corpus(count * 12, seed=seed))
    rng = random.Random(seed)

    def reply() -> str:
        return " ".join(rng.choice(texts) for _ in range(rng.randint(2, 5)))

    return [
        {"instruction": rng.choice(texts), "chosen": reply(), "rejected": reply()}
        for _ in range(count)
    ]


def prepare(work: Path, count: int) -> None:
    """Build the model and write the pairs (+ LLaMA-Factory's dataset_info.json)."""
    sys.path.insert(0, str(REPO))
    from services.training.tiny.model import build_tiny_model

    if not (work / SIZE / "config.json").exists():
        build_tiny_model(work / SIZE, SIZE, seed=0, force=True)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    records = preference_records(count)
    (data / "pairs.json").write_text(json.dumps(records))
    chosen = [{"instruction": r["instruction"], "output": r["chosen"]} for r in records]
    (data / "chosen.json").write_text(json.dumps(chosen))
    info = {
        "bench_pairs": {
            "file_name": "pairs.json",
            "ranking": True,
            "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"},
        },
        "bench_chosen": {
            "file_name": "chosen.json",
            "columns": {"prompt": "instruction", "response": "output"},
        },
    }
    (data / "dataset_info.json").write_text(json.dumps(info))


# --- the frameworks (each runs in a child process) -------------------------------------------


def run_llamafleet(work: Path, stage: str) -> dict:
    """The rm / dpo / sft recipe on rows rendered the way the data service renders them."""
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests" / "training"))
    from llamafleet.data.v1 import data_pb2
    from synthetic import make_settings, render
    from transformers import AutoTokenizer

    from services.training.loop.batches import InMemoryPairSource, InMemorySource
    from services.training.loop.tokens import TokenLoss
    from services.training.loop.trainer import Trainer
    from services.training.recipes import dpo, rm
    from services.training.spec.settings import LoraSettings, PreferenceSettings

    model = work / SIZE
    tokenizer = AutoTokenizer.from_pretrained(model)
    records = json.loads((work / "data" / "pairs.json").read_text())

    def row(record: dict, side: str, i: int):
        messages = [
            {"role": "user", "content": record["instruction"]},
            {"role": "assistant", "content": record[side]},
        ]
        return render(tokenizer, messages, i)

    settings = make_settings(
        model,
        recipe=stage,
        method="lora",
        lora=LoraSettings(rank=LORA["rank"], alpha=LORA["alpha"]),
        learning_rate=LR,
        lr_scheduler="linear",
        num_epochs=1.0,
        batch_rows=PAIRS_PER_STEP,
        logging_steps=1000,
        preference=PreferenceSettings(beta=BETA, loss_type="sigmoid"),
    )
    job = work / "runs" / f"llamafleet-{stage}-{os.getpid()}"
    if stage == "sft":
        rows = [row(r, "chosen", i) for i, r in enumerate(records)]
        trainer = Trainer(
            settings, InMemorySource(rows), job, loss=TokenLoss(train_all_tokens=False)
        )
    else:
        pairs = [
            data_pb2.PreferencePair(chosen=row(r, "chosen", i), rejected=row(r, "rejected", i))
            for i, r in enumerate(records)
        ]
        build_trainer = {"dpo": dpo.build_trainer, "rm": rm.build_trainer}[stage]
        trainer = build_trainer(settings, InMemoryPairSource(pairs), job)
    trainer.setup()
    started = time.perf_counter()
    trainer.train()
    return {"train_runtime": time.perf_counter() - started, "steps": trainer.step}


def run_trl(work: Path, stage: str) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    model_dir = work / SIZE
    records = json.loads((work / "data" / "pairs.json").read_text())
    common = {
        "output_dir": str(work / "runs" / f"trl-{stage}"),
        "max_length": CUTOFF,
        "per_device_train_batch_size": PAIRS_PER_STEP,
        "num_train_epochs": 1,
        "learning_rate": LR,
        "lr_scheduler_type": "linear",
        "logging_steps": 1000,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "dataset_num_proc": 1,
    }
    user = [[{"role": "user", "content": r["instruction"]}] for r in records]

    def answers(side):
        return [[{"role": "assistant", "content": r[side]}] for r in records]

    if stage == "dpo":
        data = {"prompt": user, "chosen": answers("chosen"), "rejected": answers("rejected")}
        config = DPOConfig(beta=BETA, loss_type=["sigmoid"], **common)
        trainer_class = DPOTrainer
    else:
        data = {"prompt": user, "completion": answers("chosen")}
        config = SFTConfig(**common)
        trainer_class = SFTTrainer
    trainer = trainer_class(
        model=AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa"),
        args=config,
        train_dataset=Dataset.from_dict(data),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=LoraConfig(
            r=LORA["rank"], lora_alpha=LORA["alpha"], target_modules="all-linear"
        ),
    )
    out = trainer.train()
    return {"train_runtime": out.metrics["train_runtime"], "steps": out.global_step}


def run_llamafactory(work: Path, stage: str) -> dict:
    from llamafactory.train.tuner import run_exp

    out = work / "runs" / f"llamafactory-{stage}"
    args = {
        "model_name_or_path": str(work / SIZE),
        "stage": stage,
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": LORA["rank"],
        "lora_alpha": LORA["alpha"],
        "lora_target": "all",
        "dataset": "bench_chosen" if stage == "sft" else "bench_pairs",
        "dataset_dir": str(work / "data"),
        "template": "chatml",
        "cutoff_len": CUTOFF,
        "per_device_train_batch_size": PAIRS_PER_STEP,
        "num_train_epochs": 1.0,
        "learning_rate": LR,
        "lr_scheduler_type": "linear",
        "logging_steps": 1000,
        "save_strategy": "no",
        "report_to": "none",
        "output_dir": str(out),
        "overwrite_output_dir": True,
        "use_cpu": True,
        "preprocessing_num_workers": 1,
        "overwrite_cache": True,
    }
    if stage == "dpo":
        args.update(pref_beta=BETA, pref_loss="sigmoid")
    run_exp(args)
    metrics = json.loads((out / "train_results.json").read_text())
    return {"train_runtime": metrics["train_runtime"]}


RUNNERS = {"llamafleet": run_llamafleet, "trl": run_trl, "llamafactory": run_llamafactory}
STAGES = {"llamafleet": ("dpo", "rm", "sft"), "trl": ("dpo", "sft"), "llamafactory": ("dpo", "rm", "sft")}  # fmt: skip


def measure(python: str, name: str, stage: str, work: Path) -> dict:
    """One framework and stage in a child process: its result, peak RSS and wall time."""
    result_path = work / "runs" / f"{name}-{stage}-result.json"
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if name == "llamafactory":
        # As bench_sft.py: LLaMA-Factory imports torchaudio at start-up and the peer venv's
        # torchaudio does not load against its torch; text-only training never calls it.
        stub = work / "stubs" / "torchaudio"
        stub.mkdir(parents=True, exist_ok=True)
        (stub / "__init__.py").write_text('"""Empty stand-in: see bench_preference.py."""\n')
        env["PYTHONPATH"] = str(work / "stubs")
    started = time.perf_counter()
    log_path = work / "runs" / f"{name}-{stage}.log"
    with open(log_path, "w") as log:
        argv = [python, __file__, "--work", str(work), "--child", f"{name}:{stage}"]
        child = subprocess.Popen(
            [*argv, "--result", str(result_path)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(child.pid, 0)
    record = {
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }
    if os.waitstatus_to_exitcode(status) != 0 or not result_path.exists():
        return {**record, "error": log_path.read_text()[-1500:]}
    return {**record, **json.loads(result_path.read_text())}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-pref"))
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peer-python", default="/tmp/lf-venv-data/bin/python")
    parser.add_argument("--only", default="llamafleet,trl,llamafactory")
    parser.add_argument("--stages", default="dpo,rm,sft")
    parser.add_argument("--child")
    parser.add_argument("--result", type=Path)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
        name, stage = args.child.split(":")
        args.result.write_text(json.dumps(RUNNERS[name](args.work, stage)))
        return 0

    (args.work / "runs").mkdir(parents=True, exist_ok=True)
    prepare(args.work, args.pairs)
    summary: dict = {"pairs": args.pairs, "model": SIZE, "runs": {}}
    plan = [
        (name, stage)
        for stage in args.stages.split(",")
        for name in args.only.split(",")
        if stage in STAGES[name]
    ]
    for _ in range(args.repeats):
        for name, stage in plan:
            python = args.peer_python if name == "llamafactory" else sys.executable
            record = measure(python, name, stage, args.work)
            if "train_runtime" in record:
                record["pairs_per_s"] = args.pairs / record["train_runtime"]
            summary["runs"].setdefault(f"{name}:{stage}", []).append(record)
            print(f"{name}:{stage}", json.dumps(record)[:300], flush=True)
    medians = {}
    for key, records in summary["runs"].items():
        ok = [r for r in records if "pairs_per_s" in r]
        if ok:
            medians[key] = {
                "runs": len(ok),
                "pairs_per_s": round(statistics.median(r["pairs_per_s"] for r in ok), 2),
                "peak_rss_mib": round(statistics.median(r["peak_rss_mib"] for r in ok), 1),
            }
    summary["medians"] = medians
    print(json.dumps(medians, indent=1))
    (args.work / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
