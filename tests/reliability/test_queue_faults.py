"""Workers SIGKILLed mid-item and SIGSTOPped past their lease, on a two-stage pipeline of real
worker processes over a real redis-server; the same audit is run on deliberately broken
workers (ack before commit, no de-duplication) to prove it catches loss and doubling."""

from __future__ import annotations

import random
import signal
import time

import pytest
from reliability_harness import (
    FINAL,
    RESULTS,
    TASKS,
    Fleet,
    audit,
    chaos_kills,
    ids_in,
    item_ids,
    read_log,
    recovered,
    report,
    wait_for,
    wait_quiescent,
)
from worker_proc import RELEASE_KEY, attempts_key

from services.common.queues import publish


def run_chaos(r, url, tmp_path, fleets, *, mode, n, kills, seed, post_ms=0.0):
    """Produce ``n`` items, kill workers of both stages ``kills`` times, drain, audit."""
    fleet = Fleet(url, tmp_path, mode=mode, post_ms=post_ms, work_ms={"A": 30.0, "B": 20.0})
    fleets.append(fleet)
    fleet.start({"A": 2, "B": 2})
    ids = item_ids(n)
    for item in ids:
        publish(r, TASKS, item, b"prompt")
    started = time.monotonic()
    kill_counts = chaos_kills(
        r,
        fleet,
        kills=kills,
        rng=random.Random(seed),
        done=lambda: r.xlen(FINAL) >= n,
        budget_s=120,
    )
    wait_quiescent(r, timeout=150)
    elapsed = time.monotonic() - started
    fleet.stop()
    result = audit(r, ids)
    orphaned = kill_counts.pop("orphaned")
    kill_counts["items_left_pending"] = len(orphaned)
    kill_counts["recovered"] = recovered(r, orphaned)
    attempts = {s: int(r.get(attempts_key(g)) or 0) for s, g in (("A", "rollout"), ("B", "reward"))}
    figures = {
        "mode": mode,
        **result.figures(),
        **kill_counts,
        "handler_attempts": attempts,
        "outcomes": {f"{o}:{s}": c for (o, s), c in sorted(fleet.outcomes().items())},
        "seconds": round(elapsed, 1),
    }
    return result, figures, fleet


@pytest.mark.slow
def test_sigkilled_workers_of_both_stages_lose_and_double_nothing(r, redis_url, tmp_path, fleets):
    n = 300
    result, figures, fleet = run_chaos(
        r, redis_url, tmp_path, fleets, mode="correct", n=n, kills=24, seed=1
    )
    report("kill_workers_correct", **figures)
    assert result.problems == [], fleet.output_tail()
    assert result.delivered == n
    # The kills were real: most hit a worker holding an item, whose items were recovered
    # (committed by another worker after the lease), which the clean audit above proves.
    assert figures["kills"] >= 12, figures
    assert figures["kills_leaving_pending"] >= 6, figures
    assert figures["recovered"] == figures["items_left_pending"] >= 6, figures
    # Work was redone (at-least-once) yet committed once per stage: done-marks did their job.
    assert sum(figures["handler_attempts"].values()) > 2 * n
    for stage in ("A", "B"):
        records = fleet.committed_records(stage)
        assert max(records.values()) == 1, "one item reported committed twice"


@pytest.mark.slow
def test_audit_catches_a_worker_that_acks_before_committing(r, redis_url, tmp_path, fleets):
    n = 150
    result, figures, _fleet = run_chaos(
        r, redis_url, tmp_path, fleets, mode="ack-first", n=n, kills=12, seed=2
    )
    report("kill_workers_ack_first", **figures)
    assert figures["kills"] >= 6, figures
    assert result.missing, "killing ack-first workers mid-item must lose items"
    assert any("lost" in p for p in result.problems)


@pytest.mark.slow
def test_audit_catches_a_worker_without_deduplication(r, redis_url, tmp_path, fleets):
    n = 150
    result, figures, _fleet = run_chaos(
        r, redis_url, tmp_path, fleets, mode="no-dedupe", n=n, kills=12, seed=3, post_ms=60.0
    )
    report("kill_workers_no_dedupe", **figures)
    assert figures["kills"] >= 6, figures
    assert result.duplicates > 0, "killing no-dedupe workers between publish and ack must double"
    assert any("doubled" in p for p in result.problems)


# -- 2. SIGSTOP past the lease, then SIGCONT ------------------------------------------------


def stop_past_lease(r, url, tmp_path, fleets, mode: str):
    """Worker A1 takes the only item and is SIGSTOPped; after its lease, A2 (a second process)
    re-claims and commits; then A1 is continued and tries its late commit."""
    lease_ms = 600
    fleet = Fleet(url, tmp_path, mode=mode, lease_ms=lease_ms, work_ms={"A": 0.0, "B": 0.0})
    fleets.append(fleet)
    item = item_ids(1)[0]
    publish(r, TASKS, item, b"hold")
    first = fleet.spawn("A")
    wait_for(lambda: r.hget("rel:inhand", first.consumer), 60, "the first worker to take the item")
    fleet.kill(first, signal.SIGSTOP)
    stopped_at = time.monotonic()
    second = fleet.spawn("A")
    wait_for(lambda: r.hget("rel:inhand", second.consumer), 60, "the second worker to re-claim it")
    # Not before the lease ran out. The lease counts from the holder's last renewal, which its
    # keeper makes every lease/3, so the item may be re-claimed lease*2/3 after the SIGSTOP.
    assert (time.monotonic() - stopped_at) * 1000 >= lease_ms * 2 / 3 - 20
    r.set(RELEASE_KEY, 1)
    wait_for(lambda: read_log(second.log), 30, "the second worker's commit")
    fleet.kill(first, signal.SIGCONT)
    wait_for(lambda: read_log(first.log), 30, "the first worker's late commit")
    fleet.stop()
    return item, first, second


def test_worker_stopped_past_its_lease_has_its_late_commit_suppressed(
    r, redis_url, tmp_path, fleets
):
    item, first, second = stop_past_lease(r, redis_url, tmp_path, fleets, "correct")
    assert read_log(second.log) == [("committed", item)]
    assert read_log(first.log) == [("lost", item)]  # its commit found the lease gone
    result = audit(r, [item], final=RESULTS, stages=("A",))
    assert result.problems == []
    [(_eid, fields)] = r.xrange(RESULTS)
    assert fields[b"payload"] == f"by {second.consumer}".encode()
    assert r.xpending_range(TASKS, "rollout", "-", "+", 10) == []
    report("sigstop_past_lease_correct", tried=1, late_commit="lost", outputs=1, lost=0, doubled=0)


def test_audit_catches_a_late_commit_without_ownership_check(r, redis_url, tmp_path, fleets):
    item, first, second = stop_past_lease(r, redis_url, tmp_path, fleets, "no-dedupe")
    result = audit(r, [item], final=RESULTS, stages=("A",))
    assert ids_in(r, RESULTS) == [item, item]
    assert result.duplicates == 1 and any("doubled" in p for p in result.problems)
    report("sigstop_past_lease_no_dedupe", tried=1, outputs=2, doubled=result.duplicates)
