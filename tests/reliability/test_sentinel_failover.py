"""Redis that survives a machine: the primary SIGKILLed, Sentinel promotes the replica.

Primary + replica + three sentinels (``sentinel_servers.SentinelSet``); every client connects
through the Sentinel URL (``redis+sentinel://.../llamafleet/0``), the one the services take as
``redis_url``. Replication is asynchronous, so what the primary acknowledged but had not sent to
the replica is gone after the failover; these tests count it:

- under load (worker processes on both stages, the PPO trainer's real ``RolloutExchange``
  publishing tasks, reading scored rollouts and acking after its "checkpoint"), the pipeline
  carries on through the failover and every task is consumed exactly once: commits the workers
  had acknowledged are lost whole with their acks and simply redone, and the trainer's tasks,
  published with ``WAIT`` for the replica, are never lost;
- a replica held back (``DEBUG SLEEP``) while the primary acknowledges a burst of writes loses
  the tail of that burst in the failover, which is why the trainer waits for the replica: the
  same burst published with ``replication.wait_replicated`` loses nothing it acknowledged.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis
from llamafleet import cluster
from llamafleet.reward.v1 import reward_pb2
from llamafleet.rollout.v1 import rollout_pb2
from reliability_harness import (
    FINAL,
    RESULTS,
    TASKS,
    Fleet,
    audit,
    ids_in,
    report,
    start_service,
    wait_for,
    wait_quiescent,
    wait_serving,
)
from sentinel_servers import SentinelSet

from services.common import replication
from services.common.queues import connect, describe_client, publish, reward_results_stream
from services.training.ppo.exchange import RolloutExchange, task_id

JOB = "reljob"
pytestmark = [pytest.mark.slow, pytest.mark.heavy]


@pytest.fixture
def sentinels(tmp_path):
    group = SentinelSet(tmp_path / "redis").start()
    yield group
    group.stop()


class Trainer(threading.Thread):
    """The PPO trainer's queue traffic, through its real ``RolloutExchange``: per step, publish
    the step's tasks (with ``WAIT`` where a replica is attached), read scored rollouts until
    every task of the step is in, then "checkpoint" (the consumed ids, here in memory) and
    ack. A redelivered rollout whose id is already consumed is skipped, as the trainer does."""

    def __init__(self, url: str, steps: int, per_step: int) -> None:
        super().__init__(daemon=True)
        r = connect(url, socket_timeout=2.0, socket_connect_timeout=1.0)
        self.exchange = RolloutExchange(r, JOB, outage_limit_s=120)
        self.steps, self.per_step = steps, per_step
        self.published: list[str] = []  # tasks publish_tasks returned for
        self.consumed: list[str] = []
        self.skipped = 0
        self.steps_done = 0
        self.error: BaseException | None = None
        self.lock = threading.Lock()

    def run(self) -> None:
        try:
            self.exchange.ensure_group()
            for step in range(self.steps):
                ids = [task_id(JOB, 1, step, i, 0) for i in range(self.per_step)]
                tasks = [rollout_pb2.RolloutTask(job_id=JOB, item_id=i) for i in ids]
                self.exchange.publish_tasks(tasks)
                with self.lock:
                    self.published += ids
                want, entries = set(ids), []
                while want:
                    for got in self.exchange.read(block_ms=200):
                        entries.append(got.entry_id)
                        if got.item_id in self.consumed or got.item_id not in want:
                            self.skipped += got.item_id in self.consumed
                            continue
                        want.discard(got.item_id)
                        self.consumed.append(got.item_id)
                self.exchange.ack(entries)  # after the "checkpoint" (self.consumed)
                self.steps_done = step + 1
        except BaseException as exc:  # reported by the test
            self.error = exc


def test_primary_killed_under_load_sentinel_promotes_and_the_pipeline_carries_on(
    sentinels, tmp_path, fleets
):
    url = sentinels.url
    fleet = Fleet(url, tmp_path, work_ms={"A": 4.0, "B": 2.0}, lease_ms=2000)
    fleets.append(fleet)
    fleet.start({"A": 2, "B": 1})
    steps, per_step = 16, 24
    trainer = Trainer(url, steps, per_step)
    trainer.start()
    r = connect(url, socket_timeout=5.0)
    assert describe_client(r).startswith("redis+sentinel://")
    wait_for(lambda: trainer.steps_done >= 4, 120, "the trainer to finish 4 steps")
    with trainer.lock:
        published = set(trainer.published)
    killed_at = sentinels.kill_primary()
    time.sleep(0.3)  # let the workers' log lines of acknowledged commits land
    committed = {stage: fleet.committed(stage) for stage in ("A", "B")}
    promoted_at = sentinels.wait_promoted()
    new = connect(f"redis://127.0.0.1:{sentinels.replica.port}/0", socket_timeout=5.0)
    lost = {
        "publishes": sorted(published - set(ids_in(new, TASKS))),
        "commits_A": sorted(committed["A"] - set(ids_in(new, RESULTS))),
        "commits_B": sorted(committed["B"] - set(ids_in(new, FINAL))),
    }
    trainer.join(240)
    assert trainer.error is None, repr(trainer.error)
    assert not trainer.is_alive(), f"the trainer stopped at step {trainer.steps_done}"
    wait_quiescent(r, timeout=120)
    fleet.stop()
    result = audit(r, [task_id(JOB, 1, s, i, 0) for s in range(steps) for i in range(per_step)])
    figures = {
        **result.figures(),
        "acked_before_kill": {
            "publishes": len(published),
            "commits_A": len(committed["A"]),
            "commits_B": len(committed["B"]),
        },
        "acked_then_lost": {k: len(v) for k, v in lost.items()},
        "trainer_consumed": len(trainer.consumed),
        "trainer_skipped_redelivered": trainer.skipped,
        "trainer_outages": trainer.exchange.outages,
        "failover_s": round(promoted_at - killed_at, 2),
    }
    report("sentinel_failover_under_load", **figures)
    # WAIT: nothing the trainer published is lost; commits may be (they are redone)
    assert lost["publishes"] == []
    assert result.problems == [], fleet.output_tail()
    assert sorted(trainer.consumed) == sorted(set(trainer.consumed))
    assert len(trainer.consumed) == steps * per_step
    assert trainer.exchange.outages >= 1  # it did see the primary go


def burst_through_failover(sentinels: SentinelSet, wait: bool) -> dict:
    """1,000 items of 4 KiB while the replica keeps up, then 5,000 while it sleeps (``DEBUG
    SLEEP 3``: the primary goes on acknowledging, the replica stream backs up), then the primary
    is killed and Sentinel promotes the replica. Which acknowledged items does it lack?

    With ``wait``, an item counts as acknowledged only once ``wait_replicated`` confirmed it
    (100 ms timeout per batch of 500), as the trainer's ``publish_tasks`` does."""
    r = connect(sentinels.url, socket_timeout=10.0)
    payload = b"x" * 4096
    acked: list[str] = []
    refused = 0

    def batches(first: int, last: int) -> None:
        nonlocal refused
        for start in range(first, last, 500):
            batch = [f"{JOB}:burst:{i}" for i in range(start, min(last, start + 500))]
            with r.pipeline(transaction=False) as pipe:
                for item in batch:
                    pipe.xadd(TASKS, {"id": item, "payload": payload})
                pipe.execute()
            if wait:
                try:
                    replication.wait_replicated(r, timeout_ms=100)
                except replication.NotReplicated:
                    refused += len(batch)  # not acknowledged: the trainer publishes it again
                    continue
            acked.extend(batch)

    batches(0, 1000)
    replica = redis.Redis(port=sentinels.replica.port, socket_timeout=30)
    sleeper = threading.Thread(
        target=lambda: replica.execute_command("DEBUG", "SLEEP", "3"), daemon=True
    )
    sleeper.start()
    time.sleep(0.2)
    batches(1000, 6000)
    sentinels.kill_primary()
    sleeper.join(30)
    sentinels.wait_promoted()
    new = connect(f"redis://127.0.0.1:{sentinels.replica.port}/0", socket_timeout=5.0)
    present = set(ids_in(new, TASKS))
    return {
        "written": 6000,
        "acknowledged": len(acked),
        "not_acknowledged": refused,
        "acknowledged_then_lost": len(set(acked) - present),
        "on_the_promoted_replica": len(present),
    }


def test_a_replica_that_falls_behind_loses_acknowledged_writes_in_a_failover(sentinels):
    figures = burst_through_failover(sentinels, wait=False)
    report("sentinel_failover_no_wait", **figures)
    # asynchronous replication: the primary acknowledged everything, the replica lacks a tail
    assert figures["acknowledged"] == 6000
    assert figures["acknowledged_then_lost"] > 0, figures


def test_with_wait_nothing_acknowledged_is_lost_in_the_same_failover(sentinels):
    figures = burst_through_failover(sentinels, wait=True)
    report("sentinel_failover_wait", **figures)
    assert figures["acknowledged"] >= 1000  # before the replica slept, WAIT confirmed
    assert figures["not_acknowledged"] > 0  # while it slept, WAIT refused
    assert figures["acknowledged_then_lost"] == 0, figures


def test_the_reward_service_scores_through_a_failover(sentinels, tmp_path, procs):
    """The real reward service (``python -m services.reward``) given the Sentinel URL as its
    ``redis_url``: rollouts published before and after the primary is killed are each scored
    exactly once, and each result names the consumer that scored it."""
    svc = start_service(
        "reward", tmp_path / "reward", f"redis_url={sentinels.url}", "worker_threads=2",
        "lease_ms=2000",
    )  # fmt: skip
    procs.append(svc)
    wait_serving(svc)
    r = connect(sentinels.url, socket_timeout=5.0)

    def send(steps: range) -> list[str]:
        ids = []
        for step in steps:
            ro = rollout_pb2.Rollout(
                task=rollout_pb2.RolloutTask(
                    item_id=task_id(JOB, 1, step, 0, 0), job_id=JOB, policy_version=1,
                    step=step, scorer="exact_match", reference_answer="yes", prompt_ids=[0, 9],
                ),
                completion_ids=[20, 1], completion_text="yes" if step % 2 else "no",
            )  # fmt: skip
            while True:  # the producer's side: retry (idempotently) until Redis takes it
                try:
                    publish(r, RESULTS, ro.task.item_id, ro.SerializeToString())
                    break
                except redis.RedisError:
                    time.sleep(0.1)
            ids.append(ro.task.item_id)
        return ids

    def scored() -> list[reward_pb2.ScoredRollout]:
        return [
            reward_pb2.ScoredRollout.FromString(f[b"payload"])
            for _, f in r.xrange(reward_results_stream(JOB))
        ]

    ids = send(range(0, 40))
    wait_for(lambda: len(scored()) >= 20, 60, "the reward service to score")
    sentinels.kill_primary()
    ids += send(range(40, 80))  # while Sentinel promotes the replica
    sentinels.wait_promoted()
    wait_for(lambda: {s.rollout.task.item_id for s in scored()} >= set(ids), 120, "scores")
    time.sleep(1.0)  # nothing more should come
    results = scored()
    got = [s.rollout.task.item_id for s in results]
    report("sentinel_failover_reward_service", items=len(ids), scored=len(got),
           doubled=len(got) - len(set(got)), lost=len(set(ids) - set(got)))  # fmt: skip
    assert sorted(got) == sorted(ids)
    assert all(s.raw_score == (1.0 if s.rollout.completion_text == "yes" else 0.0) for s in results)
    assert all(s.worker.startswith(socket.gethostname() + ":") for s in results)
    assert svc.proc.poll() is None, svc.tail()
    # the CLI's side (`llamafleet status`, `deadletters --redis-url`) reads the same URL
    assert cluster.redis_for(tmp_path, sentinels.url).xlen(reward_results_stream(JOB)) == 80
