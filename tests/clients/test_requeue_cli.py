"""``llamafleet status`` lists dead letters with their reasons; ``llamafleet requeue`` replays
them onto their source streams, once, however often it is run.

Items are dead-lettered by the real ``services.common.queues.WorkQueue`` (the writer of the
dead-letter fields the client reads), on a real ``redis-server``.
"""

from __future__ import annotations

import json
import time

import pytest
from llamafleet import cli, cluster

from services.common import queues
from services.common.queues import Outcome, WorkQueue

TASKS, RESULTS = queues.ROLLOUT_TASKS, queues.ROLLOUT_RESULTS
GOOD, POISON_A, POISON_B = "job:1:0:0:0", "job:1:0:0:1", "job:1:0:0:2"


@pytest.fixture
def run_dir(tmp_path, redis_url) -> str:
    """A run dir as ``llamafleet up --redis-url`` records it (no services)."""
    folder = tmp_path / "run"
    folder.mkdir()
    cluster.ClusterState(run_dir=str(folder), redis_url=redis_url).save()
    return str(folder)


@pytest.fixture
def r(redis_url):
    client = queues.connect(redis_url)
    yield client
    client.close()


def dead_letter_two(r) -> WorkQueue:
    """GOOD is committed; POISON_A and POISON_B fail twice each and are dead-lettered."""
    for item in (GOOD, POISON_A, POISON_B):
        assert queues.publish(r, TASKS, item, f"payload of {item}".encode())
    q = WorkQueue(r, TASKS, "rollout", consumer="w1", lease_ms=1, max_deliveries=2)
    q.ensure_group()
    outcomes = []
    for _attempt in range(2):
        time.sleep(0.01)  # past the 1 ms lease, so the second fetch re-claims the failed two
        for d in q.fetch(count=10):
            if d.item_id == GOOD:
                outcomes.append(q.commit(d, [(RESULTS, d.item_id, b"done")]))
            else:
                reason = f"NotFound: adapter policy@7 is not in the store ({d.item_id})"
                outcomes.append(q.fail(d, reason))
    assert outcomes.count(Outcome.DEADLETTERED) == 2, outcomes
    assert r.xlen(queues.DEADLETTER) == 2
    return q


def status_json(run_dir: str, capsys, *extra: str) -> dict:
    capsys.readouterr()
    assert cli.main(["status", "--json", "--run-dir", run_dir, *extra]) == 0
    return json.loads(capsys.readouterr().out)


def requeue(run_dir: str, capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["requeue", "--run-dir", run_dir, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_status_shows_the_latest_dead_letters_with_their_reasons(r, run_dir, capsys):
    dead_letter_two(r)
    report = status_json(run_dir, capsys)
    assert report["dead_letters"] == 2
    entries = report["dead_letter_entries"]
    assert [e["item_id"] for e in entries] == [POISON_B, POISON_A]  # newest first
    newest = entries[0]
    assert newest["stream"] == TASKS and newest["group"] == "rollout"
    assert newest["deliveries"] == 2
    assert newest["reason"] == f"NotFound: adapter policy@7 is not in the store ({POISON_B})"
    assert newest["payload_bytes"] == len(f"payload of {POISON_B}")
    assert newest["entry_id"] == r.xrevrange(queues.DEADLETTER, count=1)[0][0].decode()

    limited = status_json(run_dir, capsys, "--dead-letters", "1")
    assert limited["dead_letters"] == 2 and len(limited["dead_letter_entries"]) == 1
    assert status_json(run_dir, capsys, "--dead-letters", "0")["dead_letter_entries"] == []

    capsys.readouterr()
    assert cli.main(["status", "--run-dir", run_dir]) == 0  # the table form
    out = capsys.readouterr().out
    assert "dead letters: 2" in out and POISON_A in out and POISON_B in out
    assert "adapter policy@7" in out and "llamafleet requeue" in out


def test_requeue_replays_an_item_once_and_the_worker_then_commits_it(r, run_dir, capsys):
    q = dead_letter_two(r)
    tasks_before = r.xlen(TASKS)

    code, out, err = requeue(run_dir, capsys, POISON_A)
    assert (code, err) == (0, ""), err
    assert f"requeued {POISON_A} onto {TASKS}" in out
    assert r.xlen(TASKS) == tasks_before + 1
    _eid, fields = r.xrevrange(TASKS, count=1)[0]
    assert fields == {b"id": POISON_A.encode(), b"payload": f"payload of {POISON_A}".encode()}
    remaining = [f[b"id"].decode() for _e, f in r.xrange(queues.DEADLETTER)]
    assert remaining == [POISON_B]

    # Idempotent: the same command again adds nothing and says so.
    code, out, _ = requeue(run_dir, capsys, POISON_A)
    assert code == 0 and "nothing to do" in out
    assert r.xlen(TASKS) == tasks_before + 1

    # The cause is fixed: the worker gets it as a fresh delivery and commits it once.
    (delivery,) = q.fetch(count=10)
    assert (delivery.item_id, delivery.times_delivered) == (POISON_A, 1)
    assert q.commit(delivery, [(RESULTS, POISON_A, b"done")]) is Outcome.COMMITTED
    assert [f[b"id"].decode() for _e, f in r.xrange(RESULTS)] == [GOOD, POISON_A]
    assert queues.backlog(r, TASKS, "rollout") == 0

    # By dead-letter entry id, as `status` lists it; then --all finds nothing left.
    entry = status_json(run_dir, capsys)["dead_letter_entries"][0]["entry_id"]
    code, out, _ = requeue(run_dir, capsys, "--json", entry)
    assert code == 0
    assert json.loads(out) == [
        {
            "item_id": POISON_B,
            "stream": TASKS,
            "new_entry": r.xrevrange(TASKS, count=1)[0][0].decode(),
            "dead_letter_entries": [entry],
        }
    ]
    assert r.xlen(queues.DEADLETTER) == 0
    code, out, _ = requeue(run_dir, capsys, "--all")
    assert code == 0 and "no dead letters" in out
    assert r.xlen(TASKS) == tasks_before + 2


def test_an_item_already_committed_is_not_redone_after_a_requeue(r, run_dir, capsys):
    """A duplicate entry of a committed item that was dead-lettered: requeued, acked as a
    duplicate, nothing published twice."""
    dead_letter_two(r)
    # GOOD's payload dead-lettered by hand, as a second entry of it would have been.
    r.xadd(
        queues.DEADLETTER,
        {"id": GOOD, "payload": b"payload", "stream": TASKS, "group": "rollout", "reason": "x"},
    )
    assert requeue(run_dir, capsys, GOOD)[0] == 0
    q = WorkQueue(r, TASKS, "rollout", consumer="w2", lease_ms=1000, max_deliveries=2)
    (delivery,) = q.fetch(count=10)
    assert q.commit(delivery, [(RESULTS, GOOD, b"again")]) is Outcome.DUPLICATE
    assert [f[b"id"].decode() for _e, f in r.xrange(RESULTS)] == [GOOD]


def test_requeue_refuses_what_it_cannot_replay_with_one_line(r, run_dir, capsys):
    r.xadd(queues.DEADLETTER, {"id": "poison", "reason": "test"})  # no payload, no stream
    code, _out, err = requeue(run_dir, capsys, "poison")
    assert code == 2
    assert err.count("\n") == 1 and "cannot be requeued" in err and "XRANGE" in err
    code, _out, err = requeue(run_dir, capsys)
    assert code == 2 and "--all" in err
    assert r.xlen(queues.DEADLETTER) == 1
