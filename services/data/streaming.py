"""Batches from data larger than memory: lazy reading, a shuffle buffer, windowed packing.

A streaming dataset is never materialised. Each StreamBatches call reads the sources lazily (a
line or an Arrow record batch at a time), shuffles through a bounded buffer of
``shuffle_buffer`` records seeded by (seed, epoch) -- an approximate shuffle, not a full one --
then templates, tokenizes in batches of ``encode_batch`` and packs windows of ``pack_window``
examples by best-fit decreasing. Memory is bounded by those three sizes, never by the file size.

The order is a pure function of (spec, seed, epoch), so a cursor (batch index) resumes by
replaying the stream up to that batch without sending it: resuming costs re-reading and
re-encoding the skipped part, but needs no server-side state.

Every row made is counted into the ``stats`` passed in (records read, dropped rows by reason,
examples, rows, tokens, trained tokens, padding), so a pass that reaches the end of a split has
its exact stats; the service then records them in place of the prefix estimate.

Stored datasets are served from their Arrow shards by ``stored_batches``. ``stored_count`` and
``streaming_count`` give the number of batches one rank gets in an epoch from the same plan
without reading a row (stored: the row lengths are enough) or keeping one (streaming: the epoch
is read, encoded and packed, and only the batches are counted).

It knows nothing about protos.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import TypeVar

from services.data import batches as bt
from services.data.encode import Encoder
from services.data.pipeline import DataSpec, Stats, is_eval, iter_examples, iter_records
from services.data.prepare import stream_rows
from services.data.store import SplitReader

T = TypeVar("T")


def shuffle_buffer(items: Iterable[T], size: int, rng: random.Random) -> Iterator[T]:
    """Approximate shuffle holding at most ``size`` items: emit a random held item per new one."""
    buffer: list[T] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rng.randrange(size)
        out, buffer[j] = buffer[j], item
        yield out
    rng.shuffle(buffer)
    yield from buffer


def epoch_rng(seed: int, epoch: int) -> random.Random:
    return random.Random(f"{seed}:{epoch}")


def streaming_batches(
    spec: DataSpec,
    encoder: Encoder,
    plan: bt.BatchPlan,
    epoch: int,
    start: int,
    *,
    shuffle_size: int,
    encode_batch: int,
    pack_window: int,
    stats: Stats | None = None,
) -> Iterator[tuple[int, list[dict]]]:
    """(index, rows) of one rank's batches of a streaming dataset, from batch ``start``."""
    stats = stats if stats is not None else Stats()
    records = ((i, r) for i, s in enumerate(spec.sources) for r in iter_records(s, spec.seed, True))
    if plan.shuffle:
        records = shuffle_buffer(records, shuffle_size, epoch_rng(plan.seed, epoch))
    want_eval = plan.split == "eval"
    examples = (
        (eid, ex)
        for eid, ex in iter_examples(spec, stats, records)
        if is_eval(eid, spec.seed, spec.eval_fraction) == want_eval
    )
    rows = stream_rows(spec, encoder, examples, stats, encode_batch, pack_window)
    yield from bt.for_rank(bt.group(rows, plan.mode, plan.size), plan.rank, plan.world_size, start)


def streaming_count(
    spec: DataSpec, encoder: Encoder, plan: bt.BatchPlan, epoch: int, **options: int
) -> int:
    """How many batches ``streaming_batches`` yields for ``plan`` in ``epoch`` (from 0), with
    the same ``options`` (shuffle_size, encode_batch, pack_window); the rows are dropped."""
    return sum(1 for _ in streaming_batches(spec, encoder, plan, epoch, 0, **options))


def _stored_groups(
    reader: SplitReader, plan: bt.BatchPlan, epoch: int, start: int
) -> Iterator[tuple[int, list[int]]]:
    """(index, row indices) of one rank's batches: only the lengths are read."""
    lengths = reader.lengths()
    order = list(range(len(lengths)))
    if plan.shuffle:
        epoch_rng(plan.seed, epoch).shuffle(order)
    indexed = ((i, lengths[i]) for i in order)
    yield from bt.for_rank(
        bt.group(indexed, plan.mode, plan.size), plan.rank, plan.world_size, start
    )


def stored_batches(
    reader: SplitReader, plan: bt.BatchPlan, epoch: int, start: int
) -> Iterator[tuple[int, list[dict]]]:
    """(index, rows) of one rank's batches of a stored split, from batch ``start``.

    The epoch order is a seeded permutation of all rows (a full shuffle: only indices and
    lengths are held, the rows stay memory-mapped); rows are read for the batches sent only.
    """
    for index, batch in _stored_groups(reader, plan, epoch, start):
        yield index, reader.take(batch)


def stored_count(reader: SplitReader, plan: bt.BatchPlan, epoch: int) -> int:
    """How many batches ``stored_batches`` yields for ``plan`` in ``epoch`` (from 0)."""
    return sum(1 for _ in _stored_groups(reader, plan, epoch, 0))
