"""The Redis Streams work queue against a real redis-server: kills, poison items, duplicates,
lost leases, trimming and backpressure. Leases are short (a few hundred ms) to keep this fast."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from services.common import queues
from services.common.queues import (
    DEADLETTER,
    Delivery,
    Outcome,
    WorkQueue,
    backlog,
    connect,
    has_capacity,
    publish,
    stats,
    trim,
)

REPO = Path(__file__).resolve().parents[2]
IN = queues.ROLLOUT_TASKS
OUT = queues.ROLLOUT_RESULTS
GROUP = "rollout"


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    client = connect(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    yield client
    client.close()


def wait_for(pred: Callable[[], object], timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def ids_in(r: redis.Redis, stream: str) -> list[str]:
    return [fields[b"id"].decode() for _eid, fields in r.xrange(stream)]


def pending(r: redis.Redis, stream: str = IN, group: str = GROUP) -> int:
    return r.xpending(stream, group)["pending"]


def queue(r: redis.Redis, consumer: str, **kw) -> WorkQueue:
    kw.setdefault("lease_ms", 300)
    q = WorkQueue(r, IN, GROUP, consumer=consumer, **kw)
    q.ensure_group()
    return q


def fetch_until(q: WorkQueue, timeout: float = 5.0) -> list[Delivery]:
    return wait_for(lambda: q.fetch(10, block_ms=50), timeout, f"a delivery to {q.consumer}")


# -- connection ---------------------------------------------------------------------------------


def test_connect_pins_resp2_and_disables_silent_retries(r):
    kwargs = r.get_connection_kwargs()
    assert kwargs["protocol"] == 2
    assert kwargs["socket_timeout"] == 2.0 and kwargs["socket_connect_timeout"] == 2.0
    # Pinned explicitly: redis.Redis(host=...) defaults to 10 retries; from_url happens not to.
    assert kwargs["retry"].get_retries() == 0
    conn = r.connection_pool.get_connection()
    try:
        assert conn.retry.get_retries() == 0
    finally:
        r.connection_pool.release(conn)
    assert r.ping() is True
    r.xadd("s", {"id": "a", "payload": b"p"})
    r.xgroup_create("s", "g", id="0")
    cursor, claimed, deleted = r.execute_command("XAUTOCLAIM", "s", "g", "c", 0, "0-0")
    assert (cursor, claimed, deleted) == (b"0-0", [], [])  # 3 elements on Redis 7


def test_stalled_redis_adds_one_entry_and_a_caller_retry_adds_none(local_redis):
    """A command that times out is not repeated behind the caller's back (the notes saw two
    entries from one XADD with redis-py's default retry); the caller's own retry dedupes."""
    producer = connect(local_redis.url, socket_timeout=0.3)
    assert publish(producer, IN, "warm-up", b"") is True  # connected, script loaded
    raw = connect(local_redis.url, socket_timeout=0.3)
    assert raw.ping()  # connected: the command below goes out on this socket
    pid = local_redis.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(redis.exceptions.TimeoutError):
            publish(producer, IN, "job:1:0:0:0", b"task")
        with pytest.raises(redis.exceptions.TimeoutError):
            raw.xadd("raw", {"id": "raw-1", "payload": b""})
        assert time.monotonic() - started < 1.5  # one try each, no backoff loop
        time.sleep(0.5)  # a silent retry would be queued in the stopped server by now
    finally:
        os.kill(pid, signal.SIGCONT)
    r = connect(local_redis.url)
    wait_for(lambda: r.xlen(IN) == 2 and r.xlen("raw") == 1, 5, "the stalled writes to land")
    time.sleep(0.2)
    assert r.xlen("raw") == 1  # the timed-out XADD did run, once
    assert publish(r, IN, "job:1:0:0:0", b"task") is False  # the caller's retry
    assert ids_in(r, IN) == ["warm-up", "job:1:0:0:0"]


def test_stream_names_match_the_design():
    """The table in DESIGN.md section 2 (other services and the Go client use these names)."""
    assert queues.ROLLOUT_TASKS == "llamafleet:rollout:tasks"
    assert queues.ROLLOUT_RESULTS == "llamafleet:rollout:results"
    assert queues.reward_results_stream("job7") == "llamafleet:reward:results:job7"
    assert queues.DEADLETTER == "llamafleet:deadletter"


@pytest.mark.parametrize(
    ("base", "default_base", "suffix"),
    [
        ("", "", ""),  # no base model
        ("tiny", "", ""),  # a one-base cluster: the single-base names, whatever the base
        ("tiny", "tiny", ""),  # the default base of a cluster with several
        ("other", "tiny", ":other"),  # any other base: its own streams
    ],
)
def test_per_base_streams_keep_the_single_base_names_for_the_default_base(
    base, default_base, suffix
):
    assert queues.rollout_tasks_stream(base, default_base) == queues.ROLLOUT_TASKS + suffix
    assert queues.rollout_results_stream(base, default_base) == queues.ROLLOUT_RESULTS + suffix


# -- 1. a consumer SIGKILLed mid-item -----------------------------------------------------------


def test_killed_consumer_item_is_redelivered_and_committed_once(r, redis_url):
    lease_ms = 400
    publish(r, IN, "job:0:1:0:0", b"prompt")
    queue(r, "survivor", lease_ms=lease_ms)  # creates the group
    marker = "test:worker-has-item"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("queue_worker_proc.py")),
            redis_url,
            IN,
            GROUP,
            "doomed",
            str(lease_ms),
            OUT,
            marker,
        ],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "clients/python")]),
        },
    )
    try:
        assert wait_for(lambda: r.get(marker), 15, "the worker to take the item") == b"job:0:1:0:0"
        survivor = queue(r, "survivor", lease_ms=lease_ms)
        # While the worker lives its lease keeper renews: nobody can claim it, though the
        # handler has run for longer than the lease.
        deadline = time.monotonic() + 3 * lease_ms / 1000
        while time.monotonic() < deadline:
            assert survivor.fetch(10, block_ms=50) == []
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    [delivery] = fetch_until(survivor)
    assert (delivery.item_id, delivery.payload, delivery.times_delivered) == (
        "job:0:1:0:0",
        b"prompt",
        2,
    )
    assert survivor.commit(delivery, [(OUT, "job:0:1:0:0:out", b"done")]) is Outcome.COMMITTED
    assert ids_in(r, OUT) == ["job:0:1:0:0:out"]
    assert r.xrange(OUT)[0][1][b"payload"] == b"done"
    assert pending(r) == 0
    assert survivor.fetch(10, block_ms=50) == []


# -- 2. poison items ----------------------------------------------------------------------------


def test_poison_item_is_attempted_max_deliveries_times_then_dead_lettered(r, caplog):
    publish(r, IN, "job:0:2:0:0", b"poison")
    q = queue(r, "w1", lease_ms=150, max_deliveries=3)
    attempts: list[int] = []

    def handler(delivery: Delivery):
        attempts.append(delivery.times_delivered)
        raise RuntimeError("cannot score this")

    stop = threading.Event()
    worker = threading.Thread(target=q.run, args=(handler,), kwargs={"stop": stop, "block_ms": 50})
    with caplog.at_level(logging.WARNING, logger=queues.__name__):
        worker.start()
        try:
            wait_for(lambda: r.xlen(DEADLETTER), 10, "the dead letter")
            time.sleep(0.6)  # a fourth attempt would come after another lease
        finally:
            stop.set()
            worker.join(10)
    assert attempts == [1, 2, 3]
    [(_eid, dead)] = r.xrange(DEADLETTER)
    assert dead[b"id"] == b"job:0:2:0:0" and dead[b"payload"] == b"poison"
    assert dead[b"stream"] == IN.encode() and dead[b"group"] == GROUP.encode()
    assert dead[b"deliveries"] == b"3"
    assert b"RuntimeError: cannot score this" in dead[b"reason"]
    assert pending(r) == 0 and r.xlen(OUT) == 0
    assert "handler failed on job:0:2:0:0" in caplog.text
    assert "dead-lettered job:0:2:0:0" in caplog.text


def test_item_whose_workers_keep_dying_is_dead_lettered_on_fetch(r):
    publish(r, IN, "job:0:3:0:0", b"crashes-workers")
    q = queue(r, "w", lease_ms=100, max_deliveries=2)
    assert [d.times_delivered for d in q.fetch(1)] == [1]  # worker "dies": never commits
    time.sleep(0.15)
    assert [d.times_delivered for d in q.fetch(1)] == [2]
    time.sleep(0.15)
    assert q.fetch(1) == []  # third delivery exceeds max_deliveries: not handed out
    [(_eid, dead)] = r.xrange(DEADLETTER)
    assert dead[b"id"] == b"job:0:3:0:0" and dead[b"deliveries"] == b"3"
    assert pending(r) == 0


def test_malformed_entry_is_dead_lettered(r):
    q = queue(r, "w")
    r.xadd(IN, {"junk": b"1"})
    assert q.fetch(1) == []
    [(_eid, dead)] = r.xrange(DEADLETTER)
    assert b"malformed" in dead[b"reason"]
    assert pending(r) == 0


# -- 3. duplicates from producer retries --------------------------------------------------------


def test_duplicate_publishes_and_duplicate_entries_give_one_result(r):
    assert publish(r, IN, "job:0:4:0:0", b"task") is True
    assert publish(r, IN, "job:0:4:0:0", b"task") is False  # a producer retry
    assert r.xlen(IN) == 1
    r.xadd(IN, {"id": "job:0:4:0:0", "payload": b"task"})  # a duplicate a retried write left
    q = queue(r, "w")
    calls = []

    def handle(delivery: Delivery):
        calls.append(delivery.item_id)
        # The output id deliberately varies per attempt so the done mark alone must dedupe.
        return [(OUT, f"{delivery.item_id}:attempt{len(calls)}", b"result")]

    outcomes = [q.commit(d, handle(d)) for d in q.fetch(10)]
    assert calls == ["job:0:4:0:0", "job:0:4:0:0"]  # at-least-once: the handler saw both
    assert outcomes == [Outcome.COMMITTED, Outcome.DUPLICATE]
    assert ids_in(r, OUT) == ["job:0:4:0:0:attempt1"]
    assert pending(r) == 0


def test_publish_many_adds_each_new_item_once_and_wakes_a_reader_to_all(r, monkeypatch):
    """One script per chunk: a consumer blocked on the stream gets every item of it at once (a
    rollout worker batches a step's tasks together); repeats and already published ids add
    nothing; chunks past PUBLISH_CHUNK are published too."""
    q = queue(r, "w", lease_ms=60_000)
    got: list[list[Delivery]] = []
    reader = threading.Thread(target=lambda: got.append(q.fetch(100, block_ms=1500)))
    reader.start()
    time.sleep(0.3)  # the reader is blocked on the empty stream
    publish(r, IN, "job:1:0:1:0", b"old")
    reader.join(10)
    assert [d.item_id for d in got[0]] == ["job:1:0:1:0"]
    got.clear()
    reader = threading.Thread(target=lambda: got.append(q.fetch(100, block_ms=1500)))
    reader.start()
    time.sleep(0.3)
    items = [(f"job:1:0:{i}:0", f"p{i}".encode()) for i in range(8)]
    assert queues.publish_many(r, IN, items) == 7  # prompt 1's was published before
    reader.join(10)
    assert [d.item_id for d in got[0]] == [i for i, _ in items if i != "job:1:0:1:0"]
    assert [d.payload for d in got[0]][:2] == [b"p0", b"p2"]
    assert queues.publish_many(r, IN, items) == 0  # a producer retry
    assert queues.publish_many(r, IN, []) == 0
    monkeypatch.setattr(queues, "PUBLISH_CHUNK", 3)
    more = [(f"job:2:0:{i}:0", b"") for i in range(7)]
    assert queues.publish_many(r, IN, more + items[:1]) == 7
    assert ids_in(r, IN)[-7:] == [i for i, _ in more]


def test_commit_outputs_are_deduplicated_like_publish(r):
    """Two inputs that produce the same output id publish it once (the published mark)."""
    publish(r, IN, "a", b"")
    publish(r, IN, "b", b"")
    q = queue(r, "w")
    assert [q.commit(d, [(OUT, "same", b"x")]) for d in q.fetch(10)] == [Outcome.COMMITTED] * 2
    assert ids_in(r, OUT) == ["same"]
    assert publish(r, OUT, "same", b"x") is False


# -- 5. lost leases and renewal -----------------------------------------------------------------


def test_late_commit_after_losing_the_lease_writes_nothing(r):
    publish(r, IN, "job:0:5:0:0", b"task")
    a, b = queue(r, "a", lease_ms=150), queue(r, "b", lease_ms=150)
    [da] = a.fetch(1)
    time.sleep(0.25)  # a is stopped (SIGSTOP, GC pause...) past its lease
    [db] = b.fetch(1)
    assert db.times_delivered == 2
    assert a.renew(da) is False  # renewing must not steal it back
    assert a.commit(da, [(OUT, "job:0:5:0:0:out", b"from-a")]) is Outcome.LOST
    assert a.fail(Delivery(da.entry_id, da.item_id, da.payload, 99), "x") is Outcome.LOST
    assert r.xlen(OUT) == 0 and r.xlen(DEADLETTER) == 0
    assert r.xpending_range(IN, GROUP, "-", "+", 10)[0]["consumer"] == b"b"
    assert b.commit(db, [(OUT, "job:0:5:0:0:out", b"from-b")]) is Outcome.COMMITTED
    assert a.commit(da, [(OUT, "job:0:5:0:0:out", b"from-a")]) is Outcome.LOST
    assert [f[b"payload"] for _e, f in r.xrange(OUT)] == [b"from-b"]
    assert pending(r) == 0


def test_a_released_delivery_is_taken_by_another_consumer_at_once(r):
    publish(r, IN, "job:0:6:0:0", b"task")
    a, b = queue(r, "a", lease_ms=60_000), queue(r, "b", lease_ms=60_000)
    [da] = a.fetch(1)
    assert b.release(da) is False  # only the owner can hand it back
    assert a.release(da) is True  # a is stopping and had not started it
    [db] = b.fetch(1)  # no lease to wait out
    assert (db.entry_id, db.times_delivered) == (da.entry_id, 1)  # a's delivery not counted
    assert a.commit(da, [(OUT, "x", b"from-a")]) is Outcome.LOST
    assert b.commit(db, [(OUT, "x", b"from-b")]) is Outcome.COMMITTED
    assert pending(r) == 0


def test_a_stopping_worker_finishes_the_item_in_hand_and_releases_the_rest(r):
    for i in range(3):
        publish(r, IN, f"job:0:7:0:{i}", b"task")
    a = queue(r, "a", lease_ms=60_000)
    stop = threading.Event()
    handled = []

    def handler(d: Delivery):
        handled.append(d.item_id)
        stop.set()  # the stop arrives while the first of the batch of 3 is in hand
        return [(OUT, d.item_id + ":out", b"")]

    a.run(handler, stop=stop, count=3, block_ms=100)
    assert handled == ["job:0:7:0:0"] and ids_in(r, OUT) == ["job:0:7:0:0:out"]
    b = queue(r, "b", lease_ms=60_000)
    taken = b.fetch(3)
    assert sorted(d.item_id for d in taken) == ["job:0:7:0:1", "job:0:7:0:2"]
    assert {d.times_delivered for d in taken} == {1}


def test_lease_keeper_keeps_a_long_item_from_being_claimed(r):
    publish(r, IN, "job:0:6:0:0", b"long")
    a, b = queue(r, "a", lease_ms=200), queue(r, "b", lease_ms=200)
    [da] = a.fetch(1)
    with a.lease_keeper(da) as lost:
        deadline = time.monotonic() + 0.8  # four leases of "work"
        while time.monotonic() < deadline:
            assert b.fetch(1) == []
            time.sleep(0.05)
    assert not lost.is_set()
    [entry] = r.xpending_range(IN, GROUP, "-", "+", 10)
    assert entry["consumer"] == b"a" and entry["times_delivered"] == 1  # renew kept the count
    assert a.commit(da, [(OUT, "o", b"")]) is Outcome.COMMITTED


def test_lease_keeper_reports_a_lost_lease(r):
    publish(r, IN, "job:0:7:0:0", b"")
    a, b = queue(r, "a", lease_ms=100), queue(r, "b", lease_ms=100)
    [da] = a.fetch(1)
    time.sleep(0.15)
    [_db] = b.fetch(1)
    with a.lease_keeper(da, interval_s=0.02) as lost:
        assert lost.wait(2)


def test_deleted_pending_entries_are_skipped_by_the_claim(r):
    publish(r, IN, "x", b"")
    publish(r, IN, "y", b"")
    a, b = queue(r, "a", lease_ms=100), queue(r, "b", lease_ms=100)
    dx, _dy = a.fetch(2)
    r.xdel(IN, dx.entry_id)
    time.sleep(0.15)
    assert [d.item_id for d in b.fetch(10)] == ["y"]
    assert pending(r) == 1


def test_fetch_refuses_a_block_longer_than_the_socket_timeout(r):
    with pytest.raises(ValueError, match="socket_timeout"):
        queue(r, "w").fetch(1, block_ms=2000)


# -- the worker loop survives Redis going away --------------------------------------------------


def test_run_logs_and_recovers_when_redis_restarts(local_redis, caplog):
    r = connect(local_redis.url, socket_timeout=1.0, socket_connect_timeout=0.5)
    q = WorkQueue(r, IN, GROUP, consumer="w", lease_ms=300)
    stop = threading.Event()
    worker = threading.Thread(
        target=q.run,
        args=(lambda d: [(OUT, d.item_id + ":out", d.payload)],),
        kwargs={"stop": stop, "block_ms": 100},
    )
    with caplog.at_level(logging.WARNING, logger=queues.__name__):
        worker.start()
        try:
            publish(r, IN, "before", b"1")
            wait_for(lambda: r.xlen(OUT) == 1, 5, "the first result")
            time.sleep(1.2)  # let appendfsync everysec flush, as in production
            local_redis.kill()
            wait_for(lambda: "redis unavailable" in caplog.text, 5, "the warning")
            local_redis.restart()
            publish(r, IN, "after", b"2")
            wait_for(lambda: r.xlen(OUT) == 2, 10, "the second result")
        finally:
            stop.set()
            worker.join(10)
    assert ids_in(r, OUT) == ["before:out", "after:out"]
    assert pending(r) == 0


def test_a_busy_reply_inside_a_pipeline_is_transient(r, redis_url):
    """redis-py prefixes an error from a pipeline with the command that got it; BUSY must still
    read as "wait" (it once ended a worker loop as an unusable Redis: the fetch pipeline of
    XPENDING calls met a long script)."""
    r.config_set("busy-reply-threshold", 50)
    script = (
        "local t0 = redis.call('TIME') "
        "while (redis.call('TIME')[1] - t0[1]) * 1000000 + redis.call('TIME')[2] - t0[2]"
        " < 600000 do end return 1"
    )
    busy = threading.Thread(target=lambda: connect(redis_url).eval(script, 0))
    busy.start()
    try:
        time.sleep(0.2)
        pipe = r.pipeline(transaction=False)
        pipe.xpending_range(IN, GROUP, min="-", max="+", count=1)
        with pytest.raises(redis.ResponseError) as raised:
            pipe.execute()
    finally:
        busy.join(10)
        r.config_set("busy-reply-threshold", 5000)
    assert "of pipeline caused error: BUSY" in str(raised.value)
    assert queues.is_transient(raised.value)
    assert not queues.is_transient(
        redis.ResponseError("Command # 1 (GET x) of pipeline caused error: WRONGTYPE")
    )


# -- 4. trimming --------------------------------------------------------------------------------


def test_trim_keeps_pending_and_undelivered_entries_of_every_group(r):
    entry = {}
    for k in range(6):
        publish(r, IN, f"e{k}", b"")
    for eid, fields in r.xrange(IN):
        entry[fields[b"id"].decode()] = eid
    assert trim(r, IN) == 0 and r.xlen(IN) == 6  # no groups: nothing is known to be done
    g1 = WorkQueue(r, IN, "g1", consumer="c", lease_ms=60_000)
    g2 = WorkQueue(r, IN, "g2", consumer="c", lease_ms=60_000)
    g1.ensure_group()
    g2.ensure_group()

    d1 = g1.fetch(4)  # e0..e3 delivered to g1
    for d in d1[:2]:
        g1.commit(d, [])  # e0, e1 acked; e2, e3 pending; e4, e5 undelivered
    [d2] = g2.fetch(1)
    g2.commit(d2, [])  # g2 acked e0; e1 was never delivered to g2
    assert trim(r, IN) == 1
    assert ids_in(r, IN) == ["e1", "e2", "e3", "e4", "e5"]  # e1: g1 acked it, g2 still needs it

    for d in g2.fetch(3):
        g2.commit(d, [])  # g2 done with e1..e3
    assert trim(r, IN) == 1
    assert ids_in(r, IN) == ["e2", "e3", "e4", "e5"]  # e2, e3 are pending in g1
    assert pending(r, IN, "g1") == 2
    r.xclaim(IN, "g1", "c", 0, [entry["e2"]])  # the pending entries are still readable
    for d in d1[2:]:
        assert g1.commit(d, [(OUT, d.item_id, b"")]) is Outcome.COMMITTED
    assert trim(r, IN) == 2
    assert ids_in(r, IN) == ["e4", "e5"]  # undelivered to both groups
    assert [d.item_id for d in g1.fetch(2)] == ["e4", "e5"]


def test_trim_of_a_missing_stream_is_a_no_op(r):
    assert trim(r, "nothing-here") == 0


# -- 6. backpressure ----------------------------------------------------------------------------


def test_backlog_is_lag_plus_pending(r):
    for k in range(5):
        publish(r, IN, f"b{k}", b"")
    q = queue(r, "w")
    assert backlog(r, IN, GROUP) == 5  # lag 5
    d = q.fetch(2)
    assert backlog(r, IN, GROUP) == 5  # lag 3 + pending 2
    q.commit(d[0], [])
    assert backlog(r, IN, GROUP) == 4  # lag 3 + pending 1
    assert has_capacity(r, IN, GROUP, 5) is True
    assert has_capacity(r, IN, GROUP, 4) is False
    # Deleting an undelivered entry leaves Redis 7 unable to report lag: the fallback counts.
    undelivered = r.xrange(IN)[-1][0]
    r.xdel(IN, undelivered)
    assert r.xinfo_groups(IN)[0]["lag"] is None
    assert backlog(r, IN, GROUP) == 3  # 2 undelivered + 1 pending
    with pytest.raises(ValueError, match="no consumer group"):
        backlog(r, IN, "nobody")


def test_stats_reports_groups_and_dead_letters(r):
    for k in range(3):
        publish(r, IN, f"s{k}", b"")
    q = queue(r, "w", max_deliveries=1)
    d = q.fetch(2)
    q.fail(d[0], "bad")  # dead-lettered at once with max_deliveries=1
    WorkQueue(r, IN, "audit", consumer="x").ensure_group()
    s = stats(r, IN)
    assert (s.stream, s.length, s.deadletter) == (IN, 3, 1)
    by_name = {g.name: g for g in s.groups}
    assert (by_name[GROUP].consumers, by_name[GROUP].pending, by_name[GROUP].lag) == (1, 1, 1)
    assert (by_name["audit"].consumers, by_name["audit"].pending, by_name["audit"].lag) == (0, 0, 3)
    assert stats(r, "empty").groups == []


# -- 7. no length-capped trimming anywhere ------------------------------------------------------


def test_no_length_capped_trimming_in_services():
    """Trimming by entry count deletes pending work on Redis 7.0; only MINID trimming is
    allowed (DESIGN.md section 2). The word must not appear in any service code."""
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for path in sorted((REPO / "services").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search("maxlen", line, re.IGNORECASE)
    ]
    assert offenders == []


def test_commit_many_and_one_lease_keeper_for_many_deliveries(r):
    """Many deliveries: one keeper thread renews all of them in one pipelined round per period
    (none is re-claimed past five lease periods), reports the one another consumer took, and
    ``commit_many`` commits each atomically in one round trip: committed and lost outcomes side
    by side (one taken by another consumer, one already committed and acked), nothing written
    twice."""
    for i in range(6):
        publish(r, IN, f"job:0:6:{i}:0", f"task{i}".encode())
    a, b = queue(r, "a", lease_ms=200), queue(r, "b", lease_ms=200)
    held = a.fetch(6)
    assert len(held) == 6
    lost: list[str] = []
    threads_before = threading.active_count()
    with queues.LeaseKeeper(a, lambda: held[:5], lambda d: lost.append(d.item_id)) as keeper:
        assert threading.active_count() == threads_before + 1  # one thread, not one per item
        time.sleep(1.0)
        assert b.fetch(6) and lost == []  # b re-claimed only the one not kept (held[5])
        time.sleep(0.3)
        held_by_b = r.xpending_range(IN, GROUP, "-", "+", 10)
        assert [p["consumer"] for p in held_by_b].count(b"b") == 1
        # now b steals a kept one: the keeper reports it
        r.xclaim(IN, GROUP, "b", 0, [held[0].entry_id])
        wait_for(lambda: lost, 2.0, "the lost lease")
    assert keeper.rounds >= 4 and lost == [held[0].item_id]
    a.commit(held[1], [(OUT, "job:0:6:1:0", b"first")])  # then committed again below
    outcomes = a.commit_many(
        [(d, [(OUT, d.item_id, f"out{k}".encode())]) for k, d in enumerate(held[:4])]
    )
    assert outcomes == [Outcome.LOST, Outcome.LOST, Outcome.COMMITTED, Outcome.COMMITTED]
    assert sorted(f[b"id"].decode() for _e, f in r.xrange(OUT)) == [
        "job:0:6:1:0", "job:0:6:2:0", "job:0:6:3:0",
    ]  # fmt: skip
