"""GRPO across the real services, with a rollout worker and the trainer SIGKILLed mid-run.

Real ``redis-server``, the data and training services, two rollout workers and a reward worker as
processes (``llamafleet.cluster``), a STAGE_GRPO job (groups of 4) on the built tiny model after
the yes/no SFT. Each prompt's group is one task (``num_samples`` 4). During the run a rollout
worker is SIGKILLed while it holds group tasks, so they are redelivered after the lease and their
groups generated again whole (by the other worker); later the trainer is SIGKILLed and the job
resumed from its last checkpoint.

The run must finish; the trainer's ``groups.jsonl`` (the last line of each step: the update the
checkpoint kept) must show every group trained exactly once and only with all 4 samples, and the
queues' own records one scored rollout per sample, every group's samples from one worker, nothing
pending, nothing dead-lettered.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from llamafleet import cluster
from llamafleet.reward.v1 import reward_pb2
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api
from test_ppo_fleet import ppo_spec, prompts_file, published, sft_model, wait_state  # noqa: F401
from test_ppo_fleet_faults import owned_by, wait_until

from services.common import queues
from services.rollout.worker import GROUP as ROLLOUT_GROUP

pytestmark = pytest.mark.slow  # about 60 s here

JOB = "ppo-e2e"  # ppo_spec's job id
STEPS, PROMPTS, SAMPLES = 6, 8, 4
LEASE_MS = "3000"


def grpo_spec(model, data) -> pb.TrainingJobSpec:
    spec = ppo_spec(model, data)
    spec.stage = pb.STAGE_GRPO
    spec.hyperparameters.max_steps = STEPS
    spec.hyperparameters.learning_rate = 2e-3
    spec.hyperparameters.save_steps = 2  # killed after step 3: resumed from 2, step 3 redone
    spec.ppo.ClearField("kl_coef")
    spec.ppo.ppo_epochs = 2
    spec.grpo.loss_type = pb.GRPO_LOSS_TYPE_SEQ_MEAN_TOKEN_MEAN
    return spec


def trained_groups(run) -> tuple[dict[int, dict[str, list[int]]], int]:
    """Each step's trained groups (a step redone after the kill: its last line, the update the
    checkpoint kept) and how many step lines were redone."""
    path = run / "jobs" / JOB / "output" / "groups.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    by_step = {line["step"]: line["trained"] for line in lines}
    return by_step, len(lines) - len(by_step)


def test_grpo_groups_survive_a_rollout_worker_and_trainer_sigkill(sft_model, tmp_path):  # noqa: F811
    run = tmp_path / "cluster"
    state = cluster.up(
        run,
        base_model=sft_model,
        roots=[str(tmp_path)],
        rollout_workers=2,
        reward_workers=1,
        settings={
            "rollout": {"worker_lease_ms": LEASE_MS},
            "reward": {"lease_ms": LEASE_MS, "worker_threads": "1"},
        },
        timeout=120,
    )
    try:
        client = cluster.connect(run, timeout=60)
        spec = grpo_spec(sft_model, prompts_file(tmp_path / "prompts.jsonl"))
        client.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
        r = queues.connect(state.redis_url)
        events: dict[str, object] = {}
        steps_path = run / "jobs" / JOB / "output" / "groups.jsonl"
        deadline = time.monotonic() + 900
        while True:
            job = client.training.GetTrainingJob(api.GetTrainingJobRequest(job_id=JOB)).job
            if job.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
                break
            assert time.monotonic() < deadline, "the GRPO job did not finish in time"
            done = len(steps_path.read_text().splitlines()) if steps_path.exists() else 0
            if done >= 1 and "killed_rollout" not in events:
                pid = state.services["rollout"].pid
                held = wait_until(lambda: owned_by(r, pid), 120, "the worker to hold tasks")  # noqa: B023
                os.kill(pid, signal.SIGKILL)  # its group tasks come back after the lease, whole
                events["killed_rollout"] = len(held)
            if done >= 3 and "killed_trainer" not in events:
                pid_file = run / "jobs" / JOB / "runner.pid"
                os.kill(json.loads(pid_file.read_text())["pid"], signal.SIGKILL)
                events["killed_trainer"] = done
                wait_state(client, pb.JOB_STATE_FAILED)
                spec.resume = True
                client.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
            time.sleep(0.2)
        assert job.state == pb.JOB_STATE_SUCCEEDED, job.message
        assert {"killed_rollout", "killed_trainer"} <= set(events)

        by_step, redone = trained_groups(run)
        assert sorted(by_step) == list(range(1, STEPS + 1))
        groups = [gid for step in sorted(by_step) for gid in by_step[step]]
        whole = [sorted(s) == list(range(SAMPLES)) for st in by_step.values() for s in st.values()]
        tasks, samples = published(r, JOB)
        scored = [
            reward_pb2.ScoredRollout.FromString(f[b"payload"])
            for _, f in r.xrange(queues.reward_results_stream(JOB))
        ]
        ids = [s.rollout.task.item_id for s in scored]
        counts = json.loads((run / "jobs" / JOB / "output" / "grpo_counts.json").read_text())
        figures = {
            "groups_trained": len(groups), "distinct_groups": len(set(groups)),
            "groups_whole": sum(whole), "tasks": len(tasks), "samples": len(samples),
            "scored": len(scored), "lost": len(set(samples) - set(ids)), "doubled": len(ids) - len(set(ids)),
            "held_by_killed_worker": events["killed_rollout"],
            "trainer_killed_after_step": events["killed_trainer"], "steps_redone": redone,
            **counts,
        }  # fmt: skip
        print("FIGURES", json.dumps(figures))
        assert len(groups) == len(set(groups)) == STEPS * PROMPTS  # each group used once
        assert all(whole)  # and only whole
        assert len(tasks) == len(set(tasks)) == STEPS * PROMPTS  # one group task per prompt
        assert len(samples) == len(set(samples)) == STEPS * PROMPTS * SAMPLES
        assert sorted(ids) == sorted(samples)
        assert set(groups) == {t.rsplit(":", 1)[0] for t in tasks}
        by_group: dict[str, set[str]] = {}
        for s in scored:  # a group is generated and committed whole, by one worker
            assert s.rollout.group_id in tasks and s.rollout.group_size == SAMPLES
            by_group.setdefault(s.rollout.group_id, set()).add(s.rollout.worker)
        assert all(len(workers) == 1 for workers in by_group.values()), by_group
        assert counts["trained_groups"] == STEPS * PROMPTS
        assert counts["published"] == counts["consumed"] == len(samples) and counts["stray"] == 0
        assert r.xlen(queues.DEADLETTER) == 0
        assert r.xpending(queues.reward_results_stream(JOB), "training")["pending"] == 0
        assert r.xpending(queues.ROLLOUT_TASKS, ROLLOUT_GROUP)["pending"] == 0
    finally:
        cluster.down(run)
