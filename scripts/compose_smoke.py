"""The pipeline of scripts/compose_smoke.sh, run against the containers from this machine.

    python scripts/compose_smoke.py sft|ppo|inspect --data HOST:PORT --training HOST:PORT \
        --redis-url URL [--ppo-steps N]

The compose command of the running project comes in ``SMOKE_COMPOSE`` (for ``docker cp``,
``exec`` and ``kill``), the token in ``LLAMAFLEET_TOKEN``. Like scripts/demo.py, it talks to the
services only over gRPC (the published data and training ports) and reads the queues' own
records from Redis; datasets go into the data container's volume with ``docker cp``.

- ``sft``: a full SFT of the tiny model in ``/models/tiny`` on questions answered "yes" or "no"
  at random, copied to ``/models/smoke-sft`` for the workers to serve.
- ``ppo``: PPO over that model rewarding answers that start with "yes" (the ``regex`` scorer).
  After two steps one rollout container is killed (``docker kill``). At the end, from Redis:
  every task has exactly one scored rollout (0 lost, 0 doubled), nothing dead-lettered or
  pending, the trainer consumed each once, and the consumer names in the results show both
  rollout containers and both reward containers did work.
- ``inspect``: each container runs as a non-root user, and each service's state folder is on
  its volume.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llamafleet.client import Client
from llamafleet.common.v1 import common_pb2
from llamafleet.data.v1 import data_pb2
from llamafleet.reward.v1 import reward_pb2
from llamafleet.rollout.v1 import rollout_pb2
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api
from redis import Redis

SFT_JOB, PPO_JOB = "smoke-sft", "smoke-ppo"
INPUTS = "/var/lib/llamafleet/inputs"  # in the data container, on its `datasets` volume
PROMPTS, SAMPLES = 8, 4
YES_NO = "Is {} a good number?"
# Streams and groups as services/common/queues.py names them (DESIGN.md section 2).
TASKS, DEADLETTER = "llamafleet:rollout:tasks", "llamafleet:deadletter"


def compose(*args: str, capture: bool = False) -> str:
    command = [*shlex.split(os.environ["SMOKE_COMPOSE"]), *args]
    done = subprocess.run(command, check=True, text=True, capture_output=capture)
    return done.stdout if capture else ""


def containers(service: str) -> list[str]:
    """Ids of the service's running containers."""
    return compose("ps", "-q", service, capture=True).split()


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, text=True, capture_output=True).stdout


def hostname(container: str) -> str:
    return docker("inspect", "-f", "{{.Config.Hostname}}", container).strip()


def put_input(name: str, rows: list[dict]) -> str:
    """Write ``rows`` as JSONL into the data container's volume; the path the service reads."""
    (data,) = containers("data")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        path.chmod(0o644)
        compose("exec", "-T", "data", "mkdir", "-p", INPUTS)
        docker("cp", str(path), f"{data}:{INPUTS}/{name}")
    return f"{INPUTS}/{name}"


def dataset(path: str, kind: int = 0) -> pb.DatasetRef:
    source = data_pb2.DatasetSource(
        files=data_pb2.FileSource(paths=[path]),
        format=data_pb2.FormatOptions(format=data_pb2.DATASET_FORMAT_ALPACA),
    )
    spec = data_pb2.DatasetSpec(
        sources=[source], tokenization=data_pb2.TokenizationOptions(cutoff_len=64)
    )
    if kind:
        spec.kind = kind
    else:
        spec.packing = True
    return pb.DatasetRef(spec=spec)


def follow(client: Client, job_id: str, on_step=None) -> tuple[pb.TrainingJob, list[dict]]:
    """Watch the job to its end; ``on_step(step)`` after each step's metrics."""
    seen: list[dict] = []
    request = api.WatchTrainingJobRequest(job_id=job_id)
    for reply in client.training.WatchTrainingJob(request, timeout=1800):
        if reply.event.HasField("metrics"):
            m = reply.event.metrics
            seen.append({"step": m.step, "loss": m.loss, **dict(m.extra)})
            if on_step is not None:
                on_step(m.step)
    job = client.training.GetTrainingJob(api.GetTrainingJobRequest(job_id=job_id)).job
    if job.state != pb.JOB_STATE_SUCCEEDED:
        sys.exit(f"FAIL: job {job_id} ended {pb.JobState.Name(job.state)}: {job.failure_message}")
    return job, seen


def sft(client: Client, args) -> None:
    import random

    rng = random.Random(0)
    rows = [
        {"instruction": YES_NO.format(n), "output": rng.choice(["yes", "no"])} for n in range(200)
    ]
    spec = pb.TrainingJobSpec(
        job_id=SFT_JOB,
        base_model="/models/tiny",
        stage=pb.STAGE_SFT,
        dataset=dataset(put_input("yes_no.jsonl", rows)),
        finetuning=pb.FinetuningConfig(type=pb.FINETUNING_TYPE_FULL),
        hyperparameters=pb.Hyperparameters(
            learning_rate=3e-3, max_steps=30, per_device_batch_size=8, logging_steps=5
        ),
    )
    started = time.monotonic()
    client.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
    _job, seen = follow(client, SFT_JOB)
    losses = [m["loss"] for m in seen if m.get("loss")]
    print(f"SFT in {time.monotonic() - started:.0f}s: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    if not losses[-1] < losses[0]:
        sys.exit(f"FAIL: the SFT loss did not fall: {losses}")
    model = f"/var/lib/llamafleet/jobs/{SFT_JOB}/model"
    compose("exec", "-T", "training", "rm", "-rf", "/models/smoke-sft")
    compose("exec", "-T", "training", "cp", "-r", model, "/models/smoke-sft")
    print(f"{model} -> /models/smoke-sft (the base the workers serve next)")


def ppo_spec(steps: int) -> pb.TrainingJobSpec:
    rows = [{"instruction": YES_NO.format(n), "output": "yes"} for n in range(1000, 1400)]
    spec = pb.TrainingJobSpec(
        job_id=PPO_JOB,
        base_model="/models/smoke-sft",
        stage=pb.STAGE_PPO,
        compute_dtype=pb.COMPUTE_DTYPE_FLOAT32,
        dataset=dataset(put_input("ppo_prompts.jsonl", rows), data_pb2.EXAMPLE_KIND_PROMPT),
        finetuning=pb.FinetuningConfig(
            type=pb.FINETUNING_TYPE_LORA, lora=pb.LoraConfig(rank=8, alpha=16.0)
        ),
        hyperparameters=pb.Hyperparameters(
            learning_rate=1e-3, per_device_batch_size=PROMPTS, max_steps=steps, logging_steps=1,
            seed=0,
        ),
        ppo=pb.PpoConfig(
            sampling=rollout_pb2.SamplingParams(temperature=1.0, max_tokens=3, n=SAMPLES, seed=5),
            reward_scorer="regex",
            reward_settings=common_pb2.RewardSettings(regex_pattern=r"^\s*yes"),
            kl_coef=0.05,
        ),
    )  # fmt: skip
    return spec


def ppo(client: Client, args) -> None:
    rollout_ids, reward_ids = containers("rollout"), containers("reward")
    if len(rollout_ids) != 2 or len(reward_ids) != 2:
        sys.exit(f"FAIL: expected 2 rollout and 2 reward containers: {rollout_ids} {reward_ids}")
    rollout_hosts = {hostname(c): c for c in rollout_ids}
    reward_hosts = {hostname(c) for c in reward_ids}
    victim = rollout_ids[0]
    killed: dict[str, object] = {}

    def on_step(step: int) -> None:
        if step >= 2 and not killed:
            docker("kill", victim)  # SIGKILL: its leased tasks are re-claimed by the other one
            killed.update(container=victim[:12], after_step=step, at=time.monotonic())
            print(f"docker kill {victim[:12]} (rollout) after step {step}", flush=True)

    started = time.monotonic()
    client.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=ppo_spec(args.ppo_steps)))
    _job, seen = follow(client, PPO_JOB, on_step)
    rewards = {m["step"]: m["reward/mean"] for m in seen if "reward/mean" in m}
    if not killed:
        sys.exit("FAIL: the job ended before a rollout container could be killed")

    r = Redis.from_url(args.redis_url)
    tasks = [
        f[b"id"].decode() for _, f in r.xrange(TASKS) if f[b"id"].decode().startswith(PPO_JOB + ":")
    ]
    results = r.xrange(f"llamafleet:reward:results:{PPO_JOB}")
    scored = [reward_pb2.ScoredRollout.FromString(f[b"payload"]) for _, f in results]
    ids = [s.rollout.task.item_id for s in scored]
    out = compose(
        "exec", "-T", "training", "cat",
        f"/var/lib/llamafleet/jobs/{PPO_JOB}/output/ppo_counts.json", capture=True,
    )  # fmt: skip
    counts = json.loads(out)
    rollout_seen = {s.rollout.worker.split(":")[0] for s in scored}
    reward_seen = {s.worker.split(":")[0] for s in scored}
    figures = {
        "steps": sorted(rewards) == list(range(1, args.ppo_steps + 1)),
        "tasks": len(tasks),
        "distinct_tasks": len(set(tasks)),
        "scored": len(scored),
        "lost": len(set(tasks) - set(ids)),
        "doubled": len(ids) - len(set(ids)),
        "dead_letters": r.xlen(DEADLETTER),
        "trainer_pending": r.xpending(f"llamafleet:reward:results:{PPO_JOB}", "training")[
            "pending"
        ],
        "published": counts["published"],
        "consumed": counts["consumed"],
        "redelivered_skipped": counts["redelivered"],
        "stray": counts["stray"],
        "killed": killed["container"],
        "killed_after_step": killed["after_step"],
        "rollout_containers_seen": sorted(h for h in rollout_seen if h in rollout_hosts),
        "reward_containers_seen": sorted(h for h in reward_seen if h in reward_hosts),
        "reward_first2": sum(rewards[s] for s in sorted(rewards)[:2]) / 2,
        "reward_last3": sum(rewards[s] for s in sorted(rewards)[-3:]) / 3,
        "ppo_s": round(time.monotonic() - started),
    }
    print("FIGURES", json.dumps(figures), flush=True)
    expected = args.ppo_steps * PROMPTS * SAMPLES
    failures = [
        name
        for name, ok in (
            ("every step recorded", figures["steps"]),
            ("tasks published once each", len(tasks) == len(set(tasks)) == expected),
            ("0 lost", figures["lost"] == 0),
            ("0 doubled", figures["doubled"] == 0),
            ("nothing dead-lettered", figures["dead_letters"] == 0),
            ("nothing pending", figures["trainer_pending"] == 0),
            ("each used once", counts["published"] == counts["consumed"] == expected),
            ("no stray", counts["stray"] == 0),
            ("both rollout containers worked", rollout_seen >= set(rollout_hosts)),
            ("both reward containers worked", reward_seen >= reward_hosts),
        )
        if not ok
    ]
    if failures:
        sys.exit(f"FAIL: {', '.join(failures)}")
    print(
        f"PPO in {figures['ppo_s']}s: {len(tasks)} tasks, {len(scored)} scored, 0 lost, "
        f"0 doubled; rollouts from {len(rollout_seen)} containers (one killed after step "
        f"{killed['after_step']}), scores from {len(reward_seen)}; mean reward "
        f"{figures['reward_first2']:.2f} (first 2 steps) -> {figures['reward_last3']:.2f} (last 3)"
    )


def inspect(client: Client, args) -> None:
    """Every llamafleet container runs as a non-root user; state folders sit on volumes."""
    failures = []
    for service, folder in (
        ("data", "/var/lib/llamafleet/datasets"),
        ("training", "/var/lib/llamafleet/jobs"),
        ("rollout", "/var/lib/llamafleet/adapters"),
        ("reward", "/var/lib/llamafleet/reward-adapters"),
        ("redis", "/data"),
    ):
        for container in containers(service):
            uid = docker("exec", container, "id", "-u").strip()
            mounts = json.loads(docker("inspect", "-f", "{{json .Mounts}}", container))
            on_volume = any(
                m["Type"] == "volume" and folder.startswith(m["Destination"]) for m in mounts
            )
            print(f"{service:8s} {container[:12]} uid {uid}; {folder} on a volume: {on_volume}")
            if uid == "0":
                failures.append(f"{service} runs as root")
            if service in ("data", "training", "redis") and not on_volume:
                failures.append(f"{service}: {folder} is not on a volume")
    if failures:
        sys.exit("FAIL: " + "; ".join(sorted(set(failures))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["sft", "ppo", "inspect"])
    parser.add_argument("--data", required=True)
    parser.add_argument("--training", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--ppo-steps", type=int, default=6)
    args = parser.parse_args()
    addresses = {"data": args.data, "training": args.training}
    with Client(addresses, token=os.environ["LLAMAFLEET_TOKEN"], timeout=120) as client:
        {"sft": sft, "ppo": ppo, "inspect": inspect}[args.phase](client, args)


if __name__ == "__main__":
    main()
