"""Adapter versions as deterministic tar archives, streamed in chunks without being built.

FetchAdapter sends a PEFT adapter folder as an uncompressed POSIX tar (``ADAPTER_FORMAT_PEFT_TAR``)
whose bytes depend only on the files' names and contents: members are the folder's regular
files (hidden ones skipped), named relative to it, sorted, with mtime 0, mode 0644 and no owner.
So equal weights give an equal sha256, on any machine, however often the archive is made.

The archive is never materialised: ``AdapterArchive`` lays out the headers (from ``tarfile``, so
the bytes are exactly what ``tarfile`` would write) and reads file contents at stream time, from
any byte offset (a receiver resuming a download). The sha256 of a folder is computed once and
cached while the folder's files are unchanged. This module knows nothing about jobs or gRPC.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import FailedPrecondition

CHUNK_SIZE = 1 << 20  # bytes of archive data per FetchAdapter message
_BLOCK = tarfile.BLOCKSIZE  # 512
_RECORD = tarfile.RECORDSIZE  # 20 blocks: tarfile pads the archive to a multiple of this
_READ = 1 << 20


@dataclass(frozen=True)
class _Member:
    name: str
    path: Path
    size: int
    mtime_ns: int
    header: bytes


@dataclass(frozen=True)
class ArchiveInfo:
    total_size: int
    sha256: str


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class AdapterArchive:
    """The deterministic tar of one folder: its size, its sha256 and its bytes from an offset."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        members = []
        for path in sorted(
            self.folder.rglob("*"), key=lambda p: p.relative_to(self.folder).as_posix()
        ):
            rel = path.relative_to(self.folder).as_posix()
            if any(part.startswith(".") for part in rel.split("/")) or not path.is_file():
                continue
            stat = path.stat()
            members.append(
                _Member(rel, path, stat.st_size, stat.st_mtime_ns, _header(rel, stat.st_size))
            )
        self.members: tuple[_Member, ...] = tuple(members)
        body = sum(len(m.header) + _padded(m.size) for m in members) + 2 * _BLOCK
        self.total_size = body + (-body % _RECORD)

    @property
    def fingerprint(self) -> tuple:
        return tuple((m.name, m.size, m.mtime_ns) for m in self.members)

    def pieces(self, offset: int = 0) -> Iterator[bytes]:
        """The archive's bytes from ``offset`` to the end, in pieces of at most 1 MiB."""
        pos = 0
        for member in self.members:
            if pos + len(member.header) > offset:
                yield member.header[max(0, offset - pos) :]
            pos += len(member.header)
            end = pos + _padded(member.size)
            if end > offset:
                yield from _file_pieces(member, max(0, offset - pos))
            pos = end
        tail = self.total_size - pos - max(0, offset - pos)
        if tail > 0:
            yield bytes(tail)

    def chunks(self, offset: int = 0, size: int = CHUNK_SIZE) -> Iterator[tuple[int, bytes]]:
        """``(offset, data)`` pairs of exactly ``size`` bytes (the last may be shorter)."""
        buffer = bytearray()
        start = offset
        for piece in self.pieces(offset):
            buffer += piece
            while len(buffer) >= size:
                yield start, bytes(buffer[:size])
                del buffer[:size]
                start += size
        if buffer:
            yield start, bytes(buffer)

    def compute_sha256(self) -> str:
        digest = hashlib.sha256()
        for piece in self.pieces(0):
            digest.update(piece)
        return digest.hexdigest()


def _padded(size: int) -> int:
    return size + (-size % _BLOCK)


def _file_pieces(member: _Member, skip: int) -> Iterator[bytes]:
    """The member's data plus its padding to a block, from ``skip`` bytes in."""
    if skip < member.size:
        with open(member.path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size != member.size:
                raise FailedPrecondition(
                    f"adapter file {member.path} changed while it was being served; fetch again",
                    reason="ADAPTER_CHANGED",
                )
            fh.seek(skip)
            left = member.size - skip
            while left > 0:
                data = fh.read(min(_READ, left))
                if not data:
                    raise FailedPrecondition(
                        f"adapter file {member.path} shrank while it was being served",
                        reason="ADAPTER_CHANGED",
                    )
                left -= len(data)
                yield data
    padding = _padded(member.size) - member.size
    if padding:
        yield bytes(padding - max(0, skip - member.size))


_cache: dict[str, tuple[tuple, ArchiveInfo]] = {}
_cache_lock = threading.Lock()


def archive_info(folder: str | os.PathLike) -> tuple[AdapterArchive, ArchiveInfo]:
    """The folder's archive and its size + sha256 (cached while the files are unchanged)."""
    archive = AdapterArchive(folder)
    key = str(archive.folder.resolve())
    with _cache_lock:
        cached = _cache.get(key)
    if cached and cached[0] == archive.fingerprint:
        return archive, cached[1]
    info = ArchiveInfo(archive.total_size, archive.compute_sha256())
    with _cache_lock:
        _cache[key] = (archive.fingerprint, info)
    return archive, info
