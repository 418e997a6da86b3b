"""Batches for ranks, and the cursor that resumes them.

Rows (in epoch order) are grouped into global batches by a row count or a token budget
(``rows * longest row <= batch_tokens``; a longer row is a batch of its own). Global batch ``j``
goes to rank ``j % world_size``; only whole groups of ``world_size`` batches are handed out, so
every rank gets the same number of batches and the tail is dropped. Everything is lazy, so the
same code serves stored and streaming datasets.

A cursor is an opaque token naming the request it came from (dataset, split, rank, world size,
seed, shuffle, batch size), the epoch and the next batch index; a cursor from another request is
INVALID_ARGUMENT. It knows nothing about tokens beyond row lengths.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import TypeVar

from services.common.errors import invalid

T = TypeVar("T")


@dataclass(frozen=True)
class BatchPlan:
    """What a StreamBatches call asked for, apart from where it starts."""

    dataset_id: str
    split: str
    rank: int
    world_size: int
    seed: int
    shuffle: bool
    mode: str  # "rows" | "tokens"
    size: int

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise invalid("world_size", "must be at least 1")
        if not 0 <= self.rank < self.world_size:
            raise invalid("rank", f"must be in [0, {self.world_size})")
        if self.size < 1:
            raise invalid(f"batch_{self.mode}", "set batch_rows or batch_tokens to at least 1")


def encode_cursor(plan: BatchPlan, epoch: int, next_index: int) -> str:
    payload = {"v": 1, "plan": asdict(plan), "epoch": epoch, "next": next_index}
    raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, plan: BatchPlan) -> tuple[int, int]:
    """(epoch, next batch index) of ``cursor``; it must come from the same ``plan``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
        epoch, next_index, given = int(payload["epoch"]), int(payload["next"]), payload["plan"]
    except (ValueError, KeyError, TypeError):
        raise invalid("cursor", "not a cursor returned by StreamBatches", "BAD_CURSOR") from None
    if given != asdict(plan):
        changed = sorted(k for k, v in asdict(plan).items() if given.get(k) != v)
        raise invalid(
            "cursor",
            f"the cursor comes from a different request (differs in {', '.join(changed)})",
            "CURSOR_MISMATCH",
        )
    return epoch, next_index


def group(items: Iterable[tuple[T, int]], mode: str, size: int) -> Iterator[list[T]]:
    """Global batches of (item, length) pairs."""
    batch: list[T] = []
    longest = 0
    for item, length in items:
        if mode == "rows":
            batch.append(item)
            if len(batch) == size:
                yield batch
                batch = []
            continue
        if batch and (len(batch) + 1) * max(longest, length) > size:
            yield batch
            batch, longest = [], 0
        batch.append(item)
        longest = max(longest, length)
        if longest >= size:
            yield batch
            batch, longest = [], 0
    if batch:
        yield batch


def for_rank(
    batches: Iterable[list[T]], rank: int, world_size: int, start: int = 0
) -> Iterator[tuple[int, list[T]]]:
    """(index, batch) of one rank, from batch ``start``; only whole groups of ranks count."""
    pending: list[list[T]] = []
    index = 0
    for batch in batches:
        pending.append(batch)
        if len(pending) < world_size:
            continue
        if index >= start:
            yield index, pending[rank]
        pending = []
        index += 1
