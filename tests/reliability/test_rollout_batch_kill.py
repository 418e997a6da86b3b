"""Batching rollout workers under faults (issue 18): a rollout service holding a batch of tasks
(``worker_max_inflight`` > 1, groups of samples among them) is SIGKILLed mid-generation, and the
queue Redis is SIGKILLed and restarted from its AOF while the next worker holds its own batch.
Counted exactly, as Kafka's transaction tests count: every expected sample id in the results
stream once (0 lost, 0 doubled), every group whole, nothing pending or dead-lettered."""

from __future__ import annotations

import collections
import signal
import time

import pytest
from llamafleet.redis_local import LocalRedis, free_port
from llamafleet.rollout.v1 import rollout_pb2
from reliability_harness import report, start_service, stop_services, wait_for, wait_serving

from services.common import queues
from services.rollout.config import RolloutConfig
from services.rollout.generator import Generator
from services.rollout.worker import GROUP, make_worker, sample_ids

MAX_TOKENS = 160  # a batch takes seconds on this box: the kill lands mid-generation
TASKS = 20


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from services.training.tiny.model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=3)


def task(i: int) -> rollout_pb2.RolloutTask:
    return rollout_pb2.RolloutTask(
        item_id=f"kill:1:0:{i}:0",
        job_id="kill",
        policy_version=1,
        shard=i,
        prompt_ids=[1, 10 + i, 20 + i][: 2 + i % 2],
        sampling=rollout_pb2.SamplingParams(temperature=1.0, seed=i, max_tokens=MAX_TOKENS),
        num_samples=3 if i % 2 else 1,
    )


def pending_of(r, consumer_prefix: str = "") -> int:
    try:
        return sum(
            c["pending"]
            for c in r.xinfo_consumers(queues.ROLLOUT_TASKS, GROUP)
            if c["name"].decode().startswith(consumer_prefix)
        )
    except Exception:
        return 0


@pytest.mark.slow
def test_rollout_worker_killed_mid_batch_and_redis_restarted_lose_and_double_nothing(
    tiny_model, tmp_path
):
    redis_server = LocalRedis(tmp_path / "redis", free_port()).start()
    try:
        run_scenario(tiny_model, tmp_path, redis_server)
    finally:
        redis_server.stop()


def run_scenario(tiny_model, tmp_path, redis_server) -> None:
    r = queues.connect(redis_server.url, socket_timeout=5)
    tasks = [task(i) for i in range(TASKS)]
    expected = {sid for t in tasks for sid, _ in sample_ids(t, t.num_samples)}
    svc = start_service(
        "rollout", tmp_path / "rollout", f"base_model={tiny_model}",
        f"redis_url={redis_server.url}", "worker_max_inflight=8", "worker_lease_ms=1500",
    )  # fmt: skip
    worker = None
    try:
        wait_serving(svc)
        for t in tasks:
            queues.publish(r, queues.ROLLOUT_TASKS, t.item_id, t.SerializeToString())
        wait_for(lambda: pending_of(r) >= 8, 60, "the first worker to take a batch", 0.01)
        time.sleep(0.5)  # generating the batch
        killed_holding = pending_of(r)
        svc.proc.send_signal(signal.SIGKILL)
        svc.proc.wait(timeout=10)
        committed_before_kill = r.xlen(queues.ROLLOUT_RESULTS)

        generator = Generator(RolloutConfig(base_model=str(tiny_model), device="cpu"))
        worker = make_worker(
            generator, redis_server.url, lease_ms=1500, max_deliveries=3, max_inflight=8
        )
        worker.start()
        # the second worker holds a batch of its own (re-claimed after the lease, or new)
        wait_for(
            lambda: pending_of(r, worker.queue.consumer) >= 4, 60, "the second worker's batch", 0.01
        )
        time.sleep(0.3)
        redis_server.kill()
        time.sleep(1.0)  # the worker's commits and lease renewals fail meanwhile
        redis_server.start()
        wait_for(lambda: len(set(ids(r))) >= len(expected), 300, "every sample")
        wait_for(lambda: queues.backlog(r, queues.ROLLOUT_TASKS, GROUP) == 0, 60, "acks")
    finally:
        if worker is not None:
            worker.stop()
        stop_services([svc])
    out = ids(r)
    doubled = [i for i, c in collections.Counter(out).items() if c > 1]
    groups: dict[str, set[int]] = collections.defaultdict(set)
    for _eid, f in r.xrange(queues.ROLLOUT_RESULTS):
        ro = rollout_pb2.Rollout.FromString(f[b"payload"])
        assert len(ro.completion_ids) == len(ro.logprobs) > 0
        groups[ro.group_id].add(ro.group_index)
    dead = r.xlen(queues.DEADLETTER)
    report(
        "rollout_batch_kill",
        tasks=TASKS, samples=len(expected), held_at_kill=killed_holding,
        committed_before_kill=committed_before_kill, results=len(out),
        lost=len(expected - set(out)), doubled=len(doubled),
    )  # fmt: skip
    r.close()
    assert dead == 0
    assert killed_holding >= 8  # the kill hit a batch in hand
    assert committed_before_kill < len(expected)
    assert set(out) == expected and not doubled  # 0 lost, 0 doubled
    assert {g: len(v) for g, v in groups.items()} == {t.item_id: t.num_samples for t in tasks}


def ids(r) -> list[str]:
    return [f[b"id"].decode() for _e, f in r.xrange(queues.ROLLOUT_RESULTS)]
