"""redis-server SIGKILLed under load and restarted from its append-only file.

A producer thread publishes items while worker processes run both stages; Redis is killed
mid-stream. Everything Redis acknowledged before the kill (the producer's publishes, the
workers' commits as their logs record them) must still be there after the restart, and the
pipeline must then finish with each item exactly once. The same run with persistence off
loses the acknowledged work, which shows the check can fail.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
from llamafleet.redis_local import LocalRedis, free_port
from reliability_harness import (
    FINAL,
    RESULTS,
    TASKS,
    Fleet,
    audit,
    ids_in,
    item_ids,
    report,
    wait_for,
    wait_quiescent,
)

from services.common.queues import connect, publish


class Producer(threading.Thread):
    """Publishes ``ids`` at a steady pace; retries an item (idempotently) until it lands."""

    def __init__(self, url: str, ids: list[str], pace_s: float) -> None:
        super().__init__(daemon=True)
        self.r = connect(url, socket_timeout=1.0, socket_connect_timeout=0.5)
        self.ids, self.pace_s = ids, pace_s
        self.acked: list[str] = []
        self.errors = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        for item in self.ids:
            deadline = time.monotonic() + 90
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    publish(self.r, TASKS, item, b"prompt")
                    break
                except redis.RedisError:
                    self.errors += 1
                    self.stop.wait(0.05)
            else:
                return
            with self.lock:
                self.acked.append(item)
            time.sleep(self.pace_s)

    def acknowledged(self) -> set[str]:
        with self.lock:
            return set(self.acked)


def crash_redis_under_load(server: LocalRedis, tmp_path: Path, fleets: list, n: int) -> dict:
    r = connect(server.url, socket_timeout=5.0)
    fleet = Fleet(server.url, tmp_path, work_ms={"A": 4.0, "B": 2.0})
    fleets.append(fleet)
    fleet.start({"A": 2, "B": 1})
    ids = item_ids(n)
    producer = Producer(server.url, ids, pace_s=0.004)
    producer.start()
    try:
        wait_for(
            lambda: len(producer.acknowledged()) >= n // 2 and r.xlen(FINAL) >= 20,
            60,
            "the pipeline to be under load",
        )
        server.kill()
        killed_at = time.monotonic()
        published = producer.acknowledged()
        time.sleep(0.3)  # nothing can be acknowledged now; let in-flight log lines land
        committed = {stage: fleet.committed(stage) for stage in ("A", "B")}
        server.restart()
        restart_s = time.monotonic() - killed_at
        r = connect(server.url, socket_timeout=5.0)
        in_tasks, in_results, in_final = (set(ids_in(r, s)) for s in (TASKS, RESULTS, FINAL))
        lost = {
            "publishes": sorted(published - in_tasks),
            "commits_A": sorted(committed["A"] - in_results),
            "commits_B": sorted(committed["B"] - in_final),
        }
        return {
            "r": r,
            "ids": ids,
            "producer": producer,
            "fleet": fleet,
            "lost": lost,
            "acked_before_kill": {
                "publishes": len(published),
                "commits_A": len(committed["A"]),
                "commits_B": len(committed["B"]),
            },
            "restart_s": round(restart_s, 2),
        }
    except BaseException:
        producer.stop.set()
        raise


@pytest.mark.slow
def test_redis_killed_under_load_keeps_every_acknowledged_item_with_aof(
    local_redis, tmp_path, fleets
):
    n = 600
    run = crash_redis_under_load(local_redis, tmp_path, fleets, n)
    producer, fleet, r = run["producer"], run["fleet"], run["r"]
    try:
        assert run["acked_before_kill"]["publishes"] >= n // 2
        assert run["acked_before_kill"]["commits_B"] >= 20
        assert run["lost"] == {"publishes": [], "commits_A": [], "commits_B": []}
        # The producer retries whatever was in doubt, the workers reconnect, and it finishes.
        producer.join(120)
    finally:
        producer.stop.set()
    assert not producer.is_alive() and len(producer.acknowledged()) == n
    wait_quiescent(r, timeout=120)
    fleet.stop()
    result = audit(r, run["ids"])
    report(
        "redis_sigkill_aof",
        **result.figures(),
        acked_before_kill=run["acked_before_kill"],
        lost_acknowledged=sum(map(len, run["lost"].values())),
        producer_errors=producer.errors,
        restart_s=run["restart_s"],
    )
    assert result.problems == [], fleet.output_tail()
    for stage in ("A", "B"):
        assert max(fleet.committed_records(stage).values()) == 1


@pytest.mark.slow
def test_redis_killed_without_persistence_loses_acknowledged_work(tmp_path, fleets):
    server = LocalRedis(tmp_path / "redis", free_port(), appendonly=False).start()
    try:
        run = crash_redis_under_load(server, tmp_path, fleets, 400)
        run["producer"].stop.set()
        lost = run["lost"]
        report(
            "redis_sigkill_no_persistence",
            acked_before_kill=run["acked_before_kill"],
            lost_acknowledged={k: len(v) for k, v in lost.items()},
        )
        # The same check as above reports the loss: all of it, since nothing was on disk.
        assert len(lost["publishes"]) == run["acked_before_kill"]["publishes"] > 0
        assert len(lost["commits_B"]) == run["acked_before_kill"]["commits_B"] > 0
    finally:
        server.stop()
