"""A LLaMA-Factory compatible dataset registry: ``dataset_info.json``.

An entry names local files (``file_name``: a file or a folder, relative to the registry's
directory), their shape (``formatting``: alpaca | sharegpt, ``ranking``: preference pairs) and the
``columns`` and ``tags`` renames; an existing ``dataset_info.json`` works unchanged. Hub entries
(``hf_hub_url``, ``ms_hub_url``, ``om_hub_url``, ``script_url``, ``cloud_file_name``) cannot be
read here (no machine reaches a hub) and are INVALID_ARGUMENT saying so. A ``kto_tag`` column makes
the entry a feedback (KTO) dataset; ``images``, ``videos`` and ``audios`` columns are kept so that
a record holding media is refused by name (multimodal training is not supported), never read
without them.

It knows nothing about tokenizers or templates.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from services.common.config import nearest
from services.common.errors import FieldViolation, InvalidArgument, NotFound, invalid
from services.data.formats import DEFAULT_COLUMNS, SHAREGPT_TAGS, FormatSpec

logger = logging.getLogger(__name__)

REGISTRY_FILE = "dataset_info.json"
_HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
_KNOWN_KEYS = {
    "file_name", "formatting", "ranking", "columns", "tags", "subset", "split", "folder",
    "num_samples", *_HUB_KEYS,
}  # fmt: skip


@dataclass(frozen=True)
class RegistryDataset:
    """What one entry resolves to: files, their format and an optional sample limit."""

    name: str
    paths: list[str]
    format: FormatSpec
    num_samples: int | None = None


def load_registry(dataset_dir: str) -> dict:
    path = Path(dataset_dir) / REGISTRY_FILE
    if not path.is_file():
        raise NotFound(f"no {REGISTRY_FILE} in {dataset_dir}", reason="REGISTRY_NOT_FOUND")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(str(path), f"not valid JSON: {exc}", "BAD_REGISTRY") from None
    if not isinstance(data, dict):
        raise invalid(str(path), "expected an object of dataset entries", "BAD_REGISTRY")
    return data


def resolve(dataset_dir: str, name: str) -> RegistryDataset:
    """The entry ``name`` of ``dataset_dir/dataset_info.json``, checked."""
    registry = load_registry(dataset_dir)
    if name not in registry:
        names = sorted(registry)
        close = nearest(name, names)
        hint = f"did you mean {close!r}? " if close else ""
        raise InvalidArgument(
            f"no dataset {name!r} in {dataset_dir}/{REGISTRY_FILE}; {hint}valid: {', '.join(names)}",
            reason="UNKNOWN_DATASET",
            violations=[FieldViolation("registry.name", f"valid choices: {', '.join(names)}")],
        )
    entry = registry[name]
    where = f"{REGISTRY_FILE}:{name}"
    if not isinstance(entry, dict):
        raise invalid(where, "an entry must be an object", "BAD_REGISTRY")
    for key in _HUB_KEYS:
        if key in entry and "file_name" not in entry:
            raise invalid(
                f"{where}.{key}",
                "hub datasets cannot be fetched here; download the files and use file_name",
                "BAD_REGISTRY",
            )
    for key in entry:
        if key not in _KNOWN_KEYS:
            logger.warning("%s: unknown key %r ignored", where, key)
    file_name = entry.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        raise invalid(f"{where}.file_name", "missing (a file or folder name)", "BAD_REGISTRY")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise invalid(
            f"{where}.formatting",
            f"{formatting!r} is not supported; valid choices: alpaca, sharegpt",
            "BAD_REGISTRY",
        )
    ranking = bool(entry.get("ranking", False))
    fmt = f"preference_{formatting}" if ranking else formatting
    columns = _mapping(entry, "columns", where, set(DEFAULT_COLUMNS))
    tags = _mapping(entry, "tags", where, set(SHAREGPT_TAGS))
    num_samples = entry.get("num_samples")
    path = str(Path(dataset_dir) / file_name)
    return RegistryDataset(name, [path], FormatSpec(fmt, columns, tags), num_samples)


def _mapping(entry: dict, key: str, where: str, valid: set[str]) -> dict[str, str]:
    value = entry.get(key) or {}
    if not isinstance(value, dict):
        raise invalid(f"{where}.{key}", "must be an object", "BAD_REGISTRY")
    for k, v in value.items():
        if k not in valid:
            raise invalid(
                f"{where}.{key}.{k}",
                f"unknown key; valid choices: {', '.join(sorted(valid))}",
                "BAD_REGISTRY",
            )
        if not isinstance(v, str):
            raise invalid(f"{where}.{key}.{k}", "must be a string", "BAD_REGISTRY")
    return dict(value)
