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

    client = Client.from_run_dir(".llamafleet")
    job = client.training.GetTrainingJob(training_service_pb2.GetTrainingJobRequest(job_id="j1"))
    for event in client.training.WatchTrainingJob(request): ...
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
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
    "CancelTrainingJob", "ListAdapters", "LoadAdapter", "ScoreRollouts", "ListRewardFunctions",
    "TestRewardFunction",
}  # fmt: skip


ENV_TOKEN = "LLAMAFLEET_TOKEN"
ENV_TLS_CA = "LLAMAFLEET_TLS_CA"
ENV_TLS_CERT = "LLAMAFLEET_TLS_CERT"
ENV_TLS_KEY = "LLAMAFLEET_TLS_KEY"


class CredentialsError(ValueError):
    """The TLS settings do not fit together or name a file that cannot be read."""


@dataclass(frozen=True)
class Credentials:
    """How a caller proves itself to the services, and checks that it reached them.

    ``token`` goes in every call as ``authorization: Bearer <token>`` (the services'
    ``auth_token``). ``tls_ca`` (a PEM file) turns TLS on and is the CA the services'
    certificates must chain to; ``tls_cert``/``tls_key`` are this caller's certificate and key,
    for services that require one (``tls_client_ca``, mutual TLS). TLS with a certificate but no
    CA trusts the system's roots. Paths, not contents: the files are read (and must be PEM) when
    channel credentials are made.
    """

    token: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise CredentialsError(
                f"TLS client certificate: set both {ENV_TLS_CERT} and {ENV_TLS_KEY} (certificate "
                "and key), or neither"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **defaults: str) -> Credentials:
        """``LLAMAFLEET_TOKEN`` / ``LLAMAFLEET_TLS_{CA,CERT,KEY}`` over ``defaults`` (for example
        what ``llamafleet up`` recorded); an empty variable counts as unset."""
        environ = os.environ if environ is None else environ
        values = {
            "token": environ.get(ENV_TOKEN) or defaults.get("token", ""),
            "tls_ca": environ.get(ENV_TLS_CA) or defaults.get("tls_ca", ""),
        }
        if environ.get(ENV_TLS_CERT) or environ.get(ENV_TLS_KEY):  # the pair, or an error
            values["tls_cert"] = environ.get(ENV_TLS_CERT, "")
            values["tls_key"] = environ.get(ENV_TLS_KEY, "")
        else:
            values["tls_cert"] = defaults.get("tls_cert", "")
            values["tls_key"] = defaults.get("tls_key", "")
        return cls(**values)

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert)

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials for a channel, or None for plaintext."""
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(
            _read(self.tls_ca, ENV_TLS_CA) if self.tls_ca else None,
            _read(self.tls_key, ENV_TLS_KEY) if self.tls_key else None,
            _read(self.tls_cert, ENV_TLS_CERT) if self.tls_cert else None,
        )

    def channel(self, address: str, options=None) -> grpc.Channel:
        creds = self.channel_credentials()
        if creds is None:
            return grpc.insecure_channel(address, options=options)
        return grpc.secure_channel(address, creds, options=options)


def _read(path: str, setting: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CredentialsError(
            f"cannot read the TLS file {path} ({setting}): {exc.strerror or exc}"
        ) from None
    if b"-----BEGIN " not in data:
        raise CredentialsError(f"the TLS file {path} ({setting}) is not in PEM format")
    return data


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

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, **kw) -> Client:
        """Connect to the local cluster that ``llamafleet up`` recorded in ``run_dir``, with the
        TLS files it was started with (the environment overrides them) unless ``credentials``
        are given."""
        from llamafleet.cluster import ClusterState, credentials_for

        state = ClusterState.load(run_dir)
        kw.setdefault("credentials", credentials_for(state))
        return cls({name: svc.address for name, svc in state.services.items()}, **kw)

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
