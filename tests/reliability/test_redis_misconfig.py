"""A worker whose Redis settings are wrong stops with one clear error; a Redis that is only
restarting, read-only or busy is waited out (issue 9, gap 1).

Wrong credentials (no password, a wrong one, a rotated one, an ACL user without the stream
commands) and an endpoint that is not Redis at all cannot heal by retrying. They used to look
like a Redis that is down (redis-py files ``AuthenticationError`` under ``ConnectionError``), so
a worker retried them forever. Now:

- the worker loop (``WorkQueue.run``) raises ``RedisUnusable`` after one attempt, naming
  ``redis_url`` with the password redacted, and does not reconnect again;
- the rollout and reward workers log that one line and stop;
- ``python -m services.rollout`` / ``services.reward`` exit 1 at start-up with that line;
- while the transient faults (Redis restarted from its AOF, ``READONLY`` from a replica whose
  master is gone, ``BUSY`` from a long script) are still retried until they pass, and the loop
  only stops when the password is rotated under it.

Every Redis here is a real ``redis-server`` with ``requirepass``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import pytest
from llamafleet.redis_local import LocalRedis, free_port
from reliability_harness import start_service, stop_services, wait_serving

from services.common import queues
from services.common.queues import RedisUnusable, WorkQueue, connect, publish
from services.reward.config import RewardConfig
from services.reward.scoring import ScoringEngine
from services.reward.worker import RewardWorker
from services.rollout.worker import RolloutWorker

PASSWORD = "pw-3f81c0d7"
STREAM, GROUP, OUT = queues.ROLLOUT_TASKS, "rollout", queues.ROLLOUT_RESULTS


@pytest.fixture
def secured(tmp_path):
    server = LocalRedis(tmp_path / "redis", free_port(), password=PASSWORD).start()
    admin = connect(server.url)
    admin.execute_command(
        "ACL", "SETUSER", "reader", "on", ">reader-pw", "~llamafleet:*", "+@read", "-@write"
    )
    yield server
    server.stop()


class NotRedis:
    """A TCP server that answers like an HTTP server, and counts the connections it got."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                try:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def not_redis():
    server = NotRedis()
    yield server
    server.close()


def connections_received(server: LocalRedis) -> int:
    return int(connect(server.url).info("stats")["total_connections_received"])


class LoopThread:
    """``WorkQueue.run`` with an echo handler in a thread; keeps what it raised."""

    def __init__(self, url: str, consumer: str = "c1") -> None:
        self.queue = WorkQueue(
            connect(url, socket_timeout=2.0, socket_connect_timeout=2.0),
            STREAM,
            GROUP,
            consumer=consumer,
            lease_ms=2000,
        )
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.queue.run(lambda d: [(OUT, d.item_id, d.payload)], stop=self.stop, block_ms=200)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            self.error = exc

    def ended_with(self, timeout: float) -> BaseException | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the worker loop still runs after {timeout}s"
        return self.error


def check_message(text: str, *secrets: str) -> None:
    assert "redis_url" in text, text
    assert "\n" not in text.strip(), text
    for secret in (PASSWORD, *secrets):
        assert secret not in text, text


def bad_urls(server: LocalRedis, not_redis: NotRedis) -> dict[str, tuple[str, str]]:
    port = server.port
    return {
        "no password": (f"redis://127.0.0.1:{port}/0", "refused the credentials"),
        "wrong password": (f"redis://:wrong-{PASSWORD}@127.0.0.1:{port}/0", "refused the credentials"),
        "unknown user": (f"redis://nobody:{PASSWORD}@127.0.0.1:{port}/0", "refused the credentials"),
        "read-only ACL user": (
            f"redis://reader:reader-pw@127.0.0.1:{port}/0",
            "lacks a permission the queue needs",
        ),
        "not a Redis server": (
            f"redis://:{PASSWORD}@127.0.0.1:{not_redis.port}/0",
            "does not speak the Redis protocol",
        ),
    }  # fmt: skip


def test_worker_loop_stops_at_once_on_settings_no_retry_can_fix(secured, not_redis):
    figures = {}
    for what, (url, says) in bad_urls(secured, not_redis).items():
        before = connections_received(secured) - 1  # minus the one counting
        started = time.monotonic()
        loop = LoopThread(url)
        error = loop.ended_with(timeout=10)
        took = time.monotonic() - started
        assert isinstance(error, RedisUnusable), (what, repr(error))
        check_message(str(error), "reader-pw")
        assert says in str(error), (what, str(error))
        assert took < 5, (what, took)
        # One attempt, not a retry loop: at most 2 connections (the loop's and nothing more).
        tried = connections_received(secured) - 1 - before - 1
        if what == "not a Redis server":
            assert not_redis.connections <= 1, not_redis.connections
            assert ":***@" in str(error)
        else:
            assert tried <= 1, (what, tried)
        figures[what] = {
            "stopped_after_s": round(took, 2),
            "connections": not_redis.connections if what == "not a Redis server" else tried,
        }
    print("\nFIGURES", figures)


def wait_for(pred, timeout: float, what: str, state=None) -> None:
    """Poll ``pred``; on timeout fail naming ``what`` and, if given, what ``state()`` says."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}" + (f": {state()}" if state else "")
    )


def publish_items(server: LocalRedis, start: int, n: int) -> list[str]:
    r = connect(server.url)
    ids = [f"rel:0:{i}:0:0" for i in range(start, start + n)]
    for item_id in ids:
        assert publish(r, STREAM, item_id, item_id.encode())
    return ids


def same(outputs: list[str], sent: list[str]) -> bool:
    """Each item committed once (in any order: an item re-claimed after a fault comes later)."""
    return sorted(outputs) == sorted(sent)


def outputs(server: LocalRedis) -> list[str]:
    return [f[b"id"].decode() for _e, f in connect(server.url).xrange(OUT)]


def queue_state(server: LocalRedis, sent: list[str], loop: LoopThread):
    """What a failed wait saw: missing and doubled outputs, the group's pending entries (id,
    consumer, idle ms, deliveries), dead letters, and whether the worker loop still runs."""

    def describe() -> str:
        r = connect(server.url)
        got = outputs(server)
        pending = [
            (
                p["message_id"].decode(),
                p["consumer"].decode(),
                p["time_since_delivered"],
                p["times_delivered"],
            )
            for p in r.xpending_range(STREAM, GROUP, "-", "+", 100)
        ]
        dead = [f[b"id"].decode() for _e, f in r.xrange(queues.DEADLETTER)]
        return (
            f"missing={sorted(set(sent) - set(got))} "
            f"doubled={sorted({i for i in got if got.count(i) > 1})} pending={pending} "
            f"deadlettered={dead} groups={r.xinfo_groups(STREAM)} "
            f"loop_alive={loop.thread.is_alive()} loop_error={loop.error!r}"
        )

    return describe


def warnings_about(caplog, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_transient_faults_are_waited_out_and_a_rotated_password_stops_the_loop(secured, caplog):
    caplog.set_level(logging.WARNING, logger="services.common.queues")
    admin = lambda: connect(secured.url)  # noqa: E731 - a fresh client after each restart
    loop = LoopThread(secured.url)
    sent = publish_items(secured, 0, 5)
    wait_for(
        lambda: same(outputs(secured), sent),
        20,
        "the first 5 items",
        queue_state(secured, sent, loop),
    )

    # 1. Redis restarted (connection refused meanwhile), with the AOF.
    secured.stop()
    time.sleep(0.8)
    secured.start()
    sent += publish_items(secured, 5, 5)
    wait_for(
        lambda: same(outputs(secured), sent),
        30,
        "the items published after the restart",
        queue_state(secured, sent, loop),
    )
    assert warnings_about(caplog, "ConnectionError") >= 1

    # 2. READONLY: Redis turned into a replica of a master that is not there (keeps its data).
    admin().execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    sent_while_readonly = sent
    time.sleep(1.5)
    assert loop.thread.is_alive(), repr(loop.error)
    assert same(outputs(secured), sent_while_readonly)
    assert warnings_about(caplog, "ReadOnlyError") >= 1
    admin().execute_command("REPLICAOF", "NO", "ONE")
    sent += publish_items(secured, 10, 5)
    wait_for(
        lambda: same(outputs(secured), sent),
        30,
        "the items published after READONLY",
        queue_state(secured, sent, loop),
    )

    # 3. BUSY: a script runs past busy-reply-threshold; other clients get BUSY until it ends.
    admin().config_set("busy-reply-threshold", 100)
    pending = publish_items(secured, 15, 5)
    busy_loop = (
        "local t0 = redis.call('TIME') "
        "while (redis.call('TIME')[1] - t0[1]) * 1000000 + redis.call('TIME')[2] - t0[2]"
        " < 1500000 do end return 1"
    )
    admin().eval(busy_loop, 0)
    sent += pending
    wait_for(
        lambda: same(outputs(secured), sent),
        30,
        "the items published before BUSY",
        queue_state(secured, sent, loop),
    )
    assert loop.thread.is_alive() and loop.error is None
    assert warnings_about(caplog, "BUSY") >= 1

    # 4. The password is rotated under the running worker: it stops with one clear error.
    new_password = "rotated-" + PASSWORD[::-1]
    a = admin()
    a.config_set("requirepass", new_password)
    a.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    error = loop.ended_with(timeout=15)
    assert isinstance(error, RedisUnusable), repr(error)
    check_message(str(error), new_password)
    assert "refused the credentials" in str(error) and ":***@" in str(error)
    print(
        "\nFIGURES",
        {
            "items": len(sent),
            "committed": len(outputs_with(secured.port, new_password)),
            "connection_warnings": warnings_about(caplog, "ConnectionError"),
            "readonly_warnings": warnings_about(caplog, "ReadOnlyError"),
            "busy_warnings": warnings_about(caplog, "BUSY"),
        },
    )
    assert same(outputs_with(secured.port, new_password), sent)  # none lost or doubled


def outputs_with(port: int, password: str) -> list[str]:
    r = connect(f"redis://:{password}@127.0.0.1:{port}/0")
    return [f[b"id"].decode() for _e, f in r.xrange(OUT)]


def test_rollout_and_reward_workers_stop_with_one_error_line(secured, caplog):
    caplog.set_level(logging.ERROR)
    url = f"redis://:wrong-{PASSWORD}@127.0.0.1:{secured.port}/0"
    queue = WorkQueue(connect(url), STREAM, GROUP, consumer="rollout-1")
    rollout = RolloutWorker(queue, generator=None)  # never reached: no delivery is fetched
    rollout.start()
    engine = ScoringEngine.from_config(RewardConfig())
    reward = RewardWorker(engine, connect(url), threads=2, block_ms=100)
    try:
        # RewardWorker.start creates the group first: that raises the credentials error itself.
        with pytest.raises(RedisUnusable) as raised:
            reward.start()
        check_message(str(raised.value))
        assert "refused the credentials" in str(raised.value)
        rollout._thread.join(10)
        assert not rollout._thread.is_alive()
        assert isinstance(rollout.failure, RedisUnusable)
    finally:
        rollout.stop()
        reward.stop()
        engine.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert [m for m in errors if m.startswith("rollout worker stopped: cannot use Redis")], errors
    for message in errors:
        check_message(message)


def test_services_exit_1_at_start_up_naming_redis_url(secured, not_redis, tmp_path: Path):
    port = secured.port
    cases = {
        ("rollout", "wrong password"): (
            f"redis://:wrong-{PASSWORD}@127.0.0.1:{port}/0",
            "refused the credentials",
        ),
        ("reward", "no password"): (f"redis://127.0.0.1:{port}/0", "refused the credentials"),
        ("reward", "not Redis"): (
            f"redis://:{PASSWORD}@127.0.0.1:{not_redis.port}/0",
            "does not speak the Redis protocol",
        ),
    }
    procs = {
        key: start_service(key[0], tmp_path / f"{key[0]}-{i}", f"redis_url={url}")
        for i, (key, (url, _says)) in enumerate(cases.items())
    }
    try:
        for key, svc in procs.items():
            assert svc.proc.wait(timeout=120) == 1, (key, svc.tail())
    finally:
        stop_services(procs.values())
    for key, svc in procs.items():
        out = svc.log.read_text()
        lines = [x for x in out.splitlines() if "could not start" in x]
        assert any(f"llamafleet {key[0]}: could not start: cannot use Redis" in x for x in lines), (
            key,
            out[-2000:],
        )
        assert cases[key][1] in out and "redis_url" in out and PASSWORD not in out, key
        assert "Traceback" not in out, (key, out[-2000:])


def test_a_service_whose_worker_dies_for_good_exits_1(secured, tmp_path: Path):
    """A reward service serving with its worker; the Redis password is rotated under it. The
    worker cannot go on, so the process drains and exits 1 with one line naming redis_url (a
    supervisor restarts it, and the restart says what to fix), instead of serving on with no
    worker behind its health."""
    svc = start_service(
        "reward", tmp_path / "reward", f"redis_url={secured.url}", "worker_threads=1",
        "shutdown_delay_s=0.2", "grace_s=2",
    )  # fmt: skip
    try:
        wait_serving(svc)
        a = connect(secured.url)
        a.config_set("requirepass", "rotated-" + PASSWORD[::-1])
        a.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert svc.proc.wait(timeout=60) == 1, svc.tail()
    finally:
        stop_services([svc])
    out = svc.log.read_text()
    stopping = [x for x in out.splitlines() if "stopping the service process (exit code 1)" in x]
    assert stopping and "cannot use Redis" in stopping[0] and "redis_url" in stopping[0], out
    assert "refused the credentials" in stopping[0]
    assert PASSWORD not in out and "Traceback" not in out, out[-2000:]
