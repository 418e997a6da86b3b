"""Materialising a dataset: read, encode, split, pack, count; and previewing one record.

``prepare`` runs the whole pipeline in memory-sized steps (all encoded examples of a dataset are
held to pack them by best-fit decreasing; data larger than memory uses a streaming dataset) and
returns the rows of each split with their stats, ready for ``store.DatasetStore.write``.
``estimate_stats`` counts a streaming dataset over its first records (marked ``estimated``: the
counts are those of the prefix, not of the whole); ``stream_rows`` counts exactly as it goes, and
the service records those counts when a pass reaches the end of a split. ``fingerprint`` hashes the spec,
the sources' contents and the tokenizer files.

It knows nothing about protos or gRPC.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from services.common.errors import invalid
from services.data import packing
from services.data import sources as src
from services.data.encode import IGNORE, Encoded, Encoder
from services.data.packing import Ints
from services.data.pipeline import (
    DataSpec,
    Stats,
    check_not_empty,
    is_eval,
    iter_encoded,
    iter_examples,
    iter_records,
)
from services.data.store import LAYOUT_OF_KIND

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class Prepared:
    stats: Stats
    splits: dict[str, list[dict]] = field(default_factory=dict)
    split_stats: dict[str, Stats] = field(default_factory=dict)


def check_spec(spec: DataSpec) -> None:
    if spec.packing and spec.kind not in ("pretrain", "sft"):
        raise invalid("spec.packing", f"packing applies to pretrain and sft, not {spec.kind}")
    if not 0 <= spec.eval_fraction < 1:
        raise invalid("spec.eval_fraction", "must be in [0, 1)")
    if not spec.sources:
        raise invalid("spec.sources", "at least one source is needed")


def fingerprint(spec_bytes: bytes, spec: DataSpec) -> str:
    """sha256 over the spec, each source's files and the tokenizer's files."""
    h = hashlib.sha256(spec_bytes)
    for source in spec.sources:
        h.update(src.fingerprint_files(src.expand(list(source.paths))).encode())
    folder = Path(spec.tokenizer_path)
    for name in _TOKENIZER_FILES:
        path = folder / name
        if path.is_file():
            h.update(name.encode() + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def row_items(example_id: str, encoded: Encoded) -> list[tuple[str, Ints, Ints]]:
    """(example_id, ids, labels) per sequence of a pretrain/sft example (chunks get #k)."""
    seqs = encoded.sequences
    if len(seqs) == 1:
        return [(example_id, array("i", seqs[0].ids), array("i", seqs[0].labels))]
    return [
        (f"{example_id}#{k}", array("i", s.ids), array("i", s.labels)) for k, s in enumerate(seqs)
    ]


def pair_or_prompt(example_id: str, encoded: Encoded) -> dict:
    """The stored row of a preference, feedback or prompt example."""
    if encoded.kind == "feedback":
        (seq,) = encoded.sequences
        trained = [i for i, label in enumerate(seq.labels) if label != IGNORE]
        return {
            "example_id": example_id,
            "input_ids": array("i", seq.ids),
            "labels": array("i", seq.labels),
            "prompt_length": trained[0] if trained else len(seq.ids),
            "desirable": bool(encoded.desirable),
        }
    if encoded.kind == "preference":
        chosen, rejected = encoded.sequences
        return {
            "example_id": example_id,
            "chosen_ids": array("i", chosen.ids),
            "chosen_labels": array("i", chosen.labels),
            "rejected_ids": array("i", rejected.ids),
            "rejected_labels": array("i", rejected.labels),
        }
    return {
        "example_id": example_id,
        "prompt_ids": array("i", encoded.sequences[0].ids),
        "reference_answer": encoded.reference,
    }


def rows_of(items: list[tuple[str, Ints, Ints]], packed: bool, cutoff_len: int) -> list[dict]:
    return packing.pack(items, cutoff_len) if packed else packing.unpacked(items)


def count(stats: Stats, rows: list[dict], layout: str, cutoff_len: int) -> None:
    """Add rows to ``stats`` and recompute the padding fraction."""
    lengths = []
    for row in rows:
        if layout in ("rows", "feedback"):
            sides = [(row["input_ids"], row["labels"])]
        elif layout == "pairs":
            sides = [(row["chosen_ids"], row["chosen_labels"])]
            sides.append((row["rejected_ids"], row["rejected_labels"]))
        else:
            sides = [(row["prompt_ids"], array("i"))]
        for ids, labels in sides:
            lengths.append(len(ids))
            stats.tokens += len(ids)
            stats.trained_tokens += len(labels) - labels.count(IGNORE)
    stats.rows += len(lengths)
    total_rows = stats.rows
    stats.padding_fraction = 1.0 - stats.tokens / (total_rows * cutoff_len) if total_rows else 0.0


def prepare(
    spec: DataSpec, encoder: Encoder, encode_batch: int, limit: int | None = None
) -> Prepared:
    """Every split's rows and stats. ``limit`` reads only that many records (estimates)."""
    check_spec(spec)
    stats = Stats()
    records: Iterable | None = None
    if limit is not None:
        records = islice(
            ((i, r) for i, s in enumerate(spec.sources) for r in iter_records(s, spec.seed, True)),
            limit,
        )
    encoded = iter_encoded(spec, encoder, iter_examples(spec, stats, records), stats, encode_batch)
    layout = LAYOUT_OF_KIND[spec.kind]
    names = ["train", "eval"] if spec.eval_fraction > 0 else ["train"]
    buckets: dict[str, list] = {name: [] for name in names}
    split_stats = {name: Stats() for name in names}
    for example_id, enc in encoded:
        name = "eval" if is_eval(example_id, spec.seed, spec.eval_fraction) else "train"
        split_stats[name].examples += 1
        split_stats[name].truncated_examples += enc.truncated
        if layout == "rows":
            buckets[name].extend(row_items(example_id, enc))
        else:
            buckets[name].append(pair_or_prompt(example_id, enc))
    cutoff = encoder.options.cutoff_len
    result = Prepared(stats, split_stats=split_stats)
    check_not_empty(stats, spec.kind, prefix=limit is not None)
    for name in names:
        rows = buckets[name]
        if layout == "rows":
            rows = rows_of(rows, spec.packing, cutoff)
        count(split_stats[name], rows, layout, cutoff)
        count(stats, rows, layout, cutoff)
        result.splits[name] = rows
    return result


def estimate_stats(
    spec: DataSpec, encoder: Encoder, encode_batch: int, prefix_rows: int
) -> Prepared:
    """Stats of a streaming dataset counted over its first ``prefix_rows`` records."""
    result = prepare(spec, encoder, encode_batch, limit=prefix_rows)
    for stats in (result.stats, *result.split_stats.values()):
        stats.estimated = True
    result.splits = {}
    return result


def stream_rows(
    spec: DataSpec,
    encoder: Encoder,
    examples: Iterable[tuple[str, object]],
    stats: Stats,
    encode_batch: int,
    pack_window: int,
) -> Iterator[tuple[dict, int]]:
    """(row, length) lazily: encode, then pack each window of ``pack_window`` examples.

    Every row made is counted into ``stats`` (rows, tokens, trained tokens, padding), so a pass
    that reaches the end has counted the whole stream exactly.
    """
    layout = LAYOUT_OF_KIND[spec.kind]
    cutoff = encoder.options.cutoff_len
    window: list[tuple[str, Ints, Ints]] = []
    for example_id, enc in iter_encoded(spec, encoder, examples, stats, encode_batch):
        if layout != "rows":
            row = pair_or_prompt(example_id, enc)
            count(stats, [row], layout, cutoff)
            yield row, max(len(s.ids) for s in enc.sequences)
            continue
        window.extend(row_items(example_id, enc))
        if len(window) >= pack_window or not spec.packing:
            yield from _counted(stats, rows_of(window, spec.packing, cutoff), cutoff)
            window = []
    if window:
        yield from _counted(stats, rows_of(window, spec.packing, cutoff), cutoff)


def _counted(stats: Stats, rows: list[dict], cutoff: int) -> Iterator[tuple[dict, int]]:
    count(stats, rows, "rows", cutoff)
    for row in rows:
        yield row, len(row["input_ids"])
