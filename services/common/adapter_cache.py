"""A content-addressed local cache of adapter versions fetched from the training service.

``AdapterCache.ensure(ref)`` returns a local adapter folder for ``id@version`` (a PEFT adapter, or
a full-weights GRPO policy version: ``common.full_weights``), always from
the one training service the cache was configured with (``training_address``): a caller names an
adapter, never where to fetch it from, so no caller can make the service dial an address of its
choosing (and hand that address the service's token) or plant weights under a name.
- if this cache already resolved that version from the configured training service, the folder
  ``<cache_dir>/<sha256>/`` is returned; the first time in a process, after asking training for
  that version's sha256 (one chunk, no data), since a job deleted and re-created under the same id
  publishes other weights under the same versions (training unreachable: the cached copy is used,
  with a warning). The index entry records the training address it came from: an entry written
  for another address (or by an older version that did not record one) is not trusted and the
  version is fetched again;
- otherwise the archive is streamed from ``TrainingService.FetchAdapter`` (~1 MiB chunks; the first
  chunk carries ``AdapterBlobInfo`` with the size and sha256), written to a temp file under
  ``<cache_dir>/.tmp/``, resumed from the byte offset reached when the stream breaks, verified
  against the sha256, extracted safely (relative regular files and folders only: absolute names,
  ``..``, links and devices are rejected) into a staging folder and renamed into place. A killed
  transfer therefore leaves nothing under a hash name, only a ``.tmp`` file that the next start
  removes.

Concurrent ``ensure`` calls for the same version in one process download once. Two processes
sharing a cache folder are safe too (renames are atomic; the loser of a race drops its copy).

Calls to training carry ``auth_token`` (the service's ``training_token``) and, when training
serves TLS, the CA and client certificate from ``LLAMAFLEET_TLS_CA``/``_CERT``/``_KEY`` in the
process environment (as the Python client reads them; ``llamafleet up`` sets them), unless
``credentials`` are passed. A refused token is FAILED_PRECONDITION (no retry fixes it).

What it does not know: what an adapter is. It never opens the files (no torch); the rollout and
reward services load them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import grpc
from llamafleet.common.v1 import common_pb2
from llamafleet.credentials import Credentials, CredentialsError
from llamafleet.training.v1 import training_pb2, training_service_pb2, training_service_pb2_grpc

from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    LlamafleetError,
    NotFound,
    Unavailable,
    invalid,
    shorten,
)
from services.common.limits import check_id

logger = logging.getLogger(__name__)

_TMP = ".tmp"
_REFS = ".refs"
_STALE_TMP_S = 3600.0
_MAX_RESUMES = 5


def ref_str(ref: common_pb2.AdapterRef) -> str:
    """The "<id>@<version>" form used in logs, Redis entries and cache indexes."""
    return f"{ref.id}@{ref.version}" if ref.id else "base"


def check_ref(ref: common_pb2.AdapterRef, field_path: str = "adapter") -> None:
    """A non-empty adapter id needs an explicit version >= 1 (common.proto, AdapterRef); the id
    is bounded (``limits.check_id``) and names no path."""
    if not ref.id:
        if ref.version:
            raise invalid(f"{field_path}.version", "set without an id; leave both empty for base")
        return
    check_id(ref.id, f"{field_path}.id")
    if ref.version < 1:
        raise invalid(f"{field_path}.version", f"must be >= 1 for adapter {shorten(ref.id)}")
    if "/" in ref.id or "\\" in ref.id or ref.id.startswith("."):
        raise invalid(
            f"{field_path}.id", f"{shorten(ref.id)} must not contain '/' or start with '.'"
        )


@dataclass(frozen=True)
class CachedAdapter:
    """A verified, extracted adapter version."""

    ref: common_pb2.AdapterRef
    path: Path  # <cache_dir>/<sha256>/
    sha256: str
    size_bytes: int  # archive size
    base_model: str = ""  # as the training service reported it ("" when read from the index)


class AdapterCache:
    """Fetch-verify-extract of adapter versions from one training service, cached by sha256."""

    def __init__(
        self,
        cache_dir: str | Path,
        training_address: str = "",
        *,
        timeout_s: float = 600.0,
        auth_token: str = "",
        root_certificates: bytes | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        """``credentials`` (token and TLS files) default to ``auth_token`` and the TLS files in
        the environment; ``root_certificates`` (PEM bytes) is TLS with that CA and no client
        certificate instead."""
        self.cache_dir = Path(cache_dir)
        self.training_address = training_address
        self.timeout_s = timeout_s
        if credentials is None:
            tls = Credentials.from_env()
            credentials = Credentials("", tls.tls_ca, tls.tls_cert, tls.tls_key)
        if auth_token:
            credentials = dataclasses.replace(credentials, token=auth_token)
        self._credentials = credentials
        self._metadata = credentials.metadata()
        self._root_certificates = root_certificates
        self._locks: dict[str, threading.Lock] = {}
        self._verified: set[str] = set()  # id@version checked against training in this process
        self._locks_guard = threading.Lock()
        (self.cache_dir / _TMP).mkdir(parents=True, exist_ok=True)
        (self.cache_dir / _REFS).mkdir(parents=True, exist_ok=True)
        self._remove_stale_tmp()

    def ensure(self, ref: common_pb2.AdapterRef) -> Path:
        """The local folder of ``ref`` (fetched first when missing)."""
        return self.fetch(ref).path

    def fetch(self, ref: common_pb2.AdapterRef) -> CachedAdapter:
        """Like :meth:`ensure`, with the sha256 and archive size."""
        check_ref(ref)
        if not ref.id:
            raise invalid("adapter.id", "the base model has no adapter to fetch")
        key = ref_str(ref)
        address = self.training_address
        with self._lock_for(key):
            cached = self.lookup(ref)
            if cached is not None and (key in self._verified or not address):
                return cached
            if cached is not None:
                # The index outlives processes, and a job deleted and re-created under the same id
                # publishes different weights under the same versions: once per process, ask
                # training for the version's sha256 (the first chunk only, no data).
                remote = self._remote_sha256(ref, address, cached.size_bytes)
                if remote is None or remote == cached.sha256:
                    if remote is not None:
                        self._verified.add(key)
                    return cached
                logger.warning(
                    "cached adapter %s (sha256 %s) is not what training serves now (%s): the job "
                    "was re-created; fetching it again",
                    key,
                    cached.sha256[:12],
                    remote[:12] or "a different size",
                )
            fetched = self._download(ref, address)
            self._verified.add(key)
            return fetched

    def _remote_sha256(self, ref: common_pb2.AdapterRef, address: str, size: int) -> str | None:
        """The sha256 training serves for ``ref`` now: the first chunk of a FetchAdapter from the
        end of the cached archive (no data). "" if the archive's size changed, None if training
        cannot be asked right now (the cached copy is used then)."""
        request = training_service_pb2.FetchAdapterRequest(adapter=ref, offset=size)
        try:
            with self._channel(address) as channel:
                stub = training_service_pb2_grpc.TrainingServiceStub(channel)
                for response in stub.FetchAdapter(request, timeout=30, metadata=self._metadata):
                    info = response.chunk.info
                    if info.total_size != size:
                        return ""
                    return info.sha256.lower()
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:  # offset past a smaller archive
                return ""
            logger.warning("could not check cached adapter %s with training: %s", ref_str(ref), exc)
        return None

    def lookup(self, ref: common_pb2.AdapterRef) -> CachedAdapter | None:
        """The cached version fetched from the configured training service, or None; never
        touches the network."""
        index = self.cache_dir / _REFS / ref_str(ref)
        try:
            sha256, size, source = index.read_text().split()
        except (OSError, ValueError):
            return None  # missing, or written without its source (not trusted)
        if source != _source_tag(self.training_address):
            return None
        folder = self.cache_dir / sha256
        if not folder.is_dir():
            return None
        return CachedAdapter(_copy_ref(ref), folder, sha256, int(size))

    def _lock_for(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def _remove_stale_tmp(self) -> None:
        now = time.time()
        for path in (self.cache_dir / _TMP).iterdir():
            try:
                if now - path.stat().st_mtime > _STALE_TMP_S:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            except OSError:
                pass

    def _channel(self, address: str) -> grpc.Channel:
        if self._root_certificates is not None:
            creds = grpc.ssl_channel_credentials(self._root_certificates)
            return grpc.secure_channel(address, creds)
        try:
            return self._credentials.channel(address)  # reads the TLS files now (rotation)
        except CredentialsError as exc:
            raise FailedPrecondition(
                f"cannot call training at {address} for adapters: {exc}", reason="TLS_FILES"
            ) from None

    def _download(self, ref: common_pb2.AdapterRef, address: str) -> CachedAdapter:
        key = ref_str(ref)
        if not address:
            raise FailedPrecondition(
                f"adapter {key} is not cached and no training address is configured; "
                "set training_address",
                reason="NO_TRAINING_ADDRESS",
            )
        started = time.perf_counter()
        tmp = self.cache_dir / _TMP / f"{uuid.uuid4().hex}.tar.part"
        try:
            info = self._stream_to(tmp, ref, address)
            folder = self._install(tmp, info.sha256)
        finally:
            tmp.unlink(missing_ok=True)
        source = _source_tag(address)
        _write_atomically(
            self.cache_dir / _REFS / key, f"{info.sha256} {info.total_size} {source}\n"
        )
        logger.info(
            "fetched adapter %s (%d bytes, sha256 %s) from %s in %.2fs",
            key,
            info.total_size,
            info.sha256[:12],
            address,
            time.perf_counter() - started,
        )
        return CachedAdapter(
            _copy_ref(ref), folder, info.sha256, info.total_size, base_model=info.base_model
        )

    def _stream_to(
        self, tmp: Path, ref: common_pb2.AdapterRef, address: str
    ) -> training_pb2.AdapterBlobInfo:
        key = ref_str(ref)
        hasher = hashlib.sha256()
        info: training_pb2.AdapterBlobInfo | None = None
        written = 0
        resumes = 0
        with self._channel(address) as channel, tmp.open("wb") as out:
            stub = training_service_pb2_grpc.TrainingServiceStub(channel)
            while True:
                request = training_service_pb2.FetchAdapterRequest(adapter=ref, offset=written)
                try:
                    for response in stub.FetchAdapter(
                        request, timeout=self.timeout_s, metadata=self._metadata
                    ):
                        chunk = response.chunk
                        if chunk.HasField("info"):
                            info = _check_info(key, info, chunk.info)
                        if info is None:
                            raise Unavailable(f"adapter {key}: first chunk carries no info")
                        if chunk.offset != written:
                            raise Unavailable(
                                f"adapter {key}: chunk at offset {chunk.offset}, expected {written}"
                            )
                        out.write(chunk.data)
                        hasher.update(chunk.data)
                        written += len(chunk.data)
                    break
                except grpc.RpcError as exc:
                    code = exc.code()
                    if code == grpc.StatusCode.UNAVAILABLE and info and resumes < _MAX_RESUMES:
                        resumes += 1
                        logger.warning(
                            "adapter %s: stream broke at byte %d (%s); resuming", key, written, exc
                        )
                        continue
                    raise _translate(exc, key, address) from None
        if info is None:
            raise Unavailable(f"adapter {key}: training sent an empty stream", reason="NO_DATA")
        if written != info.total_size:
            raise Unavailable(
                f"adapter {key}: got {written} bytes, expected {info.total_size}",
                reason="ADAPTER_TRUNCATED",
            )
        digest = hasher.hexdigest()
        if digest != info.sha256.lower():
            raise Unavailable(
                f"adapter {key}: sha256 {digest} does not match the announced {info.sha256}",
                reason="ADAPTER_CHECKSUM_MISMATCH",
            )
        return info

    def _install(self, tar_path: Path, sha256: str) -> Path:
        final = self.cache_dir / sha256
        if final.is_dir():
            return final
        staging = self.cache_dir / _TMP / f"{sha256}.{uuid.uuid4().hex}.d"
        try:
            extract_tar_safely(tar_path, staging)
            try:
                staging.rename(final)
            except OSError:
                if not final.is_dir():  # not just a lost race with another process
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final


def extract_tar_safely(tar_path: Path, dest: Path) -> None:
    """Extract regular files and folders with relative, ``..``-free names; refuse anything else."""
    dest.mkdir(parents=True)
    with tarfile.open(tar_path, mode="r:") as tar:
        for member in tar:
            name = PurePosixPath(member.name)
            if name.is_absolute() or ".." in name.parts or member.name.startswith(("/", "\\")):
                raise InvalidArgument(
                    f"adapter archive member {member.name!r} escapes the folder",
                    reason="UNSAFE_ARCHIVE",
                )
            if not (member.isfile() or member.isdir()):
                raise InvalidArgument(
                    f"adapter archive member {member.name!r} is not a regular file or folder",
                    reason="UNSAFE_ARCHIVE",
                )
            target = dest.joinpath(*name.parts) if name.parts else dest
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None  # a regular file always has data
            with source, target.open("wb") as out:
                shutil.copyfileobj(source, out)


def _check_info(
    key: str,
    previous: training_pb2.AdapterBlobInfo | None,
    info: training_pb2.AdapterBlobInfo,
) -> training_pb2.AdapterBlobInfo:
    if info.format not in (  # both are tars; the service loading the folder tells them apart
        training_pb2.ADAPTER_FORMAT_PEFT_TAR,
        training_pb2.ADAPTER_FORMAT_FULL_SAFETENSORS,
        training_pb2.ADAPTER_FORMAT_UNSPECIFIED,
    ):
        raise FailedPrecondition(
            f"adapter {key}: unsupported archive format {info.format}", reason="ADAPTER_FORMAT"
        )
    if previous is not None and previous.sha256 != info.sha256:
        raise Unavailable(
            f"adapter {key} changed during the download (sha256 {previous.sha256[:12]} -> "
            f"{info.sha256[:12]})",
            reason="ADAPTER_CHANGED",
        )
    return info


def _translate(exc: grpc.RpcError, key: str, address: str) -> LlamafleetError:
    code, detail = exc.code(), exc.details()
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(
            f"adapter {key} not found on training at {address}: {detail}",
            reason="ADAPTER_NOT_FOUND",
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(f"training rejected adapter {key}: {detail}", reason="BAD_ADAPTER")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return FailedPrecondition(
            f"training at {address} refused to serve adapter {key} ({detail}); set this "
            "service's training_token to training's auth_token",
            reason="TRAINING_UNAUTHENTICATED",
        )
    hint = ""
    if code == grpc.StatusCode.UNAVAILABLE and "socket closed" in (detail or "").lower():
        hint = (
            "; if training serves TLS, set LLAMAFLEET_TLS_CA (and LLAMAFLEET_TLS_CERT/_KEY for "
            "mutual TLS) in this service's environment"
        )
    return Unavailable(
        f"fetching adapter {key} from training at {address} failed: {code.name}: {detail}{hint}",
        reason="ADAPTER_FETCH_FAILED",
    )


def _source_tag(address: str) -> str:
    """The training address as one index word ("-" for none: entries then never match)."""
    return address.strip().replace(" ", "") or "-"


def _copy_ref(ref: common_pb2.AdapterRef) -> common_pb2.AdapterRef:
    return common_pb2.AdapterRef(id=ref.id, version=ref.version)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}")
    tmp.write_text(text)
    tmp.replace(path)
