"""Where a job's batches come from: the ``BatchSource`` protocol and its two implementations.

- ``DataServiceSource`` streams ``DataService.StreamBatches`` through ``llamafleet.client.Client``
  (preparing an inline ``DatasetSpec`` first with the idempotent ``PrepareDataset``), and asks it
  how many batches an epoch holds (``count_only``) instead of streaming the epoch to count them.
- ``InMemorySource`` serves hand-built ``TokenRow``s with the same contract (seeded shuffle per
  epoch, the same number of batches on every rank, resumable cursors); ``InMemoryPairSource`` the
  same over ``PreferencePair``s (batches carry ``pairs``). Tests use them directly; a runner given
  ``--data-address file://DIR`` reads ``DIR/train.binpb`` (and ``DIR/eval.binpb`` when present),
  each a serialized ``data.v1.Batch`` holding all rows, or all preference pairs, of the split.

A source also names the tokens that end a response in its data (``end_token_ids``: the data
service's ``Dataset.end_token_ids`` for its template; an in-memory source those it was given),
where the ``rm`` recipe reads its scores and PPO ends its episodes.

Each streamed batch comes with a cursor; a checkpoint stores the cursor of the last batch it
trained on, and resuming streams from just after it, so no example is trained twice or skipped.
Rank ``r`` of ``w`` gets rows ``[r*b, (r+1)*b)`` of each global batch of ``w*b`` rows, so a world
of ``w`` processes sees the same global batches as one process with ``w*b`` rows.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from llamafleet.data.v1 import data_pb2, data_service_pb2
from llamafleet.training.v1 import training_pb2

logger = logging.getLogger(__name__)

STREAM_TIMEOUT_S = 7 * 24 * 3600.0  # a stream lives as long as the epoch


@dataclass(frozen=True)
class StreamRequest:
    """What one rank asks for; mirrors ``StreamBatchesRequest``."""

    split: int = data_pb2.SPLIT_TRAIN
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    seed: int = 42
    batch_rows: int | None = 8
    batch_tokens: int | None = None
    cursor: str = ""


class BatchSource(Protocol):
    """A stream of ``(batch, cursor)`` pairs for one rank and epoch."""

    def stream(self, request: StreamRequest) -> Iterator[tuple[data_pb2.Batch, str]]: ...

    def has_eval(self) -> bool: ...

    def count(self, request: StreamRequest) -> int:
        """Batches one rank gets in one epoch."""
        ...

    def end_token_ids(self) -> tuple[int, ...]:
        """The ids that end a response in this data (its template's; may be empty)."""
        ...


class InMemorySource:
    """The StreamBatches contract over rows held in memory."""

    end_ids: tuple[int, ...] = ()  # the ids that end a response in these rows, if known

    def __init__(
        self,
        train_rows: Sequence[data_pb2.TokenRow],
        eval_rows: Sequence[data_pb2.TokenRow] = (),
        end_token_ids: Sequence[int] = (),
    ) -> None:
        self.rows = {data_pb2.SPLIT_TRAIN: list(train_rows), data_pb2.SPLIT_EVAL: list(eval_rows)}
        self.end_ids = tuple(end_token_ids)

    def end_token_ids(self) -> tuple[int, ...]:
        return tuple(self.end_ids)

    @staticmethod
    def from_dir(folder: str | Path) -> InMemorySource:
        """The splits in ``folder``: ``train.binpb`` (and ``eval.binpb``), serialized Batches of
        rows (an ``InMemorySource``) or of preference pairs (an ``InMemoryPairSource``)."""
        folder = Path(folder)
        if not (folder / "train.binpb").is_file():
            raise FileNotFoundError(f"{folder / 'train.binpb'}: no training split in {folder}")
        splits = []
        for name in ("train.binpb", "eval.binpb"):
            batch = data_pb2.Batch()
            if (folder / name).exists():
                batch.ParseFromString((folder / name).read_bytes())
            if sum(1 for kind in ("rows", "pairs", "feedback") if getattr(batch, kind)) > 1:
                raise ValueError(f"{folder / name}: holds several kinds of examples; write one")
            splits.append(batch)
        kinds = {
            "pairs" if b.pairs else "feedback" if b.feedback else "rows"
            for b in splits
            if b.rows or b.pairs or b.feedback
        }
        if len(kinds) > 1:
            raise ValueError(f"{folder}: train.binpb and eval.binpb hold different kinds ({kinds})")
        if kinds == {"pairs"}:
            return InMemoryPairSource(*(list(b.pairs) for b in splits))
        if kinds == {"feedback"}:
            return InMemoryFeedbackSource(*(list(b.feedback) for b in splits))
        return InMemorySource(*(list(b.rows) for b in splits))

    def has_eval(self) -> bool:
        return bool(self.rows[data_pb2.SPLIT_EVAL])

    def _batches(self, request: StreamRequest) -> list[list[data_pb2.TokenRow]]:
        rows = self.rows[request.split or data_pb2.SPLIT_TRAIN]
        order = list(range(len(rows)))
        if request.split != data_pb2.SPLIT_EVAL:
            random.Random(f"{request.seed}:{request.epoch}").shuffle(order)
        world, rank = max(1, request.world_size), request.rank
        if request.batch_rows:
            size = request.batch_rows
            step = size * world
            usable = len(order) - len(order) % world
            mine = []
            for start in range(0, usable, step):
                chunk = order[start : start + step]
                per = len(chunk) // world
                mine.append(chunk[rank * per : (rank + 1) * per])
            return [[rows[i] for i in b] for b in mine if b]
        per_rank = [order[r::world] for r in range(world)]
        batched = [_token_batches([rows[i] for i in ids], request.batch_tokens) for ids in per_rank]
        fewest = min(len(b) for b in batched)
        return batched[rank][:fewest]

    def count(self, request: StreamRequest) -> int:
        return len(self._batches(replace(request, cursor="")))

    def stream(self, request: StreamRequest) -> Iterator[tuple[data_pb2.Batch, str]]:
        epoch, start = request.epoch, 0
        if request.cursor:
            position = json.loads(request.cursor)
            epoch, start = position["epoch"], position["index"] + 1
        batches = self._batches(replace(request, epoch=epoch))
        for index in range(start, len(batches)):
            yield (
                self._batch(epoch, index, batches[index]),
                json.dumps({"epoch": epoch, "index": index}),
            )

    @staticmethod
    def _batch(epoch: int, index: int, rows: list[data_pb2.TokenRow]) -> data_pb2.Batch:
        batch = data_pb2.Batch(epoch=epoch, index=index, rows=rows)
        batch.tokens = sum(len(r.input_ids) for r in rows)
        batch.trained_tokens = sum(sum(1 for x in r.labels if x != -100) for r in rows)
        return batch


class InMemoryPairSource(InMemorySource):
    """``InMemorySource`` over preference pairs: batches carry ``batch_rows`` ``pairs`` each."""

    def __init__(
        self,
        train_pairs: Sequence[data_pb2.PreferencePair],
        eval_pairs: Sequence[data_pb2.PreferencePair] = (),
        end_token_ids: Sequence[int] = (),
    ) -> None:
        self.rows = {data_pb2.SPLIT_TRAIN: list(train_pairs), data_pb2.SPLIT_EVAL: list(eval_pairs)}
        self.end_ids = tuple(end_token_ids)

    def _batches(self, request: StreamRequest) -> list[list[data_pb2.PreferencePair]]:
        if not request.batch_rows:
            raise ValueError("InMemoryPairSource batches by batch_rows (pairs per batch) only")
        return super()._batches(request)

    @staticmethod
    def _batch(epoch: int, index: int, pairs: list[data_pb2.PreferencePair]) -> data_pb2.Batch:
        batch = data_pb2.Batch(epoch=epoch, index=index, pairs=pairs)
        sides = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        batch.tokens = sum(len(r.input_ids) for r in sides)
        batch.trained_tokens = sum(sum(1 for x in r.labels if x != -100) for r in sides)
        return batch


class InMemoryFeedbackSource(InMemorySource):
    """``InMemorySource`` over rated responses: batches carry ``batch_rows`` ``feedback`` each."""

    def __init__(
        self,
        train: Sequence[data_pb2.FeedbackExample],
        eval_examples: Sequence[data_pb2.FeedbackExample] = (),
        end_token_ids: Sequence[int] = (),
    ) -> None:
        self.rows = {data_pb2.SPLIT_TRAIN: list(train), data_pb2.SPLIT_EVAL: list(eval_examples)}
        self.end_ids = tuple(end_token_ids)

    def _batches(self, request: StreamRequest) -> list[list[data_pb2.FeedbackExample]]:
        if not request.batch_rows:
            raise ValueError("InMemoryFeedbackSource batches by batch_rows (examples) only")
        return super()._batches(request)

    @staticmethod
    def _batch(epoch: int, index: int, examples: list) -> data_pb2.Batch:
        batch = data_pb2.Batch(epoch=epoch, index=index, feedback=examples)
        batch.tokens = sum(len(e.row.input_ids) for e in examples)
        batch.trained_tokens = sum(sum(1 for x in e.row.labels if x != -100) for e in examples)
        return batch


def _token_batches(rows: list[data_pb2.TokenRow], budget: int) -> list[list[data_pb2.TokenRow]]:
    batches: list[list[data_pb2.TokenRow]] = []
    current: list[data_pb2.TokenRow] = []
    for row in rows:
        longest = max([len(r.input_ids) for r in current] + [len(row.input_ids)])
        if current and (len(current) + 1) * longest > budget:
            batches.append(current)
            current = []
        current.append(row)
    if current:
        batches.append(current)
    return batches


class DataServiceSource:
    """Batches from the data service's ``StreamBatches``."""

    def __init__(self, client, dataset_id: str, eval_dataset_id: str | None = None) -> None:
        self.client = client
        self.dataset_id = dataset_id
        self.eval_dataset_id = eval_dataset_id

    def _eval_target(self) -> tuple[str, int] | None:
        if self.eval_dataset_id:
            return self.eval_dataset_id, data_pb2.SPLIT_TRAIN
        request = data_service_pb2.GetDatasetRequest(dataset_id=self.dataset_id)
        dataset = self.client.data.GetDataset(request).dataset
        if any(s.split == data_pb2.SPLIT_EVAL for s in dataset.splits):
            return self.dataset_id, data_pb2.SPLIT_EVAL
        return None

    def has_eval(self) -> bool:
        return self._eval_target() is not None

    def end_token_ids(self) -> tuple[int, ...]:
        """The training dataset's ``end_token_ids`` (those of its template and tokenizer)."""
        request = data_service_pb2.GetDatasetRequest(dataset_id=self.dataset_id)
        ends = tuple(self.client.data.GetDataset(request).dataset.end_token_ids)
        if not ends:
            logger.warning(
                "dataset %s names no end-of-turn tokens (prepared by an earlier data service, "
                "or read through one): only the base model's eos ids end a response; "
                "PrepareDataset it again to record its template's",
                self.dataset_id,
            )
        return ends

    def count(self, request: StreamRequest) -> int:
        """Asked of the data service (``count_only``): no row crosses the wire."""
        message = self._message(request)
        if message is None:
            return 0
        message.count_only = True
        message.cursor = ""
        responses = self.client.data.StreamBatches(message, timeout=STREAM_TIMEOUT_S)
        try:
            first = next(responses, None)
        finally:
            responses.close()  # cancels the call if the service went on streaming
        if first is None or first.HasField("batch"):
            raise RuntimeError(
                f"the data service did not answer StreamBatches count_only for dataset "
                f"{message.dataset_id!r}: it predates the field; upgrade it to this version"
            )
        return first.num_batches

    def _message(self, request: StreamRequest) -> data_service_pb2.StreamBatchesRequest | None:
        """The ``StreamBatchesRequest`` of ``request`` (None: no eval split anywhere)."""
        dataset_id, split = self.dataset_id, request.split
        if request.split == data_pb2.SPLIT_EVAL:
            target = self._eval_target()
            if target is None:
                return None
            dataset_id, split = target
        message = data_service_pb2.StreamBatchesRequest(
            dataset_id=dataset_id,
            split=split,
            rank=request.rank,
            world_size=request.world_size,
            epoch=request.epoch,
            seed=request.seed,
            cursor=request.cursor,
        )
        if request.batch_tokens:
            message.batch_tokens = request.batch_tokens
        else:
            message.batch_rows = request.batch_rows or 8
        return message

    def stream(self, request: StreamRequest) -> Iterator[tuple[data_pb2.Batch, str]]:
        message = self._message(request)
        if message is None:
            return
        for response in self.client.data.StreamBatches(message, timeout=STREAM_TIMEOUT_S):
            yield response.batch, response.cursor


def prepare_dataset(client, ref: training_pb2.DatasetRef, dataset_id: str, base_model: str) -> str:
    """The id of ``ref``'s dataset, preparing an inline spec (idempotently, as ``dataset_id``)."""
    if ref.WhichOneof("dataset") == "dataset_id":
        return ref.dataset_id
    spec = data_pb2.DatasetSpec()
    spec.CopyFrom(ref.spec)
    if not spec.tokenization.tokenizer_path:
        spec.tokenization.tokenizer_path = base_model
    request = data_service_pb2.PrepareDatasetRequest(dataset_id=dataset_id, spec=spec)
    dataset = client.data.PrepareDataset(request, timeout=STREAM_TIMEOUT_S).dataset
    logger.info("dataset %s ready: %d rows", dataset.id, dataset.stats.rows)
    return dataset.id


def open_source(
    spec: training_pb2.TrainingJobSpec, data_address: str, job_id: str, token: str = ""
) -> BatchSource:
    """The batch source of a job: ``file://DIR`` (offline rows) or a data service address."""
    if data_address.startswith("file://"):
        return InMemorySource.from_dir(data_address.removeprefix("file://"))
    from llamafleet.client import Client

    client = Client({"data": data_address}, token=token, timeout=60.0)
    train_id = prepare_dataset(client, spec.dataset, f"{job_id}-train", spec.base_model)
    eval_id = None
    if spec.eval_dataset.WhichOneof("dataset"):
        eval_id = prepare_dataset(client, spec.eval_dataset, f"{job_id}-eval", spec.base_model)
    return DataServiceSource(client, train_id, eval_id)
