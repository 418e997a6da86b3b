"""A full Redis (``maxmemory`` reached under ``noeviction``, as the queue Redis is configured).

Writes fail loudly with OOM and the queue's Lua scripts are atomic under it: Redis 7 checks
memory at a script's first write only, and every script here writes first what marks it done,
so a refused publish or commit leaves nothing half-applied and succeeds once memory is freed.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
from reliability_harness import RESULTS, TASKS, ids_in, wait_for

from services.common.queues import (
    Outcome,
    WorkQueue,
    done_key,
    publish,
    published_key,
)

FILLER = "llamafleet:test-filler:"


def fill(r: redis.Redis) -> int:
    """Lower maxmemory to just above what is used, then fill up to it; returns filler keys."""
    r.config_set("maxmemory", int(r.info("memory")["used_memory"]) + 200_000)
    for k in range(10_000):
        try:
            r.set(f"{FILLER}{k}", b"x" * 4096)
        except redis.exceptions.OutOfMemoryError:
            return k
    raise AssertionError("maxmemory was never reached")


def free(r: redis.Redis, keys: int) -> None:
    r.delete(*[f"{FILLER}{k}" for k in range(keys)])
    r.config_set("maxmemory", 0)


def test_full_redis_refuses_publish_and_commit_without_half_writes(r):
    publish(r, TASKS, "reljob:0:0:0:0", b"prompt")
    q = WorkQueue(r, TASKS, "rollout", consumer="c", lease_ms=60_000)
    q.ensure_group()
    [delivery] = q.fetch(1)
    keys = fill(r)
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            publish(r, TASKS, "reljob:0:0:0:1", b"prompt")
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            q.commit(delivery, [(RESULTS, delivery.item_id, b"result")])
        assert not r.exists(published_key(TASKS, "reljob:0:0:0:1"))
        assert not r.exists(done_key("rollout", delivery.item_id))
        assert r.xlen(RESULTS) == 0
        assert r.xpending(TASKS, "rollout")["pending"] == 1  # still owned, retried below
    finally:
        free(r, keys)
    assert publish(r, TASKS, "reljob:0:0:0:1", b"prompt") is True
    assert q.commit(delivery, [(RESULTS, delivery.item_id, b"result")]) is Outcome.COMMITTED
    assert ids_in(r, TASKS) == ["reljob:0:0:0:0", "reljob:0:0:0:1"]
    assert ids_in(r, RESULTS) == ["reljob:0:0:0:0"]


def test_worker_loop_waits_out_a_full_redis(r):
    q = WorkQueue(r, TASKS, "rollout", consumer="c", lease_ms=1000)
    q.ensure_group()
    publish(r, TASKS, "reljob:0:0:0:0", b"prompt")
    keys = fill(r)
    died: list[BaseException] = []
    stop = threading.Event()

    def loop() -> None:
        try:
            q.run(lambda d: [(RESULTS, d.item_id, b"r")], stop=stop, block_ms=100)
        except BaseException as exc:  # what a service's worker thread would die of
            died.append(exc)

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    try:
        time.sleep(1.5)  # full for a while: the item's commit is refused
        assert worker.is_alive(), f"the worker loop died: {died!r}"
        free(r, keys)
        wait_for(lambda: r.xlen(RESULTS) == 1, 30, "the worker to resume")
    finally:
        stop.set()
        worker.join(10)
