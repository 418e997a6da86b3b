"""PPO end to end across the real services (the proof of issue 7).

Real ``redis-server``, the data and training services, rollout and reward workers as separate
processes (``llamafleet.cluster``), the built tiny model after a short SFT that answers "yes" to
about a third of the questions, and the ``regex`` rule scorer rewarding an answer that starts with
"yes", its pattern carried by the job (``PpoConfig.reward_settings``). During the run a reward
worker and then the first rollout worker are killed with SIGKILL, and a second rollout worker
joins; later the trainer itself is killed with SIGKILL and the job resumed from its last
checkpoint. The run finishes, its mean reward rises, and the queues' own records show one group
task per prompt whose every sample produced exactly one scored rollout, used once, the samples of a
group all from the one worker that generated it.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from inline_fleet import yes_no_rows
from llamafleet import cluster
from llamafleet.common.v1 import common_pb2
from llamafleet.data.v1 import data_pb2
from llamafleet.reward.v1 import reward_pb2
from llamafleet.rollout.v1 import rollout_pb2
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api
from synthetic import make_settings

from services.common import queues
from services.rollout.worker import sample_ids
from services.training.loop.batches import InMemorySource
from services.training.recipes import sft

pytestmark = [pytest.mark.slow, pytest.mark.timeout(960)]  # its own deadline is 900 s

JOB = "ppo-e2e"
STEPS, PROMPTS, SAMPLES = 12, 8, 4
LEASE_MS = "3000"  # killed workers' items are re-claimed after this


@pytest.fixture(scope="module")
def sft_model(tiny_random, tokenizer, tmp_path_factory):
    job = tmp_path_factory.mktemp("sft-yes-no")
    settings = make_settings(tiny_random, learning_rate=3e-3, max_steps=30, batch_rows=8)
    sft.run(settings, InMemorySource(yes_no_rows(tokenizer, 200)), job)
    return job / "model"


def prompts_file(path):
    rows = [{"instruction": f"Is {n} a good number?", "output": "yes"} for n in range(3000, 3200)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ppo_spec(model, data) -> pb.TrainingJobSpec:
    source = data_pb2.DatasetSource(
        files=data_pb2.FileSource(paths=[str(data)]),
        format=data_pb2.FormatOptions(format=data_pb2.DATASET_FORMAT_ALPACA),
    )
    spec = pb.TrainingJobSpec(
        job_id=JOB,
        base_model=str(model),
        stage=pb.STAGE_PPO,
        compute_dtype=pb.COMPUTE_DTYPE_FLOAT32,
    )
    spec.dataset.spec.CopyFrom(
        data_pb2.DatasetSpec(sources=[source], kind=data_pb2.EXAMPLE_KIND_PROMPT)
    )
    spec.finetuning.type = pb.FINETUNING_TYPE_LORA
    spec.finetuning.lora.rank = 8
    hp = spec.hyperparameters
    hp.learning_rate, hp.per_device_batch_size, hp.max_steps, hp.seed = 1e-3, PROMPTS, STEPS, 0
    hp.logging_steps = 1
    p = spec.ppo
    p.sampling.CopyFrom(
        rollout_pb2.SamplingParams(max_tokens=3, temperature=1.0, n=SAMPLES, seed=5)
    )
    p.reward_scorer = "regex"
    p.reward_settings.CopyFrom(common_pb2.RewardSettings(regex_pattern=r"^\s*yes"))
    p.kl_coef = 0.05
    return spec


def metrics(run):
    path = run / "jobs" / JOB / "output" / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def published(r, job: str) -> tuple[list[str], list[str]]:
    """The job's rollout task ids in the task stream, and the sample ids they expand to (a group
    task with ``num_samples`` n: n samples, named by the rollout worker's ``sample_ids``)."""
    tasks, samples = [], []
    for _, fields in r.xrange(queues.ROLLOUT_TASKS):
        if not fields[b"id"].decode().startswith(job + ":"):
            continue
        task = rollout_pb2.RolloutTask.FromString(fields[b"payload"])
        tasks.append(task.item_id)
        samples.extend(i for i, _ in sample_ids(task, task.num_samples or 1))
    return tasks, samples


def wait_state(client, state, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.training.GetTrainingJob(api.GetTrainingJobRequest(job_id=JOB)).job
        if job.state == state:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {JOB} did not reach {pb.JobState.Name(state)}")


def kill(state, name):
    os.kill(state.services[name].pid, signal.SIGKILL)


def test_ppo_across_the_fleets_survives_kills_scales_out_and_learns(sft_model, tmp_path):
    run = tmp_path / "cluster"
    state = cluster.up(
        run,
        base_model=sft_model,
        roots=[str(tmp_path)],  # the prompts file
        rollout_workers=1,
        reward_workers=2,
        settings={
            "rollout": {"worker_lease_ms": LEASE_MS},
            "reward": {"lease_ms": LEASE_MS, "worker_threads": "1"},
        },
        timeout=120,
    )
    try:
        client = cluster.connect(run, timeout=60)
        spec = ppo_spec(sft_model, prompts_file(tmp_path / "prompts.jsonl"))
        client.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
        events = {"joined": None}
        deadline = time.monotonic() + 900
        while True:
            job = client.training.GetTrainingJob(api.GetTrainingJobRequest(job_id=JOB)).job
            if job.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
                break
            assert time.monotonic() < deadline, "the PPO job did not finish in time"
            done = len(metrics(run))
            if done >= 2 and "reward" in state.services and "killed_reward" not in events:
                kill(state, "reward")  # reward-2 takes over its re-claimed items
                events["killed_reward"] = done
            if done >= 4 and events["joined"] is None:
                events["joined"] = cluster.add_worker(run, "rollout").name
            if done >= 6 and "killed_rollout" not in events:
                kill(state, "rollout")  # the joiner is now the only rollout worker
                events["killed_rollout"] = done
            if done >= 8 and "killed_trainer" not in events:
                pid_file = run / "jobs" / JOB / "runner.pid"
                os.kill(json.loads(pid_file.read_text())["pid"], signal.SIGKILL)
                events["killed_trainer"] = done
                wait_state(client, pb.JOB_STATE_FAILED)
                spec.resume = True  # from the last checkpoint; rollouts it had not acked return
                client.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
            time.sleep(0.2)
        assert job.state == pb.JOB_STATE_SUCCEEDED, job.message
        assert {"killed_reward", "killed_rollout", "killed_trainer"} <= set(events)

        records = {r["step"]: r for r in metrics(run)}  # a step redone after the kill: the last
        rewards = [records[step]["reward/mean"] for step in sorted(records)]
        assert sorted(records) == list(range(1, STEPS + 1))
        assert sum(rewards[-4:]) / 4 > sum(rewards[:2]) / 2 + 0.2, rewards

        r = queues.connect(state.redis_url)
        tasks, samples = published(r, JOB)
        assert len(tasks) == len(set(tasks)) == STEPS * PROMPTS  # one group task per prompt
        assert len(samples) == len(set(samples)) == STEPS * PROMPTS * SAMPLES
        results = r.xrange(queues.reward_results_stream(JOB))
        scored = [reward_pb2.ScoredRollout.FromString(f[b"payload"]) for _, f in results]
        ids = [s.rollout.task.item_id for s in scored]
        assert sorted(ids) == sorted(samples)  # every sample: exactly one scored rollout
        by_group: dict[str, set[str]] = {}
        for s in scored:  # a group is generated and committed whole, by one worker
            assert s.rollout.group_id in tasks and s.rollout.group_size == SAMPLES
            by_group.setdefault(s.rollout.group_id, set()).add(s.rollout.worker)
        assert all(len(workers) == 1 for workers in by_group.values()), by_group
        assert r.xlen(queues.DEADLETTER) == 0
        assert r.xpending(queues.reward_results_stream(JOB), "training")["pending"] == 0
        counts = json.loads((run / "jobs" / JOB / "output" / "ppo_counts.json").read_text())
        assert counts["published"] == counts["consumed"] == len(samples)  # each used once
        assert counts["stray"] == 0
        # the joiner generated some of the rollouts
        by_worker = {s.rollout.worker for s in scored}
        assert len(by_worker) >= 2, by_worker
        figures = {
            "tasks": len(tasks), "scored": len(scored), "consumed": counts["consumed"],
            "redelivered_skipped": counts["redelivered"], "stray": counts["stray"],
            "samples": len(samples), "lost": len(set(samples) - set(ids)), "doubled": len(ids) - len(set(ids)),
            "rollout_workers_used": len(by_worker), "kills": sorted(events),
            "reward_first2": sum(rewards[:2]) / 2, "reward_last4": sum(rewards[-4:]) / 4,
        }  # fmt: skip
        print("FIGURES", json.dumps(figures))
    finally:
        cluster.down(run)
