"""The client side of the work-queue Redis: connecting, and what its errors mean.

- :func:`connect`: a client with RESP2 pinned, bytes replies and redis-py's silent retry off (a
  retried ``XADD`` duplicated an entry), TLS through ``rediss://`` URLs.
- :func:`is_transient`: whether an error may go away by itself (Redis restarting, loading, full,
  read-only, busy), so a worker waits, or needs someone to change a setting (credentials, ACL,
  a certificate, not a Redis server), so it stops with :class:`RedisUnusable` naming
  ``redis_url``.
- :func:`require_redis`: a service's start-up check.

Every message shows the URL with its password redacted.
"""

from __future__ import annotations

import ssl

import redis
from llamafleet import redis_urls
from llamafleet.credentials import redact_url
from redis import exceptions as rexc
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.common.errors import FailedPrecondition, Unavailable

# Errors that mean "never, until someone fixes the configuration": retrying cannot help. redis-py
# files wrong credentials under ConnectionError (NOAUTH, WRONGPASS, "invalid password"), so these
# are told apart before the transient ones. InvalidResponse is a peer that is not Redis at all.
_FATAL_ERRORS = (
    rexc.AuthenticationError,
    rexc.AuthorizationError,
    rexc.AuthenticationWrongNumberOfArgsError,
    rexc.NoPermissionError,
    rexc.InvalidResponse,
)
# Server replies that mean "not now" rather than "never": the worker loop waits them out. A full
# (maxmemory + noeviction), read-only, loading or script-busy Redis refuses work but loses nothing.
_TRANSIENT_SERVER_ERRORS = (
    rexc.OutOfMemoryError,
    rexc.ReadOnlyError,
    rexc.BusyLoadingError,
    rexc.MasterDownError,
    rexc.TryAgainError,
)
# BUSY: a script or module command runs past busy-reply-threshold. UNBLOCKED: a blocked XREADGROUP
# was released because the server turned into a replica (failover).
_TRANSIENT_REPLY_PREFIXES = ("BUSY ", "MASTERDOWN", "LOADING", "UNBLOCKED")
_PIPELINE_NOTE = " of pipeline caused error: "  # redis-py's annotate_exception
# TLS alerts a server sends when it refuses the client's certificate (OpenSSL reason names).
_CERTIFICATE_ALERTS = (
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "CERTIFICATE_UNKNOWN",
)


class RedisUnusable(FailedPrecondition):
    """Redis answered, but no retry will make it usable: wrong credentials or ACL, not Redis, or a
    reply the queue cannot work with. Raised by :func:`require_redis` and :meth:`WorkQueue.run`."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` from a Redis call may go away by itself (Redis restarting, full, loading).

    Unreachable (refused, reset, timed out), ``LOADING``, ``OOM``, ``READONLY``, ``BUSY``,
    ``MASTERDOWN`` and ``UNBLOCKED`` (a blocked read released by a failover) are; wrong
    credentials (``NOAUTH``, ``WRONGPASS``), ``NOPERM``, a TLS certificate one side does not
    trust (:func:`certificate_refused`), a peer that does not speak the Redis protocol, and any
    other error reply (``WRONGTYPE``, unknown command) are not. ``NOGROUP`` is neither: the
    worker loop recreates the group.
    """
    if isinstance(exc, _FATAL_ERRORS) or certificate_refused(exc):
        return False
    if isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError, *_TRANSIENT_SERVER_ERRORS)):
        return True
    return isinstance(exc, rexc.ResponseError) and server_reply(exc).startswith(
        _TRANSIENT_REPLY_PREFIXES
    )


def certificate_refused(exc: BaseException) -> bool:
    """Whether ``exc`` (redis-py files TLS failures under ``ConnectionError``) comes from a
    certificate check: the server's certificate not trusted or not for this host, or the server
    refusing the client's certificate (or its absence). A setting to fix, not an outage."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        if isinstance(cause, ssl.SSLError) and any(
            alert in str(cause.reason or "").upper() for alert in _CERTIFICATE_ALERTS
        ):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def server_reply(exc: BaseException) -> str:
    """The server's error reply in ``exc``, without the note redis-py prepends to an error from a
    pipeline (``Command # 1 (XPENDING ...) of pipeline caused error: BUSY ...``)."""
    text = str(exc)
    _note, found, reply = text.partition(_PIPELINE_NOTE)
    return reply if found and _note.startswith("Command # ") else text


def describe_client(r: redis.Redis) -> str:
    """``redis[s]://[user:***@]host:port/db`` of a client, for errors (never the password; no
    TLS options either)."""
    kw = r.get_connection_kwargs()
    if (sentinel := redis_urls.sentinel_of(r)) is not None:
        service, addresses = sentinel
        hosts = ",".join(f"{host}:{port}" for host, port in addresses)
        return f"redis+sentinel://{hosts}/{service}/{kw.get('db', 0)}"
    user = kw.get("username") or ""
    auth = f"{user}:***@" if kw.get("password") else (f"{user}@" if user else "")
    if kw.get("path"):
        return f"unix://{auth}{kw['path']}?db={kw.get('db', 0)}"
    tls = issubclass(r.connection_pool.connection_class, redis.connection.SSLConnection)
    scheme = "rediss" if tls else "redis"
    return f"{scheme}://{auth}{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


def unusable_message(shown_url: str, exc: BaseException) -> str:
    """What is wrong with the Redis that ``redis_url`` names, and what to change: one line."""
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    if isinstance(exc, rexc.AuthenticationError | rexc.AuthenticationWrongNumberOfArgsError):
        hint = (
            "Redis refused the credentials; put the right user and password in redis_url "
            "(redis://[user]:password@host:port/db), or none if Redis has no password"
        )
    elif isinstance(exc, rexc.AuthorizationError | rexc.NoPermissionError):
        hint = (
            "the Redis user in redis_url lacks a permission the queue needs (stream commands, "
            "EVAL/EVALSHA, keys llamafleet:*); grant it with ACL SETUSER or use another user"
        )
    elif certificate_refused(exc):
        hint = (
            "a TLS certificate was refused; give redis_url the CA that signed the server's "
            "certificate (ssl_ca_certs=...) and, if Redis asks for one, a client certificate "
            "signed by its CA (ssl_certfile=..., ssl_keyfile=...)"
        )
    elif isinstance(exc, rexc.InvalidResponse):
        hint = "the server there does not speak the Redis protocol; point redis_url at redis-server"
    else:
        hint = "Redis refused a queue command; check redis_url and the Redis server's version"
    return f"cannot use Redis at {shown_url} (setting redis_url): {hint} ({text})"


def connect(
    url: str,
    *,
    socket_timeout: float = 5.0,
    socket_connect_timeout: float = 5.0,
    client_name: str | None = None,
) -> redis.Redis:
    """A client for the queue Redis: RESP2 pinned, bytes replies, no silent retries.

    ``socket_timeout`` must exceed every ``BLOCK`` used with this client (checked by
    :meth:`WorkQueue.fetch`). A command that times out raises; its outcome is unknown, and the
    callers here are written so that repeating it is safe. The zero-retry policy is passed
    explicitly: ``redis.Redis(...)`` defaults to 10 retries and only ``from_url`` happens not to.

    Any URL :mod:`llamafleet.redis_urls` reads: one server, or a Sentinel-watched primary
    (``redis+sentinel://host:port,host:port/SERVICE/DB``: each new connection goes to the
    primary the sentinels name, so a worker that lost its connection in a failover reconnects
    to the promoted replica).

    TLS: ``rediss://host:port/db?ssl_ca_certs=CA.pem&ssl_certfile=C.pem&ssl_keyfile=K.pem``
    (redis-py reads these, and ``ssl_cert_reqs``/``ssl_check_hostname``, from the query; the
    certificate is checked against the CA and the host name by default). What the URL alone gets
    wrong raises :class:`RedisUnusable` here, naming ``redis_url``: ``ssl_*`` options on a
    ``redis://`` URL (redis-py would fail with a TypeError at the first command), or a TLS file
    that cannot be read. What only the handshake shows (an untrusted server certificate, no
    client certificate, a plaintext URL to a TLS port) surfaces at the first command as a
    ``ConnectionError``.
    """
    try:
        redis_urls.check(url)
    except ValueError as exc:
        raise RedisUnusable(
            f"cannot use Redis at {redact_url(url)} (setting redis_url): {exc}",
            reason="REDIS_UNUSABLE",
        ) from None
    return redis_urls.client(
        url,
        protocol=2,
        decode_responses=False,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        retry=Retry(NoBackoff(), 0),
        client_name=client_name,
    )


def require_redis(url: str, timeout_s: float = 5.0) -> None:
    """Fail a service's start-up with a clear message when its work-queue Redis is not usable.

    Unreachable or not ready (:func:`is_transient`): :class:`Unavailable`. Wrong credentials, a
    missing ACL permission or a server that is not Redis: :class:`RedisUnusable`. Both name
    ``redis_url`` with its password redacted; ``run_service`` turns either into exit code 1.
    """
    try:
        connect(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s).ping()
    except redis.RedisError as exc:
        if not is_transient(exc):
            raise RedisUnusable(
                unusable_message(redact_url(url), exc), reason="REDIS_UNUSABLE"
            ) from None
        raise Unavailable(
            f"cannot reach Redis at {redact_url(url)}: {exc}; start redis-server or fix redis_url",
            reason="REDIS_UNAVAILABLE",
        ) from None
