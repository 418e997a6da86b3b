"""PPO across the real services under the queue faults of issue 9, items 2 and 3.

Real ``redis-server`` (append-only file on, as ``llamafleet up`` starts it), the data and
training services and two rollout and one reward worker processes (``llamafleet.cluster``), a
PPO job on the built tiny model. During the run:

- **SIGSTOP past the lease** (item 2): a rollout worker is stopped while it holds tasks, kept
  stopped until the other worker has re-claimed every one of them, then continued. Its late
  results must be discarded (the commit finds it no longer owns the entry).
- **Redis SIGKILL and restart from its AOF** (item 3), right after step 2; Redis stays down
  until the trainer has met the outage (at least 3 s): the whole fleet, the PPO trainer
  included, waits it out; nothing is lost or doubled.
- **Admission** (item 9): the rollout backlog never exceeds ``max_staleness`` steps of tasks
  (one group task of 4 samples per prompt).

The job must finish, and the queues' own records must show one scored rollout per sample, each
used once, nothing pending and nothing dead-lettered.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest
import redis
from llamafleet import cluster
from llamafleet.redis_local import LocalRedis
from llamafleet.reward.v1 import reward_pb2
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api
from test_ppo_fleet import metrics, ppo_spec, prompts_file, published

from services.common import queues
from services.rollout.worker import GROUP as ROLLOUT_GROUP

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

JOB = "ppo-e2e"  # ppo_spec's job id
STEPS = 4  # x ppo_spec's 8 prompts x 4 samples
LEASE_MS = 2000
STALENESS = 2


def owned_by(r, pid: int) -> list[str]:
    """Entry ids of the rollout tasks pending for the worker process ``pid``."""
    prefix = f"{socket.gethostname()}:{pid}:".encode()
    pending = r.xpending_range(queues.ROLLOUT_TASKS, ROLLOUT_GROUP, "-", "+", 1000)
    return [p["message_id"].decode() for p in pending if p["consumer"].startswith(prefix)]


def wait_until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop_past_the_lease(r, pid: int) -> list[str]:
    """SIGSTOP ``pid`` while it holds tasks; SIGCONT once others re-claimed all of them."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        wait_until(lambda: owned_by(r, pid), 60, "the rollout worker to hold a task")
        os.kill(pid, signal.SIGSTOP)
        try:
            held = owned_by(r, pid)  # still held once stopped (not committed just before)
            if held:
                wait_until(lambda: not owned_by(r, pid), 60, "the other worker to re-claim them")
                return held
        finally:
            os.kill(pid, signal.SIGCONT)
    raise AssertionError("never caught the rollout worker holding a task")


def test_ppo_survives_a_worker_stopped_past_its_lease_and_a_redis_crash(tiny_random, tmp_path):
    run = tmp_path / "cluster"
    state = cluster.up(
        run,
        base_model=tiny_random,
        roots=[str(tmp_path)],  # the prompts file
        rollout_workers=2,
        reward_workers=1,
        settings={
            "rollout": {"worker_lease_ms": str(LEASE_MS)},
            "reward": {"lease_ms": str(LEASE_MS), "worker_threads": "1"},
        },
        timeout=120,
    )
    restarted: LocalRedis | None = None
    try:
        client = cluster.connect(run, timeout=60)
        spec = ppo_spec(tiny_random, prompts_file(tmp_path / "prompts.jsonl"))
        spec.hyperparameters.max_steps = STEPS
        spec.ppo.max_staleness = STALENESS  # admission: tasks of at most 2 steps in flight
        client.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
        r = queues.connect(state.redis_url)
        stopped_pid = state.services["rollout"].pid
        events: dict[str, object] = {}
        backlog: list[int] = []
        deadline = time.monotonic() + 900
        while True:
            job = client.training.GetTrainingJob(api.GetTrainingJobRequest(job_id=JOB)).job
            if job.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
                break
            assert time.monotonic() < deadline, "the PPO job did not finish in time"
            done = len(metrics(run))
            try:  # the rollout backlog (undelivered + pending): bounded by admission
                backlog.append(queues.backlog(r, queues.ROLLOUT_TASKS, ROLLOUT_GROUP))
            except (redis.RedisError, ValueError):
                pass  # Redis restarting, or the group not created yet
            if done >= 1 and "stopped" not in events:
                events["stopped"] = stop_past_the_lease(r, stopped_pid)
            if done >= 2 and "redis_killed" not in events:
                # Right after a step's metrics: the trainer is about to publish and wait. (Redis
                # writes its AOF before it replies, so a SIGKILL loses nothing acknowledged.)
                os.kill(state.redis_pid, signal.SIGKILL)
                events["redis_killed"] = done
                killed_at = time.monotonic()
                # Down until the trainer has met the outage (a slow trainer may still be busy
                # with a step whose rollouts it has), then at least 3 s for the workers.
                runner_log = run / "jobs" / JOB / "runner.log"
                wait_until(
                    lambda: "Redis unavailable" in runner_log.read_text(errors="replace"),  # noqa: B023
                    180,
                    "the trainer to meet the Redis outage",
                )
                time.sleep(max(0.0, 3.0 - (time.monotonic() - killed_at)))
                restarted = LocalRedis(run / "redis", state.redis_port).start()
                r = queues.connect(state.redis_url)
            time.sleep(0.2)
        assert job.state == pb.JOB_STATE_SUCCEEDED, job.message
        assert {"stopped", "redis_killed"} <= set(events)

        tasks, samples = published(r, JOB)
        scored = [
            reward_pb2.ScoredRollout.FromString(f[b"payload"])
            for _, f in r.xrange(queues.reward_results_stream(JOB))
        ]
        ids = [s.rollout.task.item_id for s in scored]
        counts = json.loads((run / "jobs" / JOB / "output" / "ppo_counts.json").read_text())
        logs = {p.name: p.read_text(errors="replace") for p in (run / "logs").glob("*")}
        rollout_log = logs.get("rollout.log", "") + logs.get("rollout.out", "")
        trainer_log = "".join(
            p.read_text(errors="replace") for p in (run / "jobs" / JOB).glob("*.log")
        )
        figures = {
            "tasks": len(tasks),
            "samples": len(samples),
            "scored": len(scored),
            "lost": len(set(samples) - set(ids)),
            "doubled": len(ids) - len(set(ids)),
            "consumed": counts["consumed"],
            "stray": counts["stray"],
            "held_at_sigstop": len(events["stopped"]),
            "late_commits_discarded": rollout_log.count("its lease was lost"),
            "trainer_waited_for_redis": trainer_log.count("Redis is back"),
            "dead_lettered": r.xlen(queues.DEADLETTER),
            "max_rollout_backlog": max(backlog),
            "backlog_bound": STALENESS * 8,
            "backlog_samples": len(backlog),
        }
        print("FIGURES", json.dumps(figures))
        assert len(tasks) == len(set(tasks)) == STEPS * 8  # one group task (4 samples) per prompt
        assert len(samples) == len(set(samples)) == STEPS * 8 * 4
        assert sorted(ids) == sorted(samples)  # one scored rollout per sample: none lost or doubled
        assert counts["published"] == counts["consumed"] == len(samples) and counts["stray"] == 0
        assert r.xlen(queues.DEADLETTER) == 0
        assert r.xpending(queues.ROLLOUT_TASKS, ROLLOUT_GROUP)["pending"] == 0
        assert r.xpending(queues.reward_results_stream(JOB), "training")["pending"] == 0
        assert figures["late_commits_discarded"] >= 1, "the stopped worker's late commit"
        assert figures["trainer_waited_for_redis"] >= 1, [
            line for line in trainer_log.splitlines() if "Redis" in line or "PPO step" in line
        ]
        assert 0 < max(backlog) <= STALENESS * 8  # max_staleness steps of group tasks at most
        records = {m["step"] for m in metrics(run)}
        assert records == set(range(1, STEPS + 1))
    finally:
        cluster.down(run)
        if restarted is not None:
            restarted.stop()
