"""The Python client: one object that reaches the four services, usable without torch.

``Client`` holds one channel per service and exposes each service as an attribute (``data``,
``training``, ``rollout``, ``reward``) whose methods are the service's RPCs, called with:
- a deadline on every call (``timeout``, overridable per call),
- the bearer token, when one is configured,
- retries on UNAVAILABLE only, and only for RPCs that are safe to repeat (reads, and creates that
  are idempotent on a client-chosen id per the contract),
- errors raised as ``RpcError`` carrying the status code, the ``ErrorInfo`` reason and the
  ``BadRequest`` field violations.

    client = Client.from_run_dir(".llamafleet")
    job = client.training.GetTrainingJob(training_service_pb2.GetTrainingJobRequest(job_id="j1"))
    for event in client.training.WatchTrainingJob(request): ...
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

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
    "PreviewExample", "GetDataset", "ListDatasets", "StreamBatches",
    "GetTrainingJob", "ListTrainingJobs", "WatchTrainingJob", "FetchAdapter",
    "CancelTrainingJob", "ListAdapters", "LoadAdapter", "ScoreRollouts",
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
        token: str = "",
        root_certificates: bytes | None = None,
        timeout: float = 30.0,
        retries: int = 3,
    ) -> None:
        self.addresses = dict(addresses)
        self.timeout = timeout
        self.retries = retries
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._channels: dict[str, grpc.Channel] = {}
        self._root_certificates = root_certificates
        for name in STUBS:
            if name in self.addresses:
                setattr(self, name, _Service(self, name, STUBS[name](self._channel(name))))

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, **kw) -> Client:
        """Connect to the local cluster that ``llamafleet up`` recorded in ``run_dir``."""
        from llamafleet.cluster import ClusterState

        state = ClusterState.load(run_dir)
        return cls({name: svc.address for name, svc in state.services.items()}, **kw)

    def _channel(self, name: str) -> grpc.Channel:
        if name not in self._channels:
            address = self.addresses[name]
            if self._root_certificates is not None:
                creds = grpc.ssl_channel_credentials(self._root_certificates)
                self._channels[name] = grpc.secure_channel(address, creds)
            else:
                self._channels[name] = grpc.insecure_channel(address)
        return self._channels[name]

    def _call_unary(self, service: str, rpc: str, method, request, *, timeout=None, **kw):
        attempts = self.retries + 1 if rpc in IDEMPOTENT else 1
        for attempt in range(attempts):
            try:
                return method(
                    request,
                    timeout=timeout or self.timeout,
                    metadata=self._metadata + list(kw.pop("metadata", [])),
                    **kw,
                )
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
