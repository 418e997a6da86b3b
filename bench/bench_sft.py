"""SFT LoRA throughput and memory: llamafleet vs LLaMA-Factory vs TRL's SFTTrainer, same run.

    python bench/bench_sft.py --work /tmp/bench-sft --peer-python /tmp/lf-venv/bin/python --repeats 3

Same built model (tiny_model size "medium", ~31M parameters), same conversations (synthetic
multi-turn chats, written once as OpenAI-style ``messages`` JSON), same method (LoRA rank 8,
alpha 16, every linear layer but the head), cutoff 1024, packing without cross-example attention
where the framework offers it, 2 packed rows per step, one epoch, float32 on the CPU.

Measured per framework, each in its own process: the training loop's wall time as the framework
reports it (``train_runtime`` for the HF-Trainer-based peers, the recipe's loop for llamafleet),
trained tokens/s = assistant tokens of the dataset / that time (every framework trains the same
tokens once), and the process's peak RSS (``wait4`` ru_maxrss). llamafleet's child gets the
allocator environment the training service gives a job's runner (``services.training.jobs.allocator``:
jemalloc where installed; ``LLAMAFLEET_RUNNER_ALLOCATOR=glibc`` for glibc's malloc); the peers
run as their users run them, on glibc's malloc. The peers run from
``--peer-python`` (a separate venv with ``llamafactory`` and ``trl``). ``--repeats N`` alternates
the frameworks N times (so load on a shared machine falls on all of them alike) and reports
medians. Prints a JSON summary (per-run records with library versions, and the medians).
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
CUTOFF = 1024
ROWS_PER_STEP = 2
LORA = {"rank": 8, "alpha": 16}
LR = 1e-4


def conversations(count: int, seed: int = 0) -> list[dict]:
    """Multi-turn chats of corpus sentences (1-3 turns, replies 1-6 sentences)."""
    sys.path.insert(0, str(REPO))
    from services.training.tiny.corpus import synthetic_corpus

    texts = list(synthetic_corpus(count * 12, seed=seed))
    rng = random.Random(seed)
    chats = []
    for _ in range(count):
        messages = []
        for _ in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": rng.choice(texts)})
            reply = " ".join(rng.choice(texts) for _ in range(rng.randint(1, 6)))
            messages.append({"role": "assistant", "content": reply})
        chats.append({"messages": messages})
    return chats


def prepare(work: Path, count: int) -> dict:
    """Build the model and write the dataset (JSON + LLaMA-Factory's dataset_info.json)."""
    sys.path.insert(0, str(REPO))
    from services.training.tiny.model import build_tiny_model

    model = work / "medium"
    if not (model / "config.json").exists():
        build_tiny_model(model, "medium", seed=0, force=True)
    chats = conversations(count)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "chats.json").write_text(json.dumps(chats))
    info = {
        "bench": {
            "file_name": "chats.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
            },
        }
    }
    (data / "dataset_info.json").write_text(json.dumps(info))
    return {"model": str(model), "data": str(data)}


def run_llamafleet(work: Path) -> dict:
    """The sft recipe on rows rendered and packed the way the data service does it."""
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests" / "training"))
    from synthetic import make_settings, pack, render
    from transformers import AutoTokenizer

    from services.training.loop.batches import InMemorySource
    from services.training.loop.tokens import TokenLoss
    from services.training.loop.trainer import Trainer
    from services.training.spec.settings import LoraSettings

    model = work / "medium"
    tokenizer = AutoTokenizer.from_pretrained(model)
    chats = json.loads((work / "data" / "chats.json").read_text())
    rows = [render(tokenizer, c["messages"], i) for i, c in enumerate(chats)]
    packed = pack(rows, CUTOFF)
    settings = make_settings(
        model,
        method="lora",
        lora=LoraSettings(rank=LORA["rank"], alpha=LORA["alpha"]),
        learning_rate=LR,
        lr_scheduler="linear",
        num_epochs=1.0,
        batch_rows=ROWS_PER_STEP,
        logging_steps=1000,
    )
    job = work / "runs" / f"llamafleet-{os.getpid()}"
    trainer = Trainer(settings, InMemorySource(packed), job, loss=TokenLoss(train_all_tokens=False))
    trainer.setup()
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    trained = sum(sum(1 for t in r.labels if t != -100) for r in rows)
    return {
        "train_runtime": seconds,
        "steps": trainer.step,
        "rows": len(packed),
        "trained": trained,
    }


def run_trl(work: Path) -> dict:
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model_dir = work / "medium"
    dataset = load_dataset("json", data_files=str(work / "data" / "chats.json"), split="train")
    config = SFTConfig(
        output_dir=str(work / "runs" / "trl"),
        max_length=CUTOFF,
        packing=True,
        padding_free=True,
        assistant_only_loss=True,
        per_device_train_batch_size=ROWS_PER_STEP,
        num_train_epochs=1,
        learning_rate=LR,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataset_num_proc=1,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa"),
        args=config,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=LoraConfig(
            r=LORA["rank"], lora_alpha=LORA["alpha"], target_modules="all-linear"
        ),
    )
    out = trainer.train()
    return {"train_runtime": out.metrics["train_runtime"], "steps": out.global_step}


def run_llamafactory(work: Path) -> dict:
    from llamafactory.train.tuner import run_exp

    args = {
        "model_name_or_path": str(work / "medium"),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": LORA["rank"],
        "lora_alpha": LORA["alpha"],
        "lora_target": "all",
        "dataset": "bench",
        "dataset_dir": str(work / "data"),
        "template": "chatml",
        "cutoff_len": CUTOFF,
        "neat_packing": True,
        "per_device_train_batch_size": ROWS_PER_STEP,
        "num_train_epochs": 1.0,
        "learning_rate": LR,
        "logging_steps": 1000,
        "save_strategy": "no",
        "report_to": "none",
        "output_dir": str(work / "runs" / "llamafactory"),
        "overwrite_output_dir": True,
        "use_cpu": True,
        "preprocessing_num_workers": 1,
    }
    result_file = work / "runs" / "llamafactory" / "train_results.json"
    run_exp(args)
    metrics = json.loads(result_file.read_text())
    return {"train_runtime": metrics["train_runtime"]}


def versions() -> dict:
    """Versions of the libraries that set the speed, as imported by this child."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "peft", "trl", "llamafactory"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


RUNNERS = {"llamafleet": run_llamafleet, "trl": run_trl, "llamafactory": run_llamafactory}


def measure(python: str, name: str, work: Path) -> dict:
    """Run one framework in a child process; its result plus peak RSS and wall time."""
    result_path = work / "runs" / f"{name}-result.json"
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if name == "llamafleet":  # the allocator the training service gives a job's runner
        sys.path.insert(0, str(REPO))
        from services.training.jobs.allocator import allocator_env

        env.update(allocator_env(env))
    if name == "llamafactory":
        # LLaMA-Factory imports torchaudio at start-up (multimodal plugins) and no torchaudio
        # wheel exists for torch 2.13.0; text-only SFT never calls it, so an empty stub stands in.
        stub = work / "stubs" / "torchaudio"
        stub.mkdir(parents=True, exist_ok=True)
        (stub / "__init__.py").write_text('"""Empty stand-in: see bench_sft.py."""\n')
        env["PYTHONPATH"] = str(work / "stubs")
    started = time.perf_counter()
    log = open(work / "runs" / f"{name}.log", "w")
    child = subprocess.Popen(
        [python, __file__, "--work", str(work), "--child", name, "--result", str(result_path)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    _, status, usage = os.wait4(child.pid, 0)
    log.close()
    record = {
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "allocator": "jemalloc" if "jemalloc" in env.get("LD_PRELOAD", "") else "glibc",
    }
    if os.waitstatus_to_exitcode(status) != 0 or not result_path.exists():
        tail = (work / "runs" / f"{name}.log").read_text()[-1500:]
        return {**record, "error": tail}
    return {**record, **json.loads(result_path.read_text())}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-sft"))
    parser.add_argument("--examples", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--peer-python", default="/tmp/lf-venv/bin/python")
    parser.add_argument("--only", default="llamafleet,trl,llamafactory")
    parser.add_argument("--child", choices=sorted(RUNNERS))
    parser.add_argument("--result", type=Path)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
        result = RUNNERS[args.child](args.work)
        args.result.write_text(json.dumps({**result, "versions": versions()}))
        return 0

    (args.work / "runs").mkdir(parents=True, exist_ok=True)
    paths = prepare(args.work, args.examples)
    sys.path.insert(0, str(REPO / "tests" / "training"))
    from synthetic import render
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(paths["model"])
    chats = json.loads((args.work / "data" / "chats.json").read_text())
    rows = [render(tokenizer, c["messages"], i) for i, c in enumerate(chats)]
    trained = sum(sum(1 for t in r.labels if t != -100) for r in rows)
    tokens = sum(len(r.input_ids) for r in rows)
    summary: dict = {
        "examples": len(chats),
        "tokens": tokens,
        "trained_tokens": trained,
        "runs": {},
    }
    for _ in range(args.repeats):
        for name in args.only.split(","):
            python = sys.executable if name == "llamafleet" else args.peer_python
            record = measure(python, name, args.work)
            if "train_runtime" in record:
                record["trained_tokens_per_s"] = trained / record["train_runtime"]
            summary["runs"].setdefault(name, []).append(record)
            print(name, json.dumps(record)[:400], flush=True)
    medians = {}
    for name, records in summary["runs"].items():
        ok = [r for r in records if "trained_tokens_per_s" in r]
        if ok:
            medians[name] = {
                "trained_tokens_per_s": statistics.median(r["trained_tokens_per_s"] for r in ok),
                "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in ok),
            }
    summary["medians"] = medians
    print(json.dumps(summary["medians"], indent=1))
    (args.work / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
