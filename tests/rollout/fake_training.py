"""A stand-in training service for rollout tests: serves FetchAdapter from local PEFT folders.

It packs each folder the way the contract says training does (an uncompressed tar, members
sorted and relative, fixed mtimes, ~1 MiB chunks, info with size and sha256 in the first chunk,
``offset`` resume), counts the fetches, and can be slowed down per chunk.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from llamafleet.common.v1 import common_pb2
from llamafleet.training.v1 import training_pb2, training_service_pb2, training_service_pb2_grpc

CHUNK = 1 << 20


def pack(folder: Path) -> bytes:
    """A deterministic tar of ``folder``'s files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            data = path.read_bytes()
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class FakeTraining(training_service_pb2_grpc.TrainingServiceServicer):
    def __init__(self) -> None:
        self.blobs: dict[tuple[str, int], bytes] = {}
        self.fetches: list[tuple[str, int, int]] = []
        self.bases: dict[tuple[str, int], str] = {}
        self.chunk_delay_s = 0.0
        self.chunk_size = CHUNK
        self.gate = threading.Event()  # cleared: streams stall after their first chunk
        self.gate.set()
        self.stalled = threading.Event()  # set when a stream stalls at the gate
        self._lock = threading.Lock()

    def add(self, adapter_id: str, version: int, folder: Path, base_model: str = "") -> None:
        """Serve ``folder`` as ``adapter_id@version``, reported as trained on ``base_model``."""
        self.blobs[(adapter_id, version)] = pack(folder)
        self.bases[(adapter_id, version)] = base_model

    def FetchAdapter(self, request, context):
        key = (request.adapter.id, request.adapter.version)
        with self._lock:
            self.fetches.append((*key, request.offset))
        blob = self.blobs.get(key)
        if blob is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no adapter {key[0]}@{key[1]}")
        info = training_pb2.AdapterBlobInfo(
            adapter=common_pb2.AdapterRef(id=key[0], version=key[1]),
            total_size=len(blob),
            sha256=hashlib.sha256(blob).hexdigest(),
            format=training_pb2.ADAPTER_FORMAT_PEFT_TAR,
            base_model=self.bases.get(key, ""),
        )
        offset = request.offset
        first = True
        while first or offset < len(blob):
            if self.chunk_delay_s:
                time.sleep(self.chunk_delay_s)
            if not first and not self.gate.is_set():
                self.stalled.set()
                self.gate.wait(30)
            data = blob[offset : offset + self.chunk_size]
            chunk = training_pb2.AdapterChunk(offset=offset, data=data)
            if first:
                chunk.info.CopyFrom(info)
                first = False
            yield training_service_pb2.FetchAdapterResponse(chunk=chunk)
            offset += len(data)


class TrainingServer:
    """``with TrainingServer() as t:`` a real gRPC server on a free loopback port."""

    def __init__(self) -> None:
        self.servicer = FakeTraining()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        training_service_pb2_grpc.add_TrainingServiceServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"

    def __enter__(self) -> TrainingServer:
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.servicer.gate.set()
        self.server.stop(0)
