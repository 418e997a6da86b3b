"""Raw records out of files: json, jsonl, csv, parquet, arrow, text, and folders of them.

``iter_records`` yields ``Record``s lazily (jsonl, csv, text, parquet and arrow are read a line or
a record batch at a time, so a file larger than memory streams; a json array is parsed whole).
Rows are numbered from 1 in each file. A row that cannot be decoded (bad JSON, non-UTF-8 bytes)
comes out as a ``Record`` carrying a ``RowError`` instead of being skipped here: the caller's
bad-row policy decides.

Sizes are bounded while reading (``ReadLimits``): a line longer than ``record_bytes`` is read in
bounded chunks up to its end and comes out as a ``too_long`` bad row, never held whole; a ``.json``
file (one document, parsed whole) larger than ``json_bytes`` is one ``too_long`` bad row, never
read. Nothing here checks where a path points: the service resolves request paths under its
roots (``access.py``) before they reach this module.

It knows nothing about record formats beyond "a record is a dict".
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import FieldViolation, InvalidArgument, invalid
from services.data.formats import RowError

FILE_TYPES = ("json", "jsonl", "csv", "parquet", "arrow", "text")
_EXTENSIONS = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
}
DATA_SUFFIXES = tuple(_EXTENSIONS)
_ARROW_BATCH = 1024
_SKIP_CHUNK = 1 << 20


@dataclass(frozen=True)
class ReadLimits:
    """How large one record may be (the data service's ``max_record_bytes``/``max_json_file_mb``)."""

    record_bytes: int = 16 << 20  # a line (jsonl, csv, text)
    json_bytes: int = 256 << 20  # a whole .json file


DEFAULT_READ_LIMITS = ReadLimits()


@dataclass
class Record:
    """One raw record (or the reason it could not be read) and where it came from."""

    file: str
    row: int
    value: Any = None
    error: RowError | None = None


def expand(paths: list[str], field: str = "sources.files.paths") -> list[Path]:
    """Files named by ``paths``; a directory stands for its files sorted by name (not hidden)."""
    files: list[Path] = []
    for i, raw in enumerate(paths):
        p = Path(raw)
        if p.is_dir():
            found = sorted(c for c in p.iterdir() if c.is_file() and not c.name.startswith("."))
            found = [c for c in found if c.suffix.lower() in _EXTENSIONS]
            if not found:
                raise invalid(f"{field}[{i}]", f"directory {raw} holds no data files", "NO_FILES")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise invalid(f"{field}[{i}]", f"{raw} does not exist", "FILE_NOT_FOUND")
    return files


def file_type_of(path: Path, given: str = "") -> str:
    if given:
        return given
    kind = _EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        valid = ", ".join(sorted(_EXTENSIONS))
        raise invalid("sources.files.paths", f"{path}: unknown extension; use one of {valid}")
    return kind


def iter_records(
    files: list[Path],
    file_type: str = "",
    text_column: str = "text",
    limits: ReadLimits = DEFAULT_READ_LIMITS,
):
    """All records of ``files`` in order, lazily."""
    for path in files:
        kind = file_type_of(path, file_type)
        reader = _READERS[kind]
        if kind == "text":
            yield from _text(path, text_column, limits)
        else:
            yield from reader(path, limits)


def bounded_lines(f, limit: int) -> Iterator[bytes | None]:
    """The lines of binary file ``f`` (newline kept), each at most ``limit`` bytes before its
    newline; a longer line is skipped in ``_SKIP_CHUNK`` pieces to its end and comes out as
    None, so it is never held in memory whole."""
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        del line
        while True:
            chunk = f.readline(_SKIP_CHUNK)
            if not chunk or chunk.endswith(b"\n"):
                break
        yield None


def _too_long(limits: ReadLimits) -> RowError:
    return RowError(
        "too_long",
        "",
        f"line longer than {limits.record_bytes} bytes (the data service's max_record_bytes)",
    )


def _jsonl(path: Path, limits: ReadLimits) -> Iterator[Record]:
    name = path.name
    with open(path, "rb") as f:
        for row, line in enumerate(bounded_lines(f, limits.record_bytes), start=1):
            if line is None:
                yield Record(name, row, error=_too_long(limits))
                continue
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Record(name, row, error=_utf8_error(exc))
                continue
            try:
                yield Record(name, row, json.loads(text))
            except json.JSONDecodeError as exc:
                yield Record(name, row, error=RowError("invalid_json", "", f"not JSON: {exc.msg}"))


def _json(path: Path, limits: ReadLimits) -> Iterator[Record]:
    name = path.name
    size = path.stat().st_size
    if size > limits.json_bytes:
        mib = limits.json_bytes >> 20
        yield Record(
            name,
            1,
            error=RowError(
                "too_long",
                "",
                f"a .json file is parsed whole and this one has {size} bytes, more than "
                f"{mib} MiB (the data service's max_json_file_mb); write it as .jsonl",
            ),
        )
        return
    value, error = _parse_json_file(path)
    if error is not None:
        yield Record(name, 1, error=error)
        return
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        yield Record(name, 1, error=RowError("invalid_json", "", "expected an array of records"))
        return
    for row, item in enumerate(value, start=1):
        yield Record(name, row, item)


def _parse_json_file(path: Path) -> tuple[object, RowError | None]:
    """The parsed document, or the reason it is not one. The bytes and the text are dropped
    before returning (a failed file must not stay referenced from a suspended generator)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, _utf8_error(exc)
    del data
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, RowError("invalid_json", "", f"not JSON: {exc.msg}")  # exc.doc is the text
    except RecursionError:
        return None, RowError("invalid_json", "", "not JSON: nested too deeply")


class _CsvLines:
    """Decoded lines for ``csv.reader``, each bounded like ``bounded_lines``; a too-long line is
    replaced by an empty one (which the reader skips) and counted in ``too_long``."""

    def __init__(self, f, limit: int) -> None:
        self._lines = bounded_lines(f, limit)
        self.too_long = 0

    def __iter__(self) -> Iterator[str]:
        for line in self._lines:
            if line is None:
                self.too_long += 1
                yield "\n"
            else:
                yield line.decode("utf-8", errors="surrogateescape")


def _csv(path: Path, limits: ReadLimits) -> Iterator[Record]:
    name = path.name
    csv.field_size_limit(max(limits.record_bytes, 131072))
    with open(path, "rb") as f:
        lines = _CsvLines(f, limits.record_bytes)
        reported = 0
        row = 0
        try:
            for item in csv.DictReader(lines):
                while reported < lines.too_long:
                    reported += 1
                    row += 1
                    yield Record(name, row, error=_too_long(limits))
                row += 1
                bad = next(
                    (k for k, v in item.items() if isinstance(v, str) and _has_surrogate(v)), None
                )
                if bad is not None:
                    yield Record(name, row, error=RowError("invalid_utf8", bad, "not valid UTF-8"))
                    continue
                yield Record(name, row, dict(item))
        except csv.Error as exc:
            raise _unreadable(path, "CSV", exc) from None
        while reported < lines.too_long:
            reported += 1
            row += 1
            yield Record(name, row, error=_too_long(limits))


def _text(path: Path, column: str, limits: ReadLimits) -> Iterator[Record]:
    name = path.name
    with open(path, "rb") as f:
        for row, line in enumerate(bounded_lines(f, limits.record_bytes), start=1):
            if line is None:
                yield Record(name, row, error=_too_long(limits))
                continue
            try:
                text = line.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                yield Record(name, row, error=_utf8_error(exc))
                continue
            if text.strip():
                yield Record(name, row, {column: text})


def _unreadable(path: Path, what: str, exc: Exception) -> InvalidArgument:
    """A whole file that its reader cannot open or decode (no row to blame)."""
    detail = " ".join(str(exc).split())[:200]
    return InvalidArgument(
        f"{path.name} is not a readable {what} file: {detail}",
        reason="UNREADABLE_FILE",
        violations=[FieldViolation(str(path), f"not a readable {what} file")],
    )


def _parquet(path: Path, limits: ReadLimits) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=_ARROW_BATCH)
        for batch in batches:
            for item in batch.to_pylist():
                row += 1
                yield Record(path.name, row, item)
    except (pa.ArrowException, OSError) as exc:  # not Parquet, or truncated/corrupt
        raise _unreadable(path, "Parquet", exc) from None


def _arrow(path: Path, limits: ReadLimits) -> Iterator[Record]:
    import pyarrow as pa

    row = 0
    try:
        with pa.memory_map(str(path)) as source:
            try:
                reader = pa.ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            except pa.ArrowInvalid:  # Hugging Face datasets write the IPC stream format
                source.seek(0)
                batches = iter(pa.ipc.open_stream(source))
            for batch in batches:
                for item in batch.to_pylist():
                    row += 1
                    yield Record(path.name, row, item)
    except (pa.ArrowException, OSError) as exc:  # not Arrow IPC, or truncated/corrupt
        raise _unreadable(path, "Arrow", exc) from None


_READERS = {
    "json": _json,
    "jsonl": _jsonl,
    "csv": _csv,
    "parquet": _parquet,
    "arrow": _arrow,
    "text": _text,
}


def _utf8_error(exc: UnicodeDecodeError) -> RowError:
    return RowError("invalid_utf8", "", f"not valid UTF-8 (byte {exc.start})")


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def fingerprint_files(files: list[Path]) -> str:
    """A content hash of ``files``: name, size, mtime and the first and last MiB of each.

    Cheap on files of many GB; a change in the middle of a file that keeps its size and mtime is
    not seen (documented limit).
    """
    h = hashlib.sha256()
    for path in files:
        st = path.stat()
        h.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        with open(path, "rb") as f:
            h.update(f.read(1 << 20))
            if st.st_size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read(1 << 20))
    return h.hexdigest()
