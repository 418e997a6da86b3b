"""The data service's datasets: their lifecycle behind the typed ``DatasetMeta`` record.

``Datasets`` prepares a dataset (idempotently: the same id and spec return what exists, changed
sources prepare it again, another spec under the same id is ALREADY_EXISTS), records a streaming
pass's exact stats in place of the prefix estimate, reads datasets back (one, or a page of all),
and opens or counts one rank's batches of an epoch. Work on one dataset is serialised by a lock
per id; the batch counts of streaming datasets, which cost a read of the epoch, are remembered
per (dataset, fingerprint, plan, epoch).

It knows nothing about protos: the servicer translates requests into domain specs and plans and
``DatasetMeta`` into ``Dataset`` messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, replace

from services.common.errors import AlreadyExists
from services.data import batches as bt
from services.data.config import DataConfig
from services.data.encode import EncodeOptions, Encoder
from services.data.pipeline import DataSpec, Stats, load_tokenizer
from services.data.prepare import estimate_stats, fingerprint, prepare
from services.data.store import LAYOUT_OF_KIND, DatasetMeta, DatasetStore, SplitMeta
from services.data.streaming import stored_batches, stored_count, streaming_batches, streaming_count

logger = logging.getLogger(__name__)

_TOTALS = ("examples", "rows", "tokens", "trained_tokens", "truncated_examples")


def make_encoder(tokenizer_path: str, options: EncodeOptions) -> Encoder:
    return Encoder(load_tokenizer(tokenizer_path), options)


def stats_dict(stats: Stats) -> dict:
    """``Stats`` as the ``DatasetStats`` fields ``meta.json`` records."""
    out = asdict(stats)
    out["dropped_rows"] = dict(stats.dropped_rows)
    del out["encode_dropped"]
    return out


class Datasets:
    def __init__(self, config: DataConfig) -> None:
        self.config = config
        self.store = DatasetStore(config.datasets_dir, config.shard_rows)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._counts: dict[tuple, int] = {}  # streaming batch counts
        self._streaming = {  # how a streaming dataset is read, shuffled and packed
            "shuffle_size": config.shuffle_buffer,
            "encode_batch": config.encode_batch,
            "pack_window": config.pack_window,
        }

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    # --- reading back ---------------------------------------------------------------------

    def get(self, dataset_id: str) -> DatasetMeta:
        return self.store.read_meta(dataset_id)

    def page(self, start: int, size: int) -> tuple[list[DatasetMeta], bool]:
        """Datasets ``[start, start + size)`` of all, newest first, and whether more follow."""
        metas = self.store.list_metas()
        return metas[start : start + size], start + size < len(metas)

    # --- preparing ------------------------------------------------------------------------

    def prepare(self, dataset_id: str, spec: DataSpec, spec_bytes: bytes) -> DatasetMeta:
        """The dataset of ``spec`` (``spec_bytes``: its filled proto) under ``dataset_id``, or
        under ``ds-<fingerprint>`` when that is empty; prepared now unless it exists as is."""
        fp = fingerprint(spec_bytes, spec)
        dataset_id = dataset_id or f"ds-{fp[:16]}"
        with self._lock(dataset_id):
            if self.store.exists(dataset_id):
                meta = self.store.read_meta(dataset_id)
                if meta.spec != spec_bytes:
                    raise AlreadyExists(
                        f"dataset {dataset_id!r} exists with a different spec; choose another id",
                        reason="DATASET_EXISTS",
                    )
                if meta.fingerprint == fp:
                    if meta.end_token_ids is None:  # prepared before they were recorded
                        ends = make_encoder(spec.tokenizer_path, spec.encode).end_token_ids()
                        meta = self.store.write_meta_only(replace(meta, end_token_ids=ends))
                    return meta
                logger.info(
                    "dataset %s: sources changed since preparation; preparing again", dataset_id
                )
            return self._build(dataset_id, spec, spec_bytes, fp)

    def _build(self, dataset_id: str, spec: DataSpec, spec_bytes: bytes, fp: str) -> DatasetMeta:
        cfg = self.config
        encoder = make_encoder(spec.tokenizer_path, spec.encode)
        names = ["train", "eval"] if spec.eval_fraction > 0 else ["train"]
        if spec.streaming:
            result = estimate_stats(spec, encoder, cfg.encode_batch, cfg.stats_prefix_rows)
        else:
            result = prepare(spec, encoder, cfg.encode_batch)
        splits = tuple(
            SplitMeta(n, {**stats_dict(result.split_stats[n]), "dropped_rows": {}}) for n in names
        )
        meta = DatasetMeta(
            id=dataset_id,
            fingerprint=fp,
            create_time=time.time(),
            kind=spec.kind,
            spec=spec_bytes,
            streaming=spec.streaming,
            layout=LAYOUT_OF_KIND[spec.kind],
            stats=stats_dict(result.stats),
            splits=splits,
            end_token_ids=encoder.end_token_ids(),
        )
        if spec.streaming:
            return self.store.write_meta_only(meta)
        return self.store.write(meta, result.splits)

    def record_pass(self, dataset_id: str, split: str, spec: DataSpec, counted: Stats) -> None:
        """A streaming pass reached the end of ``split``: it counted all of it, so its stats
        replace the prefix estimate. The dataset's own stats become exact once every split has
        been passed over (each pass reads every record, so source rows and the rows dropped while
        reading come from any pass; rows dropped while encoding come from their split's pass).
        ``rows`` and ``padding_fraction`` are those of the epoch that was passed over (the pack
        windows follow the epoch's shuffle); the other counts do not depend on it."""
        with self._lock(dataset_id):
            meta = self.store.read_meta(dataset_id)
            if not meta.streaming:
                return
            if fingerprint(meta.spec, spec) != meta.fingerprint:
                logger.info("dataset %s: sources changed; stats left as they were", dataset_id)
                return
            exact = {**stats_dict(counted), "estimated": False}
            splits = tuple(
                replace(
                    item,
                    stats={**exact, "source_rows": 0, "dropped_rows": {}},
                    encode_dropped=dict(counted.encode_dropped),
                )
                if item.split == split
                else item
                for item in meta.splits
            )
            stats = meta.stats
            if all(not item.stats["estimated"] for item in splits):
                dropped = counted.dropped_rows - counted.encode_dropped  # read stage: every pass
                for item in splits:
                    dropped.update(item.encode_dropped)
                exact["dropped_rows"] = dict(dropped)
                total = {key: sum(item.stats[key] for item in splits) for key in _TOTALS}
                cutoff = spec.encode.cutoff_len
                rows = total["rows"]
                stats = {
                    **exact,
                    **total,
                    "padding_fraction": 1.0 - total["tokens"] / (rows * cutoff) if rows else 0.0,
                }
            self.store.write_meta_only(meta.with_splits(splits, stats=stats))

    # --- batches --------------------------------------------------------------------------

    def batches(
        self, meta: DatasetMeta, spec: DataSpec | None, plan: bt.BatchPlan, epoch: int, start: int
    ) -> tuple[Iterator[tuple[int, list[dict]]], Stats | None]:
        """One rank's ``(index, rows)`` of ``epoch`` from batch ``start``, and for a streaming
        dataset (``spec``: its domain spec) the ``Stats`` the pass counts into."""
        if not meta.streaming:
            reader = self.store.open_split(meta, plan.split)
            return stored_batches(reader, plan, epoch, start), None
        counted = Stats()
        encoder = make_encoder(spec.tokenizer_path, spec.encode)
        batches = streaming_batches(
            spec, encoder, plan, epoch, start, **self._streaming, stats=counted
        )
        return batches, counted

    def count(
        self, meta: DatasetMeta, spec: DataSpec | None, plan: bt.BatchPlan, epoch: int
    ) -> int:
        """How many batches ``batches`` yields for ``plan`` in ``epoch``, without a row read
        (stored) or kept (streaming: remembered, and the same for every rank of the world)."""
        if not meta.streaming:
            return stored_count(self.store.open_split(meta, plan.split), plan, epoch)
        key = (meta.id, meta.fingerprint, replace(plan, rank=0), epoch)
        with self._lock(f"count:{key}"):
            if key not in self._counts:
                encoder = make_encoder(spec.tokenizer_path, spec.encode)
                self._counts[key] = streaming_count(spec, encoder, plan, epoch, **self._streaming)
            return self._counts[key]
