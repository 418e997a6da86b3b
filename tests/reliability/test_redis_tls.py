"""The work queue over TLS: ``rediss://`` to a ``redis-server`` that listens only on a TLS port,
wants a client certificate from its CA, and a password (certificates from ``tls_certs``).

The queue API works through ``connect(url)``; every wrong setting fails with an error that
names ``redis_url`` (password redacted): a plaintext URL (the server just closes the
connection: :class:`Unavailable` at start-up, as an outage looks), no client certificate or one
from another CA (either, by timing), and no CA (a refused certificate), a wrong password, TLS
options on a ``redis://`` URL or a TLS file that is not there (:class:`RedisUnusable`: a worker
loop stops at once instead of retrying).
"""

from __future__ import annotations

import pytest
import redis
from llamafleet.redis_local import LocalRedis, RedisTls, free_port
from reliability_harness import report, start_service, stop_service
from tls_certs import make_certs

from services.common.errors import Unavailable
from services.common.queues import (
    Outcome,
    RedisUnusable,
    WorkQueue,
    connect,
    describe_client,
    publish,
    require_redis,
    stats,
)

PASSWORD = "pw-tls-81c4e2"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("redis-certs"))


@pytest.fixture
def tls_redis(tmp_path, certs):
    tls = RedisTls(
        certs["server.pem"],
        certs["server.key"],
        certs["ca.pem"],
        client_cert=certs["client.pem"],
        client_key=certs["client.key"],
    )
    server = LocalRedis(tmp_path / "redis", free_port(), password=PASSWORD, tls=tls).start()
    yield server
    server.stop()


def test_the_queue_works_over_tls_with_a_client_certificate(tls_redis):
    url = tls_redis.url
    assert url.startswith("rediss://:") and "ssl_certfile=" in url
    require_redis(url, timeout_s=5)
    r = connect(url)
    assert describe_client(r) == f"rediss://:***@127.0.0.1:{tls_redis.port}/0"
    tasks, results = "llamafleet:rollout:tasks", "llamafleet:rollout:results"
    assert publish(r, tasks, "j:0:0:0:0", b"a") and publish(r, tasks, "j:0:0:0:1", b"b")
    assert not publish(r, tasks, "j:0:0:0:0", b"a")  # the de-duplicating script runs over TLS
    q = WorkQueue(r, tasks, "rollout", consumer="c", lease_ms=5000)
    q.ensure_group()
    first, second = q.fetch(2, block_ms=100)
    assert q.commit(first, [(results, first.item_id, b"done")]) is Outcome.COMMITTED
    assert q.commit(second, []) is Outcome.COMMITTED
    assert stats(r, tasks).groups[0].pending == 0 and r.xlen(results) == 1
    # No plaintext port is left open next to the TLS one.
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=tls_redis.port, password=PASSWORD, socket_timeout=2).ping()


def test_wrong_tls_settings_fail_clearly_and_never_print_the_password(tls_redis, certs):
    port = tls_redis.port
    ca, cert, key = certs["ca.pem"], certs["client.pem"], certs["client.key"]
    base = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0"
    unavailable = {  # the server just closes or resets: as a restart looks, Unavailable
        "plaintext URL to the TLS port": (f"redis://:{PASSWORD}@127.0.0.1:{port}/0", ""),
    }
    for label, (url, detail) in unavailable.items():
        with pytest.raises(Unavailable) as err:
            require_redis(url, timeout_s=5)
        text = str(err.value)
        assert "cannot reach Redis at redis" in text and "redis_url" in text, (label, text)
        assert PASSWORD not in text and ":***@" in text and detail in text, (label, text)

    # No client certificate, or one from another CA: the server either sends its alert
    # (certificate_required, unknown_ca: a refused certificate, RedisUnusable) or has closed the
    # connection before the client reads it (EOF, as an outage looks: Unavailable), by timing.
    either = {
        "no client certificate": f"{base}?ssl_ca_certs={ca}",
        "client certificate from another CA": (
            f"{base}?ssl_ca_certs={ca}&ssl_certfile={certs['rogue.pem']}"
            f"&ssl_keyfile={certs['rogue.key']}"
        ),
    }
    for label, url in either.items():
        with pytest.raises((Unavailable, RedisUnusable)) as err:
            require_redis(url, timeout_s=5)
        text = str(err.value)
        assert "redis_url" in text and PASSWORD not in text and ":***@" in text, (label, text)

    good_tls = f"ssl_ca_certs={ca}&ssl_certfile={cert}&ssl_keyfile={key}"
    unusable = {  # no retry can fix these: RedisUnusable, what to change
        "wrong password": (
            f"rediss://:not-it@127.0.0.1:{port}/0?{good_tls}",
            "Redis refused the credentials",
        ),
        "ssl options on redis://": (
            f"redis://:{PASSWORD}@127.0.0.1:{port}/0?{good_tls}",
            "start the URL with rediss://",
        ),
        "missing CA file": (
            f"{base}?ssl_ca_certs={ca}.missing&ssl_certfile={cert}&ssl_keyfile={key}",
            f"ssl_ca_certs={ca}.missing does not exist",
        ),
        # a certificate check that failed: a setting to fix, not an outage to wait out
        "no CA": (
            f"{base}?ssl_certfile={cert}&ssl_keyfile={key}",
            "a TLS certificate was refused; give redis_url the CA",
        ),
    }
    for label, (url, detail) in unusable.items():
        with pytest.raises(RedisUnusable) as err:
            require_redis(url, timeout_s=5)
        text = str(err.value)
        assert "cannot use Redis at rediss://" in text or "cannot use Redis at redis://" in text
        assert "(setting redis_url)" in text and detail in text, (label, text)
        assert PASSWORD not in text, (label, text)
    report(
        "redis_tls", misconfigured=len(unavailable) + len(unusable) + len(either), refused_all=True
    )


@pytest.mark.slow  # a service process: ~5-15 s
def test_a_service_given_a_tls_url_without_the_ca_exits_with_one_line(tls_redis, certs, tmp_path):
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis.port}/0?ssl_certfile={certs['client.pem']}"
    url += f"&ssl_keyfile={certs['client.key']}"
    svc = start_service("reward", tmp_path / "reward", f"redis_url={url}")
    try:
        assert svc.proc.wait(timeout=90) == 1
    finally:
        stop_service(svc)
    out = svc.log.read_text()
    assert "could not start: cannot use Redis at rediss://:***@" in out, out
    assert "a TLS certificate was refused" in out, out
    assert "CERTIFICATE_VERIFY_FAILED" in out and PASSWORD not in out and "Traceback" not in out


def test_local_redis_refuses_to_start_behind_a_certificate_it_cannot_check(tmp_path, certs):
    tls = RedisTls(certs["server.pem"], certs["server.key"], certs["rogue-ca.pem"])
    server = LocalRedis(tmp_path / "redis", free_port(), appendonly=False, tls=tls)
    with pytest.raises(RuntimeError, match="not trusted"):
        server.start(timeout=10)
    assert server.process is not None and server.process.poll() is not None


def test_the_cli_uses_a_rediss_url_and_names_one_it_cannot_use(tls_redis, tmp_path, capsys):
    from llamafleet import cli

    run = str(tmp_path / "run")
    assert cli.main(["requeue", "--all", "--run-dir", run, "--redis-url", tls_redis.url]) == 0
    for url in (
        f"redis://127.0.0.1:{tls_redis.port}/0?ssl_ca_certs=/x.pem",  # TLS options, no TLS
        f"http://127.0.0.1:{tls_redis.port}/0",
    ):
        for argv in (["up", "--run-dir", run], ["requeue", "--all", "--run-dir", run]):
            capsys.readouterr()
            assert cli.main([*argv, "--redis-url", url]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "Traceback" not in err, err
            assert err.startswith(f"llamafleet {argv[0]}: Redis URL "), err


def test_a_worker_loop_stops_at_once_on_a_refused_certificate(tls_redis, certs):
    """A certificate problem is a setting, not an outage: the loop stops with RedisUnusable."""
    import threading

    url = (  # no CA: the client refuses the server's certificate, deterministically
        f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis.port}/0"
        f"?ssl_certfile={certs['client.pem']}&ssl_keyfile={certs['client.key']}"
    )
    q = WorkQueue(connect(url, socket_timeout=3), "llamafleet:rollout:tasks", "rollout", "c")
    with pytest.raises(RedisUnusable) as err:
        q.run(lambda d: [], stop=threading.Event(), block_ms=100)
    assert "certificate" in str(err.value) and PASSWORD not in str(err.value)
