"""Poison items among good ones, handled by worker processes: one makes the handler raise, one
kills the worker outright (a segfault, an OOM kill). Each reaches the dead-letter stream after
exactly ``max_deliveries`` attempts, the good items flow past them, and ``llamafleet status``
shows the dead letters."""

from __future__ import annotations

import json
import time

from llamafleet import cli, cluster
from reliability_harness import (
    DEADLETTER,
    RESULTS,
    TASKS,
    Fleet,
    audit,
    item_ids,
    quiescent,
    report,
)
from worker_proc import attempts_key

from services.common.queues import publish

MAX_DELIVERIES = 3


def test_poison_items_are_dead_lettered_after_max_deliveries_and_status_shows_them(
    r, redis_url, tmp_path, fleets, capsys
):
    good = item_ids(40)
    raising, crashing = "reljob:0:9:0:raise", "reljob:0:9:0:crash"
    for k, item in enumerate(good):
        publish(r, TASKS, item, b"prompt")
        if k == 10:
            publish(r, TASKS, raising, b"poison:raise")
        if k == 20:
            publish(r, TASKS, crashing, b"poison:crash")
    fleet = Fleet(
        redis_url, tmp_path, lease_ms=500, max_deliveries=MAX_DELIVERIES, work_ms={"A": 5.0}
    )
    fleets.append(fleet)
    fleet.start({"A": 2})
    crashes = 0
    deadline = time.monotonic() + 90
    while not (r.xlen(DEADLETTER) == 2 and quiescent(r, ["A"])):
        assert time.monotonic() < deadline, "poison items were not dead-lettered in time"
        for worker in fleet.live("A"):
            if worker.proc.poll() is not None:  # the crashing item took it down: replace it
                crashes += 1
                fleet.workers.remove(worker)
                fleet.retired.append(worker)
                fleet.spawn("A")
        time.sleep(0.05)
    fleet.stop()

    attempts = {
        k.decode(): int(v) for k, v in r.hgetall(attempts_key("rollout") + ":by-item").items()
    }
    assert attempts[raising] == MAX_DELIVERIES
    assert attempts[crashing] == MAX_DELIVERIES == crashes
    dead = {f[b"id"].decode(): f for _eid, f in r.xrange(DEADLETTER)}
    assert set(dead) == {raising, crashing}
    assert dead[raising][b"deliveries"] == str(MAX_DELIVERIES).encode()
    assert b"ValueError: cannot handle" in dead[raising][b"reason"]
    # The crashing item is refused at its next delivery, before any handler can run it again.
    assert dead[crashing][b"deliveries"] == str(MAX_DELIVERIES + 1).encode()
    assert b"more than max_deliveries=3" in dead[crashing][b"reason"]
    assert dead[crashing][b"payload"] == b"poison:crash"
    result = audit(r, good, final=RESULTS, stages=("A",))
    assert result.missing == [] and result.duplicates == 0 and result.unexpected == []
    assert result.pending == {"rollout": 0} and result.deadlettered == 2

    # `llamafleet status` against this Redis, as `llamafleet up --redis-url` records it.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cluster.ClusterState(run_dir=str(run_dir), redis_url=redis_url).save()
    capsys.readouterr()
    assert cli.main(["status", "--json", "--run-dir", str(run_dir)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["redis"] == "up" and status["dead_letters"] == 2
    rows = {(q["stream"], q["group"]): q for q in status["queues"]}
    assert rows[(DEADLETTER, "-")]["length"] == 2
    assert rows[(TASKS, "rollout")]["pending"] == 0 and rows[(TASKS, "rollout")]["lag"] == 0
    assert cli.main(["status", "--run-dir", str(run_dir)]) == 0
    assert "dead letters: 2" in capsys.readouterr().out
    report(
        "poison_items",
        tried=len(good) + 2,
        good_delivered=result.delivered,
        dead_lettered=2,
        attempts_raise=attempts[raising],
        attempts_crash=attempts[crashing],
        worker_crashes=crashes,
        max_deliveries=MAX_DELIVERIES,
    )
