"""The Python client: one object that reaches the four services, usable without torch.

``Client`` holds one channel per service and exposes each service as an attribute (``data``,
``training``, ``rollout``, ``reward``) whose methods are the service's RPCs, called with:
- a deadline on every call (``timeout``, overridable per call),
- the bearer token and TLS (``Credentials``): given, or else read from the environment
  (``LLAMAFLEET_TOKEN``, ``LLAMAFLEET_TLS_CA``, ``LLAMAFLEET_TLS_CERT``, ``LLAMAFLEET_TLS_KEY``), so
  every CLI command, and the training job's calls to the data service, take them the same way,
- retries on UNAVAILABLE only, and only for RPCs that are safe to repeat (reads, and creates that
  are idempotent on a client-chosen id per the contract),
- errors raised as ``RpcError`` carrying the status code, the ``ErrorInfo`` reason and the
  ``BadRequest`` field violations.

    client = cluster.connect(".llamafleet")  # a local cluster; else Client({"data": ADDR, ...})
    job = client.training.GetTrainingJob(training_service_pb2.GetTrainingJobRequest(job_id="j1"))
    for event in client.training.WatchTrainingJob(request): ...
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from llamafleet.credentials import Credentials
from llamafleet.data.v1 import data_service_pb2_grpc
from llamafleet.reward.v1 import reward_service_pb2_grpc
from llamafleet.rollout.v1 import rollout_service_pb2_grpc
from llamafleet.training.v1 import training_service_pb2_grpc

STUBS = {
    "data": data_service_pb2_grpc.DataServiceStub,
    "training": training_service_pb2_grpc.TrainingServiceStub,
    "rollout": rollout_service_pb2_grpc.RolloutServiceStub,
    "reward": reward_service_pb2_grpc.RewardServiceStub,
}

# RPCs that may be repeated after UNAVAILABLE without changing the outcome.
IDEMPOTENT = {
    "PreviewExample", "ParseToolCalls", "GetDataset", "ListDatasets", "StreamBatches",
    "GetTrainingJob", "ListTrainingJobs", "WatchTrainingJob", "FetchAdapter",
    "CancelTrainingJob", "ListAdapters", "LoadAdapter", "ScoreRollouts", "ListRewardFunctions",
    "TestRewardFunction",
}  # fmt: skip


@dataclass
class RpcError(Exception):
    """A failed call: the gRPC code, the service's message, and its structured details."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    violations: list[tuple[str, str]] = field(default_factory=list)
    method: str = ""

    def __str__(self) -> str:
        text = f"{self.method}: {self.code.name}: {self.message}" if self.method else self.message
        if self.violations:
            text += "".join(f"\n  {f}: {d}" for f, d in self.violations)
        return text


def translate(error: grpc.RpcError, method: str = "") -> RpcError:
    """Turn a grpc error into an ``RpcError``, unpacking google.rpc details when present."""
    reason, violations = "", []
    status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    for detail in status.details if status else ():
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(bad.DESCRIPTOR):
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    return RpcError(error.code(), error.details() or "", reason, violations, method)


class _Service:
    """The RPCs of one service as methods: ``client.data.GetDataset(request)``."""

    def __init__(self, client: Client, name: str, stub: Any) -> None:
        self._client, self._name, self._stub = client, name, stub

    def __getattr__(self, rpc: str):
        method = getattr(self._stub, rpc)  # AttributeError for a name that is not an RPC
        streaming = isinstance(method, grpc.UnaryStreamMultiCallable)
        call = self._client._call_streaming if streaming else self._client._call_unary
        return lambda request, **kw: call(self._name, rpc, method, request, **kw)


class Client:
    def __init__(
        self,
        addresses: Mapping[str, str],
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        credentials: Credentials | None = None,
        timeout: float = 30.0,
        retries: int = 3,
    ) -> None:
        """``credentials`` default to the environment (``Credentials.from_env``); ``token``
        replaces theirs when given. ``root_certificates`` (PEM bytes) turns on TLS with that CA
        and no client certificate, instead of ``credentials``' files."""
        self.addresses = dict(addresses)
        self.timeout = timeout
        self.retries = retries
        self.credentials = credentials if credentials is not None else Credentials.from_env()
        if token is not None:
            self.credentials = replace(self.credentials, token=token)
        self._metadata = self.credentials.metadata()
        self._channels: dict[str, grpc.Channel] = {}
        self._channel_credentials = (
            grpc.ssl_channel_credentials(root_certificates)
            if root_certificates is not None
            else self.credentials.channel_credentials()
        )
        for name in STUBS:
            if name in self.addresses:
                setattr(self, name, _Service(self, name, STUBS[name](self._channel(name))))

    def _channel(self, name: str) -> grpc.Channel:
        if name not in self._channels:
            address = self.addresses[name]
            if self._channel_credentials is not None:
                channel = grpc.secure_channel(address, self._channel_credentials)
            else:
                channel = grpc.insecure_channel(address)
            self._channels[name] = channel
        return self._channels[name]

    def _call_unary(self, service: str, rpc: str, method, request, *, timeout=None, **kw):
        attempts = self.retries + 1 if rpc in IDEMPOTENT else 1
        metadata = self._metadata + list(kw.pop("metadata", []))  # the same on every attempt
        for attempt in range(attempts):
            try:
                return method(request, timeout=timeout or self.timeout, metadata=metadata, **kw)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 == attempts:
                    raise translate(err, f"{service}.{rpc}") from None
                time.sleep(min(2.0, 0.2 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _call_streaming(
        self, service: str, rpc: str, method, request, *, timeout=None, **kw
    ) -> Iterator[Any]:
        """Stream responses; the deadline covers the whole stream (pass a larger ``timeout``)."""
        call = method(
            request,
            timeout=timeout or self.timeout,
            metadata=self._metadata + list(kw.pop("metadata", [])),
            **kw,
        )
        try:
            yield from call
        except grpc.RpcError as err:
            raise translate(err, f"{service}.{rpc}") from None
        finally:
            call.cancel()

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
