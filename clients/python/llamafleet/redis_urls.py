"""Redis URLs: the one place that reads them and builds a redis-py client from one.

Two kinds, for every ``redis_url`` setting (the services, the PPO trainer, ``llamafleet up
--redis-url``, the dead-letter commands):

- ``redis://`` / ``rediss://`` (TLS) / ``unix://``: one Redis server, as redis-py's ``from_url``
  reads them.
- ``redis+sentinel://`` / ``rediss+sentinel://`` (TLS to the sentinels and the servers): a Redis
  whose primary Redis Sentinel watches and replaces when it fails::

      redis+sentinel://[[user]:password@]host:port[,host:port...]/SERVICE[/DB][?options]

  ``SERVICE`` is the name the sentinels monitor (``sentinel monitor SERVICE ...``); the password
  is the Redis servers'. Options: ``sentinel_password`` / ``sentinel_username`` (when the
  sentinels themselves want them) and the ``ssl_*`` options of ``rediss://``. The client is
  redis-py's ``Sentinel(...).master_for(SERVICE)``: every new connection asks the sentinels
  where the primary is, so after a failover the next connection goes to the promoted replica.

What a URL gets wrong raises ``ValueError`` with what and where; the callers (the services'
``redis_conn``, the CLI's ``cluster``) turn that into their own error naming the setting.
This module knows nothing about queues, services or processes.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}  # scheme -> TLS
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_SENTINEL_OPTIONS = {"sentinel_password", "sentinel_username"}
_TLS_OPTIONS = {*_TLS_FILES, "ssl_cert_reqs", "ssl_check_hostname", "ssl_password"}


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel_options: dict[str, str] = field(default_factory=dict)
    tls_options: dict[str, Any] = field(default_factory=dict)


def is_sentinel(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme in SENTINEL_SCHEMES


def parse_sentinel(url: str) -> SentinelUrl:
    """Read a ``redis+sentinel://`` URL; ``ValueError`` says what is wrong with it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a Sentinel URL (scheme {parts.scheme!r})")
    userinfo, _at, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if colon else None
    sentinels = []
    for item in hostlist.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(
                f"sentinel address {item.strip()!r}: expected host:port (the sentinels' "
                "port, usually 26379), comma-separated"
            )
        sentinels.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError(
            "the path must be /SERVICE or /SERVICE/DB: SERVICE is the name the sentinels "
            "monitor (sentinel monitor SERVICE host port quorum)"
        )
    service = urllib.parse.unquote(path[0])
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError(f"database {path[1]!r}: expected a number")
    db = int(path[1]) if len(path) == 2 else 0
    sentinel_options: dict[str, str] = {}
    tls_options: dict[str, Any] = {}
    tls = SENTINEL_SCHEMES[parts.scheme]
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key in _SENTINEL_OPTIONS:
            sentinel_options[key.removeprefix("sentinel_")] = value
        elif key in _TLS_OPTIONS:
            if not tls:
                raise ValueError(
                    f"{key} only applies to TLS; start the URL with rediss+sentinel://"
                )
            tls_options[key] = (
                value.lower() in ("1", "true", "yes") if key.endswith("check_hostname") else value
            )
        else:
            known = ", ".join(sorted(_SENTINEL_OPTIONS | _TLS_OPTIONS))
            raise ValueError(f"unknown option {key!r} (known: {known})")
    return SentinelUrl(
        tuple(sentinels), service, db, username, password, tls, sentinel_options, tls_options
    )


def check(url: str) -> None:
    """``ValueError`` for what a URL alone gets wrong: a scheme redis-py does not know,
    ``ssl_*`` options without TLS (redis-py would fail with a TypeError at the first command),
    a TLS file that cannot be read. What only a connection shows surfaces there."""
    if is_sentinel(url):
        options = parse_sentinel(url).tls_options
    else:
        options = redis.connection.parse_url(url)  # ValueError for an unknown scheme
        tls_options = sorted(k for k in options if k.startswith("ssl_"))
        if tls_options and not url.startswith("rediss://"):
            raise ValueError(
                f"{', '.join(tls_options)} only apply to TLS; start the URL with rediss://"
            )
    for key in _TLS_FILES:
        path = options.get(key)
        if path and not os.access(path, os.R_OK):
            raise ValueError(f"the TLS file {key}={path} does not exist or cannot be read")


def client(url: str, **kwargs: Any) -> redis.Redis:
    """A redis-py client for ``url`` (either kind), with ``kwargs`` for its connections
    (``socket_timeout``, ``protocol``, ``retry``, ``client_name`` ...). Checks the URL first
    (:func:`check`)."""
    check(url)
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **kwargs)
    spec = parse_sentinel(url)
    tls = {"ssl": True, **spec.tls_options} if spec.tls else {}
    timeouts = {k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout") if k in kwargs}
    sentinel = Sentinel(
        list(spec.sentinels),
        sentinel_kwargs={**timeouts, **tls, **spec.sentinel_options},
        **{**kwargs, **tls},
    )
    return sentinel.master_for(
        spec.service,
        redis_class=redis.Redis,
        db=spec.db,
        username=spec.username,
        password=spec.password,
    )


def sentinel_of(r: redis.Redis) -> tuple[str, list[tuple[str, int]]] | None:
    """``(service, sentinel addresses)`` of a client made from a Sentinel URL, else None."""
    pool = r.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return None
    addresses = [
        (s.get_connection_kwargs().get("host"), s.get_connection_kwargs().get("port"))
        for s in pool.sentinel_manager.sentinels
    ]
    return pool.service_name, addresses
