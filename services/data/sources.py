"""Raw records out of files: json, jsonl, csv, parquet, arrow, text, and folders of them.

``iter_records`` yields ``Record``s lazily (jsonl, csv, text, parquet and arrow are read a line or
a record batch at a time, so a file larger than memory streams; a json array is parsed whole).
Rows are numbered from 1 in each file. A row that cannot be decoded (bad JSON, non-UTF-8 bytes)
comes out as a ``Record`` carrying a ``RowError`` instead of being skipped here: the caller's
bad-row policy decides.

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
_ARROW_BATCH = 1024


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


def iter_records(files: list[Path], file_type: str = "", text_column: str = "text"):
    """All records of ``files`` in order, lazily."""
    for path in files:
        kind = file_type_of(path, file_type)
        reader = _READERS[kind]
        if kind == "text":
            yield from _text(path, text_column)
        else:
            yield from reader(path)


def _jsonl(path: Path) -> Iterator[Record]:
    name = path.name
    with open(path, "rb") as f:
        for row, line in enumerate(f, start=1):
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


def _json(path: Path) -> Iterator[Record]:
    name = path.name
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield Record(name, 1, error=_utf8_error(exc))
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        yield Record(name, 1, error=RowError("invalid_json", "", f"not JSON: {exc.msg}"))
        return
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        yield Record(name, 1, error=RowError("invalid_json", "", "expected an array of records"))
        return
    for row, item in enumerate(value, start=1):
        yield Record(name, row, item)


def _csv(path: Path) -> Iterator[Record]:
    name = path.name
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        for row, item in enumerate(csv.DictReader(f), start=1):
            bad = next(
                (k for k, v in item.items() if isinstance(v, str) and _has_surrogate(v)), None
            )
            if bad is not None:
                yield Record(name, row, error=RowError("invalid_utf8", bad, "not valid UTF-8"))
                continue
            yield Record(name, row, dict(item))


def _text(path: Path, column: str) -> Iterator[Record]:
    name = path.name
    with open(path, "rb") as f:
        for row, line in enumerate(f, start=1):
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


def _parquet(path: Path) -> Iterator[Record]:
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


def _arrow(path: Path) -> Iterator[Record]:
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
