"""The read -> normalise -> encode stages shared by preparation, preview and streaming.

``DataSpec`` is the domain form of a ``DatasetSpec`` (registry entries already resolved to files).
``iter_examples`` reads the sources lazily and applies the bad-row policy: a bad record either
fails the request (INVALID_ARGUMENT naming ``file:row:field``) or is counted in
``Stats.dropped_rows`` under its reason, never dropped silently. ``iter_encoded`` tokenizes in
batches. ``Stats`` accumulates the counts every dataset reports.

It knows nothing about protos, storage or batching.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from services.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, invalid
from services.data import sources as src
from services.data.encode import Encoded, EncodeOptions, Encoder, Pending
from services.data.formats import KIND_OF_FORMAT, Example, FormatSpec, RowError, to_example

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class SourceSpec:
    paths: tuple[str, ...]
    format: FormatSpec
    file_type: str = ""
    max_samples: int | None = None
    read_limits: src.ReadLimits = src.DEFAULT_READ_LIMITS


@dataclass(frozen=True)
class DataSpec:
    sources: tuple[SourceSpec, ...]
    kind: str
    tokenizer_path: str
    encode: EncodeOptions
    packing: bool = False
    streaming: bool = False
    seed: int = 0
    fail_on_bad_rows: bool = False
    eval_fraction: float = 0.0


@dataclass
class Stats:
    source_rows: int = 0
    examples: int = 0
    rows: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    padding_fraction: float = 0.0
    truncated_examples: int = 0
    dropped_rows: Counter = field(default_factory=Counter)
    estimated: bool = False
    # the part of dropped_rows dropped while encoding (after the eval split is drawn, so a
    # streaming pass over one split sees only that split's); not a DatasetStats field
    encode_dropped: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        # reason -> where and why the first row dropped for it was (for error messages only)
        self.first_drops: dict[str, str] = {}


def kind_of(spec: FormatSpec) -> str:
    """The kind a format yields by itself: a declared ``kto_tag`` column makes feedback."""
    if spec.columns.get("kto_tag") and spec.format in ("alpaca", "sharegpt", "openai"):
        return "feedback"
    return KIND_OF_FORMAT[spec.format]


def resolve_kind(formats: list[FormatSpec | str], kind: str, field_name: str = "spec.kind") -> str:
    """The example kind: given, or derived from the formats (which must agree)."""
    derived = {kind_of(f) if isinstance(f, FormatSpec) else KIND_OF_FORMAT[f] for f in formats}
    if kind:
        return kind
    if len(derived) != 1:
        raise invalid(field_name, f"sources yield different kinds ({', '.join(sorted(derived))})")
    return derived.pop()


def format_for_kind(spec: FormatSpec, kind: str, field_name: str) -> FormatSpec:
    """Adapt a format to the asked kind as LLaMA-Factory stages do (alpaca -> pt uses ``prompt``)."""
    fmt = spec.format
    if kind == "pretrain" and fmt == "alpaca":
        return FormatSpec("text", {"prompt": spec.column("prompt")}, spec.tags)
    if kind == "prompt" and fmt == "alpaca":
        return FormatSpec("prompt", spec.columns, spec.tags)
    if kind in ("prompt", "feedback") and fmt in ("sharegpt", "openai"):
        return spec
    if kind == "feedback" and fmt == "alpaca":
        return spec
    if KIND_OF_FORMAT[fmt] != kind:
        raise invalid(field_name, f"format {fmt!r} cannot make {kind} examples", "KIND_MISMATCH")
    return spec


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: str) -> Any:
    """A fast Hugging Face tokenizer from a local folder (trust_remote_code off)."""
    from transformers import AutoTokenizer

    if not path or not Path(path).is_dir():
        raise invalid("tokenization.tokenizer_path", f"{path!r} is not a local model folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # a user's folder: broken JSON, wrong types, ...
        # transformers and tokenizers raise whatever their parsers raise for a broken
        # tokenizer.json or a tokenizer_config.json with odd values (TypeError, AttributeError,
        # the Rust side's plain Exception): all of them mean "this folder is not a tokenizer".
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise invalid(
            "tokenization.tokenizer_path", f"cannot load a tokenizer from {path}: {detail}"
        ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise FailedPrecondition(f"{path}: a fast tokenizer (tokenizer.json) is needed")
    return tokenizer


def bad_row(stats: Stats, fail: bool, file: str, row: int, err: RowError) -> None:
    """Apply the bad-row policy to one record."""
    where = f"{file}:{row}:{err.field}" if err.field else f"{file}:{row}"
    if fail:
        raise InvalidArgument(
            f"bad row {where}: {err.description}",
            reason="BAD_ROW",
            violations=[FieldViolation(where, err.description)],
            metadata={"row_reason": err.reason},
        )
    if stats.dropped_rows[err.reason] == 0:
        logger.warning(
            "dropping rows: %s (%s); counted under %r", where, err.description, err.reason
        )
        stats.first_drops[err.reason] = f"{where}: {err.description}"
    stats.dropped_rows[err.reason] += 1


def check_not_empty(stats: Stats, kind: str, prefix: bool = False) -> None:
    """INVALID_ARGUMENT when reading gave no example at all, saying why (never an empty success)."""
    if stats.examples:
        return
    read = f"the first {stats.source_rows} records" if prefix else f"{stats.source_rows} records"
    if not stats.source_rows:
        raise invalid("spec.sources", "the sources hold no records", "NO_EXAMPLES")
    counts = ", ".join(f"{reason}: {n}" for reason, n in stats.dropped_rows.most_common())
    first = "; ".join(f"first {reason} at {stats.first_drops[reason]}"
                      for reason in stats.first_drops)  # fmt: skip
    hint = ""
    top = stats.dropped_rows.most_common(1)[0][0] if stats.dropped_rows else ""
    if kind != "pretrain" and top in ("missing_column", "missing_response", "empty_response"):
        hint = (
            f" The records have no {kind} shape: if they are plain text for pre-training, "
            "prepare them with kind PRETRAIN (LLaMA-Factory's stage pt)."
        )
    elif top == "too_long_prompt":
        hint = " Every prompt is longer than cutoff_len: raise tokenization.cutoff_len."
    raise InvalidArgument(
        f"no examples: {read} read as {kind}, all dropped ({counts}; {first}).{hint}",
        reason="NO_EXAMPLES",
        violations=[
            FieldViolation("spec.kind", f"{kind}: all {stats.source_rows} records dropped")
        ],
        metadata={"dropped": counts},
    )


def iter_records(source: SourceSpec, seed: int, lazy: bool) -> Iterator[src.Record]:
    """Records of one source; ``max_samples`` after a seeded shuffle (seed != 0, not lazy)."""
    files = src.expand(list(source.paths))
    text_col = source.format.column("prompt") if source.format.format == "text" else "text"
    records = src.iter_records(files, source.file_type, text_col, source.read_limits)
    limit = source.max_samples
    if limit is None:
        yield from records
    elif lazy or not seed:
        for i, record in enumerate(records):
            if i >= limit:
                break
            yield record
    else:
        everything = list(records)
        keep = sorted(
            random.Random(seed).sample(range(len(everything)), min(limit, len(everything)))
        )
        yield from (everything[i] for i in keep)


def iter_examples(
    spec: DataSpec, stats: Stats, records: Iterable[tuple[int, src.Record]] | None = None
) -> Iterator[tuple[str, Example]]:
    """(example_id, Example) for every usable record; bad ones go through the policy."""
    if records is None:
        records = (
            (i, r)
            for i, s in enumerate(spec.sources)
            for r in iter_records(s, spec.seed, spec.streaming)
        )
    for i, record in records:
        stats.source_rows += 1
        if record.error is not None:
            bad_row(stats, spec.fail_on_bad_rows, record.file, record.row, record.error)
            continue
        try:
            example = to_example(record.value, spec.sources[i].format, spec.kind)
        except RowError as err:
            bad_row(stats, spec.fail_on_bad_rows, record.file, record.row, err)
            continue
        yield f"{i}/{record.file}:{record.row}", example


def iter_encoded(
    spec: DataSpec,
    encoder: Encoder,
    examples: Iterable[tuple[str, Example]],
    stats: Stats,
    batch: int,
) -> Iterator[tuple[str, Encoded]]:
    """Encode in batches; rows that cannot be encoded go through the policy.

    One batch is tokenized in the background while the next one is read and normalised and the
    consumer works on the previous one's results; the order of the output is the input's.
    """
    pending = None
    for chunk in _chunks(examples, batch):
        started = (chunk, encoder.start([e for _, e in chunk]))
        if pending is not None:
            yield from _finish_chunk(spec, *pending, stats)
        pending = started
    if pending is not None:
        yield from _finish_chunk(spec, *pending, stats)


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _finish_chunk(spec, chunk, pending: Pending, stats):
    results = pending.result()
    for (example_id, _), result in zip(chunk, results, strict=True):
        if isinstance(result, RowError):
            file, _, row = example_id.split("/", 1)[1].rpartition(":")
            bad_row(stats, spec.fail_on_bad_rows, file, int(row), result)
            stats.encode_dropped[result.reason] += 1
            continue
        stats.examples += 1
        stats.truncated_examples += result.truncated
        yield example_id, result


def is_eval(example_id: str, seed: int, fraction: float) -> bool:
    """Seeded, order-free split: the same example lands in the same split every time."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}|{example_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction
