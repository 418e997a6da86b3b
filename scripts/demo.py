"""The demo pipeline, driven only through the services (called by scripts/demo.sh).

    python scripts/demo.py pretrain RUN_DIR   # full pre-training job on a built-in text corpus
    python scripts/demo.py sft RUN_DIR        # held-out accuracy, LoRA SFT job, accuracy again
    python scripts/demo.py rm RUN_DIR         # LoRA reward model, scored by the reward service
    python scripts/demo.py dpo RUN_DIR        # LoRA DPO, its adapter fetched and evaluated
    python scripts/demo.py sft-yes-no RUN_DIR # full SFT: "yes" or "no" at random (the PPO base)
    python scripts/demo.py ppo RUN_DIR        # PPO across 2 rollout workers and 1 reward worker
    python scripts/demo.py sft-arith RUN_DIR  # full SFT on half of the sums n + 1 (the GRPO base)
    python scripts/demo.py grpo RUN_DIR       # GRPO on the other half, answers checked by a rule

The task: "Increment the digits of 3819" -> "4920" (each digit plus one, 9 wraps to 0), which a
freshly built model cannot do. A LoRA on a random-initialised model learns little, so the base
first gets a short full pre-training with the `pt` recipe, as a real base model would have had;
scripts/demo.sh then restarts the cluster with that model as the base the rollout service
serves, and accuracy is measured by generating through the rollout service (greedy), before
with the base and after with the SFT job's adapter.

The preference steps use the same task as pairs: the correct answer is chosen, the digits copied
back rejected; held-out pairs use numbers never trained on. ``rm`` trains a LoRA reward model and scores the held-out pairs through
the reward service, which fetches the adapter from training by id@version. ``dpo`` trains a LoRA
policy with DPO from the pre-trained base; the job reports its implicit reward accuracy on the
held-out pairs before and after, and the demo fetches the adapter (``FetchAdapter``) and compares
log pi(chosen) with log pi(rejected) for the base and the DPO policy.
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
from llamafleet.common.v1 import common_pb2
from llamafleet.data.v1 import data_pb2, data_service_pb2
from llamafleet.reward.v1 import reward_pb2, reward_service_pb2
from llamafleet.rollout.v1 import rollout_pb2
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api

from services.training.tiny.corpus import synthetic_corpus

SUCCESSOR = str.maketrans("0123456789", "1234567890")
PRETRAIN_STEPS = 150
SFT_STEPS = 250
PPO_STEPS, PPO_LR = 12, 1e-3
RM_STEPS = 150
DPO_STEPS = 100


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
    job_id: str, base: str, stage: int, steps: int, learning_rate: float, files
) -> pb.TrainingJobSpec:
    train, held = files
    spec = pb.TrainingJobSpec(
        job_id=job_id,
        base_model=base,
        stage=stage,
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


def held_out_accuracy(client: Client, job_id: str) -> list[tuple[int, float, float]]:
    """(step, accuracy, margin) of every held-out evaluation the job reported."""
    request = api.WatchTrainingJobRequest(job_id=job_id)
    out = []
    for reply in client.training.WatchTrainingJob(request, timeout=60):
        extra = reply.event.metrics.extra
        if reply.event.HasField("metrics") and "eval_rewards/accuracy" in extra:
            step = reply.event.metrics.step
            out.append((step, extra["eval_rewards/accuracy"], extra["eval_rewards/margin"]))
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
    spec = preference_spec("demo-rm", base, pb.STAGE_RM, RM_STEPS, 1e-3, files)
    started = time.perf_counter()
    job = run_job(client, spec)
    version = job.adapter_versions[-1].version
    (_, before, _), *_, (_, after, margin) = held_out_accuracy(client, spec.job_id)
    print(f"reward model (LoRA + score head) in {time.perf_counter() - started:.0f}s")
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
    spec = preference_spec("demo-dpo", base, pb.STAGE_DPO, DPO_STEPS, 2e-3, files)
    started = time.perf_counter()
    job = run_job(client, spec)
    version = job.adapter_versions[-1].version
    (_, before, _), *_, (_, after, margin) = held_out_accuracy(client, spec.job_id)
    print(f"DPO (LoRA, beta 0.5, reference = base with the adapter off) in "
          f"{time.perf_counter() - started:.0f}s")  # fmt: skip
    print(
        f"held-out implicit reward accuracy of the job: {before:.0%} (policy = reference) -> "
        f"{after:.0%}, mean margin beta*h {margin:.2f}"
    )
    request = api.FetchAdapterRequest(adapter=common_pb2.AdapterRef(id=job.id, version=version))
    blob = b"".join(r.chunk.data for r in client.training.FetchAdapter(request, timeout=600))
    folder = run_dir / "demo" / "dpo-adapter"
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(folder, filter="data")
    pairs = held_out_pairs(client, files[1], base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder).eval()
    with model.disable_adapter():
        base_pref = policy_preference(model, pairs)
    dpo_pref = policy_preference(model, pairs)
    print(
        f"held-out pairs where log pi(chosen) > log pi(rejected), fetched adapter "
        f"{job.id}@{version} ({len(blob)} bytes): base {base_pref:.0%} -> DPO policy {dpo_pref:.0%}"
    )
    print(f"demo result (dpo): {base_pref:.0%} -> {dpo_pref:.0%}")


# --- PPO across the fleets ----------------------------------------------------------------------


YES_NO = "Is {} a good number?"


def sft_yes_no(run_dir: Path, client: Client, base: str) -> None:
    """A short full SFT of the pre-trained base on questions answered "yes" or "no" at random:
    the model then says "yes" only part of the time, which PPO will change."""
    rng = random.Random(0)
    rows = [
        {"instruction": YES_NO.format(n), "output": rng.choice(["yes", "no"])} for n in range(200)
    ]
    data = write_jsonl(run_dir / "demo" / "yes_no.jsonl", rows)
    spec = pb.TrainingJobSpec(
        job_id="demo-sft-yes-no",
        base_model=base,
        stage=pb.STAGE_SFT,
        dataset=inline_dataset(data, data_pb2.DATASET_FORMAT_ALPACA, cutoff=64),
        finetuning=pb.FinetuningConfig(type=pb.FINETUNING_TYPE_FULL),
        hyperparameters=pb.Hyperparameters(
            learning_rate=3e-3, max_steps=30, per_device_batch_size=8, logging_steps=10
        ),
    )
    run_job(client, spec)
    model = run_dir / "jobs" / spec.job_id / "model"
    (run_dir / "demo" / "yes_no_model").write_text(str(model))
    print(f"yes/no model: {model}")


def ppo(run_dir: Path, client: Client, base: str) -> None:
    """PPO with a rule reward the SFT model meets only sometimes: 1 when the answer starts with
    "yes" (the `regex` scorer, its pattern carried by the job). Rollouts come from two rollout
    workers, scores from one reward worker, all through Redis; the trainer holds one base with
    the LoRA policy, its value head and the reference (the adapter disabled)."""
    rows = [{"instruction": YES_NO.format(n), "output": "yes"} for n in range(1000, 1400)]
    data = write_jsonl(run_dir / "demo" / "ppo_prompts.jsonl", rows)
    dataset = inline_dataset(data, data_pb2.DATASET_FORMAT_ALPACA, cutoff=64)
    dataset.spec.packing = False
    dataset.spec.kind = data_pb2.EXAMPLE_KIND_PROMPT  # the prompt, and the output as reference
    spec = pb.TrainingJobSpec(
        job_id="demo-ppo",
        base_model=base,
        stage=pb.STAGE_PPO,
        dataset=dataset,
        finetuning=pb.FinetuningConfig(
            type=pb.FINETUNING_TYPE_LORA, lora=pb.LoraConfig(rank=8, alpha=16.0)
        ),
        hyperparameters=pb.Hyperparameters(
            learning_rate=PPO_LR, per_device_batch_size=8, max_steps=PPO_STEPS, logging_steps=1,
            seed=0,
        ),
        ppo=pb.PpoConfig(
            sampling=rollout_pb2.SamplingParams(temperature=1.0, max_tokens=3, n=4, seed=11),
            reward_scorer="regex",
            reward_settings=common_pb2.RewardSettings(regex_pattern=r"^\s*yes"),
            kl_coef=0.05,
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
                f"  demo-ppo step {m.step:3d}  mean reward {m.extra['reward/mean']:.2f}  "
                f"kl {m.extra['ppo/kl']:.3f}  engine ratio {m.extra['ppo/engine_ratio']:.4f}  "
                f"waited {m.extra['time/wait_rollouts']:.1f}s  trained {m.extra['time/train']:.1f}s",
                flush=True,
            )
    job = client.training.GetTrainingJob(api.GetTrainingJobRequest(job_id=spec.job_id)).job
    if job.state != pb.JOB_STATE_SUCCEEDED:
        sys.exit(f"job {spec.job_id} ended {pb.JobState.Name(job.state)}: {job.failure_message}")
    counts = json.loads((run_dir / "jobs" / spec.job_id / "output" / "ppo_counts.json").read_text())
    print(
        f"PPO in {time.perf_counter() - started:.0f}s: {counts['published']} rollout tasks "
        f"published, {counts['consumed']} scored rollouts consumed once each "
        f"({counts['redelivered']} redelivered and skipped, {counts['stray']} stray); "
        f"adapter demo-ppo@{counts['final_adapter_version']}"
    )
    first, last = sum(rewards[:2]) / 2, sum(rewards[-3:]) / 3
    print(f"demo result (ppo): answers starting with 'yes' {first:.0%} (first steps) -> {last:.0%}")


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
    model = run_dir / "jobs" / spec.job_id / "model"
    (run_dir / "demo" / "arith_model").write_text(str(model))
    print(f"sums model: {model}")


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
    state = ClusterState.load(run_dir)
    phases = {
        "pretrain": pretrain, "sft": sft, "rm": rm, "dpo": dpo, "sft-yes-no": sft_yes_no,
        "ppo": ppo, "sft-arith": sft_arith, "grpo": grpo,
    }  # fmt: skip
    with Client({n: s.address for n, s in state.services.items()}, timeout=120) as client:
        phases[phase](run_dir, client, state.base_model)


if __name__ == "__main__":
    main()
