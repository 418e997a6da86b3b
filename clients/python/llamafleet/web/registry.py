"""The dataset registry as the web UI sees it: entries of a LLaMA-Factory ``dataset_info.json``
and one raw record of an entry, to preview through ``DataService.PreviewExample``.

The data service has no RPC that lists registry entries or previews one by name, so this module
reads the registry file itself: it works where the web app and the data service share a file
system (the local cluster). It only reads; templating and masking stay in the data service.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llamafleet.data.v1 import data_pb2

REGISTRY_FILE = "dataset_info.json"
FORMATS = {
    "alpaca": data_pb2.DATASET_FORMAT_ALPACA,
    "sharegpt": data_pb2.DATASET_FORMAT_SHAREGPT,
    "preference_alpaca": data_pb2.DATASET_FORMAT_PREFERENCE_ALPACA,
    "preference_sharegpt": data_pb2.DATASET_FORMAT_PREFERENCE_SHAREGPT,
}
_IGNORED_COLUMNS = {"images", "videos", "audios", "kto_tag"}
_MAX_JSON_BYTES = 64 * 1024 * 1024


class RegistryError(ValueError):
    """The registry or its entry cannot be read; the message says what and where."""


def load(dataset_dir: str) -> dict[str, Any]:
    path = Path(dataset_dir).expanduser() / REGISTRY_FILE
    if not path.is_file():
        raise RegistryError(f"no {REGISTRY_FILE} in {dataset_dir}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: expected an object of dataset entries")
    return data


def entries(dataset_dir: str) -> list[dict[str, Any]]:
    """One summary per entry: name, formatting, ranking, file."""
    rows = []
    for name, entry in sorted(load(dataset_dir).items()):
        entry = entry if isinstance(entry, dict) else {}
        rows.append(
            {
                "name": name,
                "formatting": entry.get("formatting", "alpaca"),
                "ranking": bool(entry.get("ranking", False)),
                "file_name": entry.get("file_name", ""),
            }
        )
    return rows


def format_options(dataset_dir: str, name: str) -> data_pb2.FormatOptions:
    entry = _entry(dataset_dir, name)
    formatting = entry.get("formatting", "alpaca")
    key = f"preference_{formatting}" if entry.get("ranking") else formatting
    if key not in FORMATS:
        raise RegistryError(f"{name}: formatting {formatting!r} is not alpaca or sharegpt")
    columns = {k: v for k, v in (entry.get("columns") or {}).items() if k not in _IGNORED_COLUMNS}
    try:
        return data_pb2.FormatOptions(
            format=FORMATS[key],
            columns=data_pb2.ColumnMapping(**columns),
            tags=data_pb2.RoleTags(**(entry.get("tags") or {})),
        )
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{name}: bad columns or tags: {exc}") from None


def first_record(dataset_dir: str, name: str) -> dict[str, Any]:
    """The entry's first record (json array, jsonl; a folder's first such file)."""
    entry = _entry(dataset_dir, name)
    file_name = entry.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        raise RegistryError(f"{name}: no file_name (hub datasets cannot be previewed here)")
    path = Path(dataset_dir).expanduser() / file_name
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
        if not files:
            raise RegistryError(f"{name}: no .json or .jsonl file in {path}")
        path = files[0]
    if not path.is_file():
        raise RegistryError(f"{name}: {path} does not exist")
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    return _record(json.loads(line), path)
        raise RegistryError(f"{name}: {path} is empty")
    if path.suffix == ".json":
        if path.stat().st_size > _MAX_JSON_BYTES:
            raise RegistryError(f"{name}: {path} is too large to preview (use .jsonl)")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list) or not data:
            raise RegistryError(f"{name}: {path} is not a non-empty JSON array")
        return _record(data[0], path)
    raise RegistryError(f"{name}: preview reads .json and .jsonl files, not {path.suffix}")


def _record(value: Any, path: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RegistryError(f"{path}: the first record is not an object")
    return value


def _entry(dataset_dir: str, name: str) -> dict[str, Any]:
    registry = load(dataset_dir)
    if name not in registry:
        raise RegistryError(f"no dataset {name!r} in {dataset_dir}/{REGISTRY_FILE}")
    entry = registry[name]
    if not isinstance(entry, dict):
        raise RegistryError(f"{name}: an entry must be an object")
    return entry
