"""The demo pipeline, driven only through the services (called by scripts/demo.sh).

    python scripts/demo.py pretrain RUN_DIR   # full pre-training job on a built-in text corpus
    python scripts/demo.py sft RUN_DIR        # held-out accuracy, LoRA SFT job, accuracy again

The task: "Increment the digits of 3819" -> "4920" (each digit plus one, 9 wraps to 0), which a
freshly built model cannot do. A LoRA on a random-initialised model learns little, so the base
first gets a short full pre-training with the `pt` recipe, as a real base model would have had;
scripts/demo.sh then restarts the cluster with that model as the base the rollout service
serves, and accuracy is measured by generating through the rollout service (greedy), before
with the base and after with the SFT job's adapter.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from llamafleet.chat import ChatBackend
from llamafleet.client import Client
from llamafleet.cluster import ClusterState
from llamafleet.data.v1 import data_pb2
from llamafleet.rollout.v1 import rollout_pb2
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api

from services.training.corpus import synthetic_corpus

SUCCESSOR = str.maketrans("0123456789", "1234567890")
PRETRAIN_STEPS = 150
SFT_STEPS = 250


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


def pretrain(run_dir: Path, client: Client, base: str) -> None:
    texts = [{"text": t} for t in synthetic_corpus(PRETRAIN_STEPS * 8 * 3)]
    data = write_jsonl(run_dir / "demo" / "pretrain.jsonl", texts)
    spec = pb.TrainingJobSpec(
        job_id="demo-pretrain",
        base_model=base,
        stage=pb.STAGE_PT,
        dataset=inline_dataset(data, data_pb2.DATASET_FORMAT_TEXT, cutoff=256),
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
    run_job(client, spec)
    model = run_dir / "jobs" / spec.job_id / "model"
    print(f"pre-trained in {time.perf_counter() - started:.0f}s: {model}")
    (run_dir / "demo" / "pretrained_model").write_text(str(model))


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


def main() -> None:
    phase, run_dir = sys.argv[1], Path(sys.argv[2]).resolve()
    state = ClusterState.load(run_dir)
    with Client({n: s.address for n, s in state.services.items()}, timeout=120) as client:
        {"pretrain": pretrain, "sft": sft}[phase](run_dir, client, state.base_model)


if __name__ == "__main__":
    main()
