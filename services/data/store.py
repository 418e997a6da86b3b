"""Prepared datasets on disk: Arrow IPC shards per split plus ``meta.json``.

Layout: ``<datasets_dir>/<id>/meta.json`` and ``<id>/<split>-00000.arrow``... A dataset is written
into a temporary folder and renamed into place, so a reader never sees half of one. Shards are
memory-mapped when read: a split is never loaded whole, ``take`` reads only the rows asked for.

Row schemas by kind: rows (pretrain, sft): input_ids, labels, position_ids, cu_seqlens,
example_ids; pairs (preference): example_id, chosen_ids, chosen_labels, rejected_ids,
rejected_labels; prompts: example_id, prompt_ids, reference_answer; feedback: example_id,
input_ids, labels, prompt_length, desirable.

``DatasetMeta`` is the typed record of ``meta.json`` (the store, the lifecycle in ``datasets`` and
the servicer share it; the file's format is unchanged). It knows nothing about protos or
tokenizers; the record carries the spec as opaque bytes.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import uuid
from array import array
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from services.common.errors import NotFound, invalid

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9\-_.]{0,62}$")
_INTS = pa.list_(pa.int32())
SCHEMAS = {
    "rows": pa.schema(
        [
            ("input_ids", _INTS),
            ("labels", _INTS),
            ("position_ids", _INTS),
            ("cu_seqlens", _INTS),
            ("example_ids", pa.list_(pa.string())),
        ]
    ),
    "pairs": pa.schema(
        [
            ("example_id", pa.string()),
            ("chosen_ids", _INTS),
            ("chosen_labels", _INTS),
            ("rejected_ids", _INTS),
            ("rejected_labels", _INTS),
        ]
    ),
    "prompts": pa.schema(
        [("example_id", pa.string()), ("prompt_ids", _INTS), ("reference_answer", pa.string())]
    ),
    "feedback": pa.schema(
        [
            ("example_id", pa.string()),
            ("input_ids", _INTS),
            ("labels", _INTS),
            ("prompt_length", pa.int32()),
            ("desirable", pa.bool_()),
        ]
    ),
}
LAYOUT_OF_KIND = {
    "pretrain": "rows",
    "sft": "rows",
    "preference": "pairs",
    "prompt": "prompts",
    "feedback": "feedback",
}


@dataclass(frozen=True)
class SplitMeta:
    """One split of a dataset: its stats (``DatasetStats`` fields) and shard files."""

    split: str  # "train" | "eval"
    stats: dict[str, Any]
    shard_paths: tuple[str, ...] = ()  # empty for a streaming dataset
    encode_dropped: dict[str, int] = field(default_factory=dict)  # by a full streaming pass

    def to_json(self) -> dict:
        out = {"split": self.split, "stats": self.stats, "shard_paths": list(self.shard_paths)}
        if self.encode_dropped:
            out["encode_dropped"] = self.encode_dropped
        return out

    @classmethod
    def from_json(cls, data: dict) -> SplitMeta:
        return cls(
            data["split"],
            data["stats"],
            tuple(data.get("shard_paths", ())),
            dict(data.get("encode_dropped", {})),
        )


@dataclass(frozen=True)
class DatasetMeta:
    """What ``meta.json`` records of a prepared dataset."""

    id: str
    fingerprint: str
    create_time: float  # seconds since the epoch
    kind: str  # "pretrain" | "sft" | "preference" | "prompt"
    spec: bytes  # the filled ``DatasetSpec``, serialized (opaque here)
    streaming: bool
    layout: str  # "rows" | "pairs" | "prompts"
    stats: dict[str, Any]  # ``DatasetStats`` fields of the whole dataset
    splits: tuple[SplitMeta, ...]
    # ids that end a response under the dataset's template (None: prepared before they were kept)
    end_token_ids: tuple[int, ...] | None = None

    def split(self, name: str) -> SplitMeta | None:
        return next((s for s in self.splits if s.split == name), None)

    def with_splits(self, splits: tuple[SplitMeta, ...], **changes) -> DatasetMeta:
        return replace(self, splits=splits, **changes)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "fingerprint": self.fingerprint,
            "create_time": self.create_time,
            "kind": self.kind,
            "spec_b64": base64.b64encode(self.spec).decode(),
            "streaming": self.streaming,
            "layout": self.layout,
            "stats": self.stats,
            "splits": [s.to_json() for s in self.splits],
            **({} if self.end_token_ids is None else {"end_token_ids": list(self.end_token_ids)}),
        }

    @classmethod
    def from_json(cls, data: dict) -> DatasetMeta:
        return cls(
            id=data["id"],
            fingerprint=data["fingerprint"],
            create_time=float(data["create_time"]),
            kind=data["kind"],
            spec=base64.b64decode(data["spec_b64"]),
            streaming=bool(data.get("streaming", False)),
            layout=data["layout"],
            stats=data["stats"],
            splits=tuple(SplitMeta.from_json(s) for s in data["splits"]),
            end_token_ids=(
                tuple(int(i) for i in data["end_token_ids"]) if "end_token_ids" in data else None
            ),
        )


def check_id(dataset_id: str) -> None:
    if not ID_PATTERN.match(dataset_id):
        raise invalid("dataset_id", "must match [a-z0-9][a-z0-9-_.]{0,62}", "BAD_DATASET_ID")


class DatasetStore:
    def __init__(self, root: str | Path, shard_rows: int = 50_000) -> None:
        self.root = Path(root)
        self.shard_rows = shard_rows

    def _dir(self, dataset_id: str) -> Path:
        check_id(dataset_id)
        return self.root / dataset_id

    def exists(self, dataset_id: str) -> bool:
        return (self._dir(dataset_id) / "meta.json").is_file()

    def read_meta(self, dataset_id: str) -> DatasetMeta:
        path = self._dir(dataset_id) / "meta.json"
        if not path.is_file():
            raise NotFound(f"no dataset {dataset_id!r}", reason="DATASET_NOT_FOUND")
        return DatasetMeta.from_json(json.loads(path.read_text()))

    def list_metas(self) -> list[DatasetMeta]:
        """Every dataset's metadata, newest first (ties by id)."""
        if not self.root.is_dir():
            return []
        metas = []
        for child in self.root.iterdir():
            meta = child / "meta.json"
            if meta.is_file():
                metas.append(DatasetMeta.from_json(json.loads(meta.read_text())))
        metas.sort(key=lambda m: (-m.create_time, m.id))
        return metas

    def write(self, meta: DatasetMeta, splits: dict[str, list[dict]]) -> DatasetMeta:
        """Write ``splits`` (split name -> rows as dicts, in ``meta.layout``) and ``meta``;
        returns ``meta`` with the shard paths."""
        final = self._dir(meta.id)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{meta.id}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            schema = SCHEMAS[meta.layout]
            written = []
            for split in meta.splits:
                rows = splits.get(split.split, [])
                names = []
                for n, start in enumerate(range(0, max(len(rows), 1), self.shard_rows)):
                    name = f"{split.split}-{n:05d}.arrow"
                    table = _table(rows[start : start + self.shard_rows], schema)
                    with pa.OSFile(str(tmp / name), "wb") as sink:
                        with pa.ipc.new_file(sink, schema) as writer:
                            writer.write_table(table)
                    names.append(name)
                written.append(replace(split, shard_paths=tuple(str(final / n) for n in names)))
            meta = meta.with_splits(tuple(written))
            (tmp / "meta.json").write_text(json.dumps(meta.to_json(), indent=1))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return meta

    def write_meta_only(self, meta: DatasetMeta) -> DatasetMeta:
        """Only ``meta.json``: a streaming dataset (no shards), or metadata updated in place."""
        final = self._dir(meta.id)
        final.mkdir(parents=True, exist_ok=True)
        tmp = final / "meta.json.tmp"
        tmp.write_text(json.dumps(meta.to_json(), indent=1))
        tmp.replace(final / "meta.json")
        return meta

    def open_split(self, meta: DatasetMeta, split: str) -> SplitReader:
        found = meta.split(split)
        if found is None:
            raise NotFound(f"dataset {meta.id!r} has no {split} split", reason="SPLIT_NOT_FOUND")
        return SplitReader(list(found.shard_paths), meta.layout)


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Column by column (much faster than ``Table.from_pylist`` for long int lists)."""
    columns = []
    for f in schema:
        values = [row[f.name] for row in rows]
        if f.type == _INTS:  # flat int32 values + offsets: no per-element Python work
            offsets = array("i", [0])
            flat = array("i")
            for v in values:
                flat.extend(v)
                offsets.append(len(flat))
            columns.append(pa.ListArray.from_arrays(_int32s(offsets), _int32s(flat)))
        else:
            columns.append(pa.array(values, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _int32s(values: array) -> pa.Array:
    """An int32 Arrow array over an ``array("i")``'s buffer (no per-element conversion)."""
    return pa.Array.from_buffers(pa.int32(), len(values), [None, pa.py_buffer(values)])


@dataclass
class SplitReader:
    """Memory-mapped rows of one split."""

    paths: list[str]
    layout: str

    def __post_init__(self) -> None:
        tables = []
        for path in self.paths:
            source = pa.memory_map(path)
            tables.append(pa.ipc.open_file(source).read_all())
        self.table = pa.concat_tables(tables) if tables else SCHEMAS[self.layout].empty_table()

    def __len__(self) -> int:
        return self.table.num_rows

    def lengths(self) -> list[int]:
        """Token length of each row (a pair: its longer side)."""
        t = self.table
        if self.layout in ("rows", "feedback"):
            return pc.list_value_length(t["input_ids"]).to_pylist()
        if self.layout == "pairs":
            a = pc.list_value_length(t["chosen_ids"])
            b = pc.list_value_length(t["rejected_ids"])
            return pc.max_element_wise(a, b).to_pylist()
        return pc.list_value_length(t["prompt_ids"]).to_pylist()

    def take(self, indices: list[int]) -> list[dict]:
        return self.table.take(pa.array(indices, pa.int64())).to_pylist()
