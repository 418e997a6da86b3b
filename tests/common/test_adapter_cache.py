"""The adapter cache against a real gRPC FetchAdapter server: fetch, verify, resume, refuse.

The fake training servicer serves archives built here (tar bytes of small files; the cache never
opens adapter files, so no torch), and can misbehave on purpose: break the stream midway, lie about
the sha256, or serve an archive with a path escape or a link.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from llamafleet.common.v1 import common_pb2
from llamafleet.training.v1 import training_pb2, training_service_pb2, training_service_pb2_grpc

from services.common import errors
from services.common.adapter_cache import AdapterCache, extract_tar_safely

CHUNK = 1000  # small chunks so a few KiB stream as several messages


def tar_of(files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(files[name]), 0
            tar.addfile(info, io.BytesIO(files[name]))
        for info in extra:
            tar.addfile(info)
    return buf.getvalue()


FILES = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": bytes(range(256)) * 20}


class Training(training_service_pb2_grpc.TrainingServiceServicer):
    def __init__(self) -> None:
        self.blobs: dict[tuple[str, int], bytes] = {}
        self.requests: list[int] = []  # offsets asked for
        self.break_after_chunks: int | None = None  # abort UNAVAILABLE once, after this many
        self.lie_sha = False
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def FetchAdapter(self, request, context):
        self.requests.append(request.offset)
        key = (request.adapter.id, request.adapter.version)
        if key not in self.blobs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no adapter {key}")
        blob = self.blobs[key]
        sha = hashlib.sha256(b"other" if self.lie_sha else blob).hexdigest()
        info = training_pb2.AdapterBlobInfo(
            adapter=request.adapter, total_size=len(blob), sha256=sha,
            format=training_pb2.ADAPTER_FORMAT_PEFT_TAR,
        )  # fmt: skip
        offset, sent = request.offset, 0
        if offset == len(blob):  # as the real servicer: one empty chunk carrying the info
            chunk = training_pb2.AdapterChunk(offset=offset, data=b"")
            chunk.info.CopyFrom(info)
            yield training_service_pb2.FetchAdapterResponse(chunk=chunk)
        while offset < len(blob):
            if self.break_after_chunks is not None and sent == self.break_after_chunks:
                self.break_after_chunks = None
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset (injected)")
            self.started.set()
            self.release.wait(10)
            chunk = training_pb2.AdapterChunk(offset=offset, data=blob[offset : offset + CHUNK])
            if sent == 0:
                chunk.info.CopyFrom(info)
            yield training_service_pb2.FetchAdapterResponse(chunk=chunk)
            offset, sent = offset + CHUNK, sent + 1


@pytest.fixture
def training():
    servicer = Training()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    training_service_pb2_grpc.add_TrainingServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.address = f"127.0.0.1:{port}"
    yield servicer
    servicer.release.set()
    server.stop(0)


def ref(adapter_id="policy", version=1) -> common_pb2.AdapterRef:
    return common_pb2.AdapterRef(id=adapter_id, version=version)


def cache_entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def test_fetch_verifies_extracts_and_caches_by_sha256(training, tmp_path):
    blob = tar_of(FILES)
    training.blobs[("policy", 1)] = blob
    cache = AdapterCache(tmp_path / "cache", training.address)
    got = cache.fetch(ref())
    assert got.sha256 == hashlib.sha256(blob).hexdigest() and got.size_bytes == len(blob)
    assert got.path == tmp_path / "cache" / got.sha256
    assert {p.name: p.read_bytes() for p in got.path.iterdir()} == FILES
    assert len(training.requests) == 1
    # cached: no second request, from this object
    assert cache.ensure(ref()) == got.path
    assert len(training.requests) == 1
    # the entry is bound to the training service it came from: a cache configured with another
    # one (or none) over the same folder does not trust it
    with pytest.raises(errors.FailedPrecondition, match="no training address"):
        AdapterCache(tmp_path / "cache", "").ensure(ref())
    # another version with equal bytes shares the folder
    training.blobs[("policy", 2)] = blob
    assert cache.ensure(ref(version=2)) == got.path
    assert cache_entries(tmp_path / "cache") == [got.sha256]


def test_a_version_cached_by_an_earlier_process_is_checked_once_and_refetched_if_changed(
    training, tmp_path
):
    """A job deleted and re-created under its id publishes other weights as policy@1; a new
    process over the same cache folder asks training for the sha256 (no data) and refetches."""
    old = tar_of(FILES)
    training.blobs[("policy", 1)] = old
    AdapterCache(tmp_path / "cache", training.address).ensure(ref())
    assert training.requests == [0]
    same = AdapterCache(tmp_path / "cache", training.address)  # a restarted worker, same job
    assert same.fetch(ref()).sha256 == hashlib.sha256(old).hexdigest()
    assert same.fetch(ref()).sha256 == hashlib.sha256(old).hexdigest()
    assert training.requests == [0, len(old)]  # one check, from the end: no data sent
    new_files = {**FILES, "adapter_model.safetensors": bytes(range(255, -1, -1)) * 20}
    training.blobs[("policy", 1)] = tar_of(new_files)  # the job was re-created
    fresh = AdapterCache(tmp_path / "cache", training.address).fetch(ref())
    assert {p.name: p.read_bytes() for p in fresh.path.iterdir()} == new_files
    assert training.requests == [0, len(old), len(old), 0]


def test_concurrent_ensure_downloads_once(training, tmp_path):
    training.blobs[("policy", 1)] = tar_of(FILES)
    cache = AdapterCache(tmp_path / "cache", training.address)
    with futures.ThreadPoolExecutor(4) as pool:
        paths = set(pool.map(lambda _: cache.ensure(ref()), range(4)))
    assert len(paths) == 1 and len(training.requests) == 1


def test_broken_stream_resumes_from_offset(training, tmp_path):
    blob = tar_of(FILES)
    training.blobs[("policy", 1)] = blob
    training.break_after_chunks = 2
    got = AdapterCache(tmp_path / "cache", training.address).fetch(ref())
    assert training.requests == [0, 2 * CHUNK]
    assert got.sha256 == hashlib.sha256(blob).hexdigest()


def test_sha256_mismatch_is_refused_and_leaves_nothing(training, tmp_path):
    training.blobs[("policy", 1)] = tar_of(FILES)
    training.lie_sha = True
    cache = AdapterCache(tmp_path / "cache", training.address)
    with pytest.raises(errors.Unavailable, match="sha256") as info:
        cache.ensure(ref())
    assert info.value.reason == "ADAPTER_CHECKSUM_MISMATCH"
    assert cache_entries(tmp_path / "cache") == []
    assert list((tmp_path / "cache" / ".tmp").iterdir()) == []


def test_missing_version_is_not_found(training, tmp_path):
    with pytest.raises(errors.NotFound, match="policy@7"):
        AdapterCache(tmp_path / "cache", training.address).ensure(ref(version=7))


def test_bad_refs_and_no_address(tmp_path):
    cache = AdapterCache(tmp_path / "cache", "")
    with pytest.raises(errors.InvalidArgument) as info:
        cache.ensure(ref(version=0))
    assert info.value.violations[0].field == "adapter.version"
    with pytest.raises(errors.InvalidArgument):
        cache.ensure(ref(adapter_id="../x"))
    with pytest.raises(errors.FailedPrecondition, match="training_address"):
        cache.ensure(ref())


def test_killed_transfer_leaves_no_file_under_a_hash(training, tmp_path):
    training.blobs[("policy", 1)] = tar_of(FILES)
    training.release.clear()  # the server stalls after the first chunk
    cache = AdapterCache(tmp_path / "cache", training.address, timeout_s=1.0)
    with pytest.raises(errors.Unavailable):
        cache.ensure(ref())  # the deadline cuts the stream, like a killed transfer
    assert cache_entries(tmp_path / "cache") == []
    assert list((tmp_path / "cache" / ".tmp").iterdir()) == []


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "bad",
    [
        {"files": {"../escape.txt": b"x"}},
        {"files": {"/etc/evil": b"x"}},
        {"files": {"a/../../escape": b"x"}},
        {"extra": [_link("adapter_model.safetensors", "/etc/passwd")]},
        {"extra": [_link("hard", "adapter_config.json", tarfile.LNKTYPE)]},
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "symlink", "hardlink"],
)
def test_unsafe_archives_are_refused(training, tmp_path, bad):
    blob = tar_of({**FILES, **bad.get("files", {})}, bad.get("extra", []))
    training.blobs[("policy", 1)] = blob
    with pytest.raises(errors.InvalidArgument, match="archive member") as info:
        AdapterCache(tmp_path / "cache", training.address).ensure(ref())
    assert info.value.reason == "UNSAFE_ARCHIVE"
    assert cache_entries(tmp_path / "cache") == []
    assert not (tmp_path / "escape.txt").exists()


def test_extract_tar_safely_keeps_subfolders(tmp_path):
    (tmp_path / "a.tar").write_bytes(tar_of({"sub/x.bin": b"1", "y.json": b"{}"}))
    extract_tar_safely(tmp_path / "a.tar", tmp_path / "out")
    assert (tmp_path / "out" / "sub" / "x.bin").read_bytes() == b"1"
