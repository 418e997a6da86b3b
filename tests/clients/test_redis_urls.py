"""Redis URLs (``llamafleet.redis_urls``): Sentinel URLs read into what redis-py's Sentinel
takes, one-server URLs left to redis-py, and what a URL gets wrong said before any connection.
The failover itself, against real sentinels, is tests/reliability/test_sentinel_failover.py."""

from __future__ import annotations

import pytest
import redis
from llamafleet import cluster, redis_urls
from llamafleet.credentials import redact_url
from redis.sentinel import SentinelConnectionPool

from services.common.queues import RedisUnusable, connect, describe_client


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_db():
    spec = redis_urls.parse_sentinel(
        "redis+sentinel://app:s%40cret@10.0.0.1:26379,[::1]:26380,sent-3:26381/llamafleet/2"
        "?sentinel_password=sp"
    )
    assert spec.sentinels == (("10.0.0.1", 26379), ("::1", 26380), ("sent-3", 26381))
    assert (spec.service, spec.db, spec.username, spec.password) == (
        "llamafleet",
        2,
        "app",
        "s@cret",
    )
    assert spec.sentinel_options == {"password": "sp"} and not spec.tls
    assert redis_urls.parse_sentinel("redis+sentinel://h:1/svc").db == 0


def test_tls_options_go_with_rediss_sentinel_only():
    spec = redis_urls.parse_sentinel(
        "rediss+sentinel://h:26379/svc?ssl_cert_reqs=required&ssl_check_hostname=false"
    )
    assert spec.tls and spec.tls_options == {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": False,
    }
    with pytest.raises(ValueError, match="rediss\\+sentinel://"):
        redis_urls.parse_sentinel("redis+sentinel://h:26379/svc?ssl_cert_reqs=required")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://h/svc", "expected host:port"),
        ("redis+sentinel://h:26379,:1/svc", "expected host:port"),
        ("redis+sentinel://h:26379", "/SERVICE or /SERVICE/DB"),
        ("redis+sentinel://h:26379/svc/x", "database 'x'"),
        ("redis+sentinel://h:26379/svc/0/extra", "/SERVICE or /SERVICE/DB"),
        ("redis+sentinel://h:26379/svc?master=x", "unknown option 'master'"),
        ("rediss+sentinel://h:26379/svc?ssl_ca_certs=/no/such.pem", "ssl_ca_certs=/no/such.pem"),
        ("redis://h:6379/0?ssl_ca_certs=/x.pem", "start the URL with rediss://"),
        ("http://h:6379/0", "redis://"),
    ],
)
def test_what_a_url_gets_wrong_is_said_before_connecting(url, message):
    with pytest.raises(ValueError, match=message):
        redis_urls.check(url)


def test_the_client_asks_the_sentinels_for_the_primary():
    r = redis_urls.client("redis+sentinel://127.0.0.1:1,127.0.0.1:2/llamafleet/3", socket_timeout=1)
    assert isinstance(r.connection_pool, SentinelConnectionPool)
    assert r.connection_pool.service_name == "llamafleet"
    assert r.get_connection_kwargs()["db"] == 3
    assert redis_urls.sentinel_of(r) == ("llamafleet", [("127.0.0.1", 1), ("127.0.0.1", 2)])
    assert redis_urls.sentinel_of(redis.Redis()) is None


def test_services_and_cli_share_the_parser_and_name_the_setting():
    url = "redis+sentinel://127.0.0.1:1/llamafleet/0"
    r = connect(url)  # the services' connection: RESP2, no silent retries, through Sentinel
    assert describe_client(r) == "redis+sentinel://127.0.0.1:1/llamafleet/0"
    assert r.get_connection_kwargs()["protocol"] == 2
    with pytest.raises(RedisUnusable, match=r"setting redis_url\): unknown option 'bad'"):
        connect(url + "?bad=1")
    with pytest.raises(cluster.ClusterError, match="unknown option 'bad'"):
        cluster.redis_for(".", url + "?bad=1")
    # no sentinel answers on port 1: a one-line error, not a traceback
    with pytest.raises(cluster.ClusterError, match="cannot reach Redis"):
        cluster.redis_for(".", url)


def test_passwords_never_show():
    url = "redis+sentinel://:pw@h:1,h:2/svc/0?sentinel_password=sp&ssl_password=kp"
    shown = redact_url(url)
    assert "pw" not in shown and "sp" not in shown.replace("ssl_password", "")
    assert shown == "redis+sentinel://:***@h:1,h:2/svc/0?sentinel_password=***&ssl_password=***"
