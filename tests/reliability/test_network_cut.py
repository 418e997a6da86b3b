"""The link between the workers and Redis fails, through a fault proxy (fault_proxy.py): first
cut (every connection reset, new ones refused), then partitioned (nothing flows for longer than
the client timeout and the lease, then everything held back arrives late). The pipeline stalls
while the link is down and, once it heals, finishes with nothing lost or doubled."""

from __future__ import annotations

import time

import pytest
from fault_proxy import FaultProxy
from reliability_harness import (
    FINAL,
    TASKS,
    Fleet,
    audit,
    item_ids,
    report,
    wait_for,
    wait_quiescent,
)

from services.common.queues import publish


def stalled(r, seconds: float) -> tuple[int, int]:
    """Final-stream length after in-flight commands settle and again ``seconds`` later."""
    time.sleep(0.5)
    before = r.xlen(FINAL)
    time.sleep(seconds)
    return before, r.xlen(FINAL)


@pytest.mark.slow
def test_cut_and_partitioned_links_to_redis_lose_nothing_once_healed(
    r, local_redis, tmp_path, fleets
):
    proxy = FaultProxy(local_redis.port).start()
    try:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        fleet = Fleet(url, tmp_path, lease_ms=1500, work_ms={"A": 25.0, "B": 10.0})
        fleet.extra = ["--socket-timeout", "1.0"]
        fleets.append(fleet)
        n = 240
        ids = item_ids(n)
        for item in ids:
            publish(r, TASKS, item, b"prompt")  # the producer's own link stays up
        started = time.monotonic()
        fleet.start({"A": 2, "B": 2})

        wait_for(lambda: r.xlen(FINAL) >= 30, 60, "progress before the cut")
        proxy.cut()
        during_cut = stalled(r, 1.5)
        proxy.heal()
        wait_for(lambda: r.xlen(FINAL) > during_cut[1], 60, "progress after the cut healed")
        cut_stats = (proxy.stats.aborted, proxy.stats.refused)

        wait_for(lambda: r.xlen(FINAL) >= n * 0.6, 60, "progress before the partition")
        proxy.partition()
        during_partition = stalled(r, 2.5)  # > the workers' 1 s socket timeout and 1.5 s lease
        proxy.heal()
        held = proxy.stats.held_chunks

        wait_quiescent(r, timeout=120)
        elapsed = time.monotonic() - started
        alive = [w.consumer for w in fleet.workers if w.proc.poll() is None]
        fleet.stop()
        result = audit(r, ids)
        warned = sum(
            "redis unavailable" in (tmp_path / f"worker-{w.consumer}.out").read_text()
            for w in fleet.retired
        )
    finally:
        proxy.close()

    report(
        "network_cut_and_partition",
        **result.figures(),
        connections_reset=cut_stats[0],
        reconnects_refused=cut_stats[1],
        chunks_held_in_partition=held,
        workers_that_saw_the_fault=warned,
        seconds=round(elapsed, 1),
    )
    assert during_cut[0] == during_cut[1], "work went on through a cut link"
    assert during_partition[0] == during_partition[1], "work went on through a partition"
    assert cut_stats[0] > 0 and cut_stats[1] > 0 and held > 0  # the faults really happened
    assert warned >= 2  # ... and the run loops saw them, logged, backed off and recovered
    assert len(alive) == 4, "a worker died of a network fault"
    assert result.problems == [], fleet.output_tail()
