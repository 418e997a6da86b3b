"""Rows out of encoded sequences: packing by best-fit decreasing, position ids, segment bounds.

``pack`` places sequences (each at most ``capacity`` tokens) into as few rows of ``capacity``
tokens as best-fit decreasing finds: longest first, each into the open row whose free space is
smallest but sufficient, else a new row. Inside a row, ``position_ids`` restart at 0 for every
segment and ``cu_seqlens`` lists the segment bounds ``[0, len_1, len_1 + len_2, ..., len]`` so
the consumer can isolate attention (block-diagonal mask, or FlashAttention varlen).

It knows nothing about tokenizers, templates or files; rows are dicts of int32 arrays (4 bytes a
token, where Python lists would take about 36).
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Sequence

Row = dict  # {"input_ids", "labels", "position_ids", "cu_seqlens", "example_ids"}
Ints = Sequence[int]  # a list or an array("i")


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of item indices; every bin's total length is at most ``capacity``.

    Deterministic: ties in length keep their input order, and bins come out in creation order.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, bin index), sorted
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"item {i} has {n} tokens, more than the capacity {capacity}")
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            space, b = free.pop(at)
            bins[b].append(i)
            space -= n
        else:
            b = len(bins)
            bins.append([i])
            space = capacity - n
        if space > 0:
            bisect.insort(free, (space, b))
    return bins


_POSITIONS = array("i", range(4096))


def _positions(n: int) -> array:
    """``array("i", range(n))`` sliced from a cached one (a copy of bytes, no Python ints)."""
    global _POSITIONS
    if n > len(_POSITIONS):
        _POSITIONS = array("i", range(max(n, 2 * len(_POSITIONS))))
    return _POSITIONS[:n]


def make_row(segments: Sequence[tuple[str, Ints, Ints]]) -> Row:
    """One row from (example_id, ids, labels) segments, in order; int columns are int32 arrays."""
    input_ids = array("i")
    labels = array("i")
    position_ids = array("i")
    cu_seqlens = array("i", [0])
    example_ids = []
    for example_id, ids, labs in segments:
        input_ids.extend(ids)
        labels.extend(labs)
        position_ids.extend(_positions(len(ids)))
        cu_seqlens.append(len(input_ids))
        example_ids.append(example_id)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "cu_seqlens": cu_seqlens,
        "example_ids": example_ids,
    }


def pack(items: Sequence[tuple[str, Ints, Ints]], capacity: int) -> list[Row]:
    """Packed rows of (example_id, ids, labels) items by best-fit decreasing."""
    bins = best_fit_decreasing([len(it[1]) for it in items], capacity)
    return [make_row([items[i] for i in b]) for b in bins]


def unpacked(items: Sequence[tuple[str, Ints, Ints]]) -> list[Row]:
    """One row per item (no packing)."""
    return [make_row([it]) for it in items]


def padding_fraction(row_lengths: Sequence[int], capacity: int) -> float:
    """1 - tokens / (rows * capacity): the padding share if every row were padded to capacity."""
    if not row_lengths:
        return 0.0
    return 1.0 - sum(row_lengths) / (len(row_lengths) * capacity)
