"""The ``grpc.aio`` server every service runs on, with the project's guard rails.

``ServiceHost`` wires what each service would otherwise repeat:
- health (``grpc.health.v1``; every registered service SERVING, all NOT_SERVING for
  ``shutdown_delay_s`` before a graceful stop so load balancers drain first) and reflection
  (``grpc.reflection.v1`` and ``v1alpha``, ``reflection.py``);
- ``grpc.so_reuseport=0`` (another process must not silently share the port), explicit message
  size limits, and ``maximum_concurrent_rpcs`` (RESOURCE_EXHAUSTED past it, from grpc itself);
- one interceptor (``_Guard``) that, per call: tags logs with a request id, checks the bearer
  token (UNAUTHENTICATED; the scheme case-insensitively, RFC 6750; a ``read_token`` reaches only
  the RPCs whose names say they read, PERMISSION_DENIED otherwise), turns an undecodable request
  body into INVALID_ARGUMENT (with an ``ErrorInfo``), maps the
  project's exceptions (``errors.py``) to status codes with ``google.rpc`` details, and turns
  anything unexpected into INTERNAL with the traceback logged, never sent;
- optional TLS and mutual TLS.

``run_service`` is the body of ``python -m services.<name>``; ``stop_process`` lets a part of a
service that died for good (a queue worker whose Redis refuses its credentials) end the process
the same way a SIGTERM does, exiting 1, so a supervisor and ``llamafleet status`` see it.

It knows nothing about any service's RPCs: ``register`` adds them.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from services.common import reflection
from services.common.config import ServerConfig
from services.common.errors import (
    InvalidArgument,
    LlamafleetError,
    internal_status,
    to_rpc_status,
)
from services.common.logs import request_id_var

logger = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
Register = Callable[[grpc.aio.Server], Iterable[str]]


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request whose bytes did not parse; the guard answers INVALID_ARGUMENT."""

    type_name: str
    error: str


def _safe_deserializer(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    if deserialize is None:
        return lambda data: data
    type_name = getattr(getattr(deserialize, "__self__", None), "__name__", "request")

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError and friends: anything the parser rejects
            return _Undecodable(type_name, type(exc).__name__)

    return parse


# RPCs a read-only token may call, by the verb that starts their name (the contract's methods
# follow the standard-method naming: Get/List/Watch read; Create/Cancel/Export/Load/Prepare
# change something). A method with any other verb needs the admin token: a new RPC is
# admin-only until its name says it reads.
READ_ONLY_VERBS = (
    "Get", "List", "Watch", "Preview", "Stream", "Generate", "Score", "Test", "Fetch",
)  # fmt: skip
REFLECTION_PREFIX = "/grpc.reflection."


def is_read_only(method: str) -> bool:
    """Whether ``method`` (``/package.Service/Method``) only reads (see READ_ONLY_VERBS)."""
    if method.startswith(REFLECTION_PREFIX):
        return True
    return method.rsplit("/", 1)[-1].startswith(READ_ONLY_VERBS)


class _Guard(grpc.aio.ServerInterceptor):
    def __init__(self, auth_token: str, read_token: str = "") -> None:
        self._token = auth_token.encode()
        self._read_token = read_token.encode()

    def _access(self, details: grpc.HandlerCallDetails) -> str:
        """ "ok", "unauthenticated", or "read-only" (a read token on a method that changes
        something)."""
        if not self._token or details.method.startswith(HEALTH_PREFIX):
            return "ok"
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                # RFC 6750 (via RFC 7235): the auth scheme is case-insensitive.
                scheme, _, credential = given.strip().partition(b" ")
                if scheme.lower() != b"bearer":
                    return "unauthenticated"
                credential = credential.strip()
                if hmac.compare_digest(credential, self._token):
                    return "ok"
                if self._read_token and hmac.compare_digest(credential, self._read_token):
                    return "ok" if is_read_only(details.method) else "read-only"
                return "unauthenticated"
        return "unauthenticated"

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        authorized = self._access(details)
        request_id = _request_id(details)
        deserializer = handler.request_deserializer
        if not (handler.request_streaming or handler.response_streaming):
            behavior = self._unary(handler.unary_unary, method, authorized, request_id)
            factory = grpc.unary_unary_rpc_method_handler
            deserializer = _safe_deserializer(deserializer)
        elif handler.response_streaming and not handler.request_streaming:
            behavior = self._streaming(handler.unary_stream, method, authorized, request_id)
            factory = grpc.unary_stream_rpc_method_handler
            deserializer = _safe_deserializer(deserializer)
        elif handler.request_streaming and not handler.response_streaming:
            behavior = self._unary(handler.stream_unary, method, authorized, request_id)
            factory = grpc.stream_unary_rpc_method_handler
        else:
            behavior = self._streaming(handler.stream_stream, method, authorized, request_id)
            factory = grpc.stream_stream_rpc_method_handler
        return factory(
            behavior,
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )

    def _unary(self, behavior, method: str, authorized: str, request_id: str):
        async def guarded(request, context):
            request_id_var.set(request_id)
            await _precheck(request, context, method, authorized)
            try:
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                return result
            except Exception as exc:
                await _abort_for(exc, context, method, request_id)

        return guarded

    def _streaming(self, behavior, method: str, authorized: str, request_id: str):
        async def guarded(request, context) -> AsyncIterator[Any]:
            request_id_var.set(request_id)
            await _precheck(request, context, method, authorized)
            try:
                result = behavior(request, context)
                if inspect.isawaitable(result):  # a handler that writes with context.write
                    await result
                    return
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:
                    for item in result:
                        yield item
            except Exception as exc:
                await _abort_for(exc, context, method, request_id)

        return guarded


def _request_id(details: grpc.HandlerCallDetails) -> str:
    for key, value in details.invocation_metadata or ():
        if key == "x-request-id" and value:
            return str(value)[:64]
    return uuid.uuid4().hex[:16]


async def _precheck(request, context, method: str, authorized: str) -> None:
    if authorized == "unauthenticated":
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'",
        )
    if authorized == "read-only":
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{method} changes something and this token may only read (list, get, watch, "
            "preview, stream, generate, score, fetch); call it with the admin token",
        )
    if isinstance(request, _Undecodable):
        logger.info("undecodable request to %s (%s)", method, request.error)
        error = InvalidArgument(
            f"request body for {method} is not a valid {request.type_name} message",
            reason="UNDECODABLE_REQUEST",
            metadata={"type": request.type_name, "error": request.error},
        )
        status = rpc_status.to_status(to_rpc_status(error))
        await context.abort(status.code, status.details, status.trailing_metadata)


async def _abort_for(exc: Exception, context, method: str, request_id: str) -> None:
    if isinstance(exc, grpc.aio.AbortError | asyncio.CancelledError):
        raise exc
    if isinstance(exc, LlamafleetError):
        status = rpc_status.to_status(to_rpc_status(exc))
        await context.abort(status.code, status.details, status.trailing_metadata)
    if isinstance(exc, NotImplementedError):
        # The generated base servicer raises this for RPCs a service does not implement yet.
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by this service yet"
        )
    logger.error("unexpected error in %s", method, exc_info=exc)
    status = rpc_status.to_status(internal_status(request_id))
    await context.abort(status.code, status.details, status.trailing_metadata)


class ServiceHost:
    """One service's server: start, report its address, drain and stop."""

    def __init__(self, name: str, config: ServerConfig, register: Register) -> None:
        self.name = name
        self.config = config
        self._register = register
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None
        self._stopping = False

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    async def start(self) -> int:
        cfg = self.config
        max_bytes = cfg.max_message_mb * 1024 * 1024
        server = grpc.aio.server(
            interceptors=[_Guard(cfg.auth_token, cfg.read_token)],
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_send_message_length", max_bytes),
                ("grpc.max_receive_message_length", max_bytes),
            ],
        )
        names = list(self._register(server))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable([*names, health.SERVICE_NAME], server)
        bind = f"{_bracket(cfg.host)}:{cfg.port}"
        if cfg.tls_cert:
            credentials = grpc.ssl_server_credentials(
                [(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())],
                root_certificates=(
                    Path(cfg.tls_client_ca).read_bytes() if cfg.tls_client_ca else None
                ),
                require_client_auth=bool(cfg.tls_client_ca),
            )
            self.port = server.add_secure_port(bind, credentials)
        else:
            self.port = server.add_insecure_port(bind)
        if not self.port:
            raise OSError(f"{self.name}: could not bind {bind}")
        await server.start()
        self._server = server
        for service_name in ["", *names]:
            await self._health.set(service_name, health_pb2.HealthCheckResponse.SERVING)
        if cfg.address_file:
            _write_atomically(Path(cfg.address_file), self.address)
        logger.info("%s serving on %s (tls=%s)", self.name, self.address, bool(cfg.tls_cert))
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Flip health to NOT_SERVING, wait ``shutdown_delay_s``, then stop with a grace period."""
        if self._server is None or self._stopping:
            return
        self._stopping = True
        await self._health.enter_graceful_shutdown()
        logger.info("%s draining: NOT_SERVING for %.1fs", self.name, self.config.shutdown_delay_s)
        await asyncio.sleep(self.config.shutdown_delay_s)
        await self._server.stop(self.config.grace_s if grace is None else grace)
        logger.info("%s stopped", self.name)

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


def register_servicer(add_to_server: Callable, servicer: Any, service_full_name: str) -> Register:
    """A ``Register`` for the usual case: one generated ``add_*_to_server`` and one servicer."""

    def register(server: grpc.aio.Server) -> list[str]:
        add_to_server(servicer, server)
        return [service_full_name]

    return register


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# The running ``run_service``'s event loop and stop event, the exit code it will return, and
# what to stop when it starts draining.
_process: dict[str, Any] = {"loop": None, "stop": None, "code": 0, "on_drain": []}


def on_drain(stop: Callable[[], object]) -> None:
    """Call ``stop`` (in a thread) as soon as this service process starts draining, alongside the
    gRPC drain: a queue worker stops taking new items while health already says NOT_SERVING, and
    the item in hand finishes and commits. Outside ``run_service`` nothing is registered."""
    if _process["loop"] is not None:
        _process["on_drain"].append(stop)


def stop_process(reason: str) -> bool:
    """From any thread: drain and stop this service process, which then exits with code 1.

    For a part of the service that cannot go on (its queue worker died); ``reason`` is logged.
    Returns False, and does nothing else, when the service is not running as its own process
    (``run_service``): in-process hosts and tests keep running.
    """
    loop, stop = _process["loop"], _process["stop"]
    if loop is None or stop is None:
        return False
    logger.error("stopping the service process (exit code 1): %s", reason)
    _process["code"] = 1
    loop.call_soon_threadsafe(stop.set)
    return True


def run_service(
    name: str,
    config_cls: type[ServerConfig],
    argv: list[str],
    make_register: Callable[[Any], Register],
) -> int:
    """The body of every ``python -m services.<name>``: config, logging, serve until a signal.

    Bad configuration exits with code 2 and one line on stderr, never a traceback.
    """
    import signal
    import sys

    from services.common.config import ConfigError, load_config
    from services.common.logs import setup_logging

    try:
        config = load_config(config_cls, name, argv)
    except ConfigError as exc:
        sys.stderr.write(f"llamafleet {name}: configuration error: {exc}\n")
        return 2
    setup_logging(config.log_level, config.log_file)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        _process.update(loop=loop, stop=stop, code=0, on_drain=[])  # before any worker starts
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        host = ServiceHost(name, config, make_register(config))
        await host.start()
        await stop.wait()
        drains = [asyncio.to_thread(fn) for fn in _process["on_drain"]]
        await asyncio.gather(host.stop(), *drains)

    try:
        asyncio.run(serve())
    except ConfigError as exc:  # a file the configuration names, read when the service starts
        sys.stderr.write(f"llamafleet {name}: configuration error: {exc}\n")
        return 2
    except (OSError, LlamafleetError) as exc:
        logger.error("%s could not start: %s", name, exc)
        sys.stderr.write(f"llamafleet {name}: could not start: {exc}\n")
        return 1
    finally:
        code = _process["code"]
        _process.update(loop=None, stop=None, code=0, on_drain=[])
    return code
