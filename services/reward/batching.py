"""Batching across callers: items from concurrent requests are merged into one scorer call.

Callers (gRPC handlers on the event loop, worker threads) ``submit`` a list of items for one
scorer and get a ``concurrent.futures.Future`` of their own scores, in their order. One thread
owns the scorer calls: for each scorer key it waits until ``max_batch_size`` items are queued or
the oldest queued item has waited ``max_wait_s``, then scores up to ``max_batch_size`` items in
one call and hands each caller its slice. A request larger than a batch is split over several;
items of different keys (another adapter, another scorer) are never mixed. If a call raises,
every request with items in that batch gets the exception.

Scorer calls run one at a time on that thread: a model's active adapter is model-wide state,
and a forward already uses all the cores it is given. This module knows nothing about models,
scores or normalisation; a "scorer" here is anything with ``key`` and ``score(items)``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class BatchScorer(Protocol):
    @property
    def key(self) -> Hashable: ...

    def score(self, items: Sequence[Any]) -> list[float]: ...


@dataclass(eq=False)
class _Request:
    future: Future
    results: list[float | None]
    outstanding: int


@dataclass(eq=False)
class _Group:
    scorer: BatchScorer
    first_time: float
    entries: list[tuple[_Request, int, Any]] = field(default_factory=list)


class ClosedError(RuntimeError):
    pass


class Batcher:
    """Merges submissions per scorer key; see the module docstring."""

    def __init__(self, max_batch_size: int, max_wait_s: float, name: str = "reward-batcher"):
        if max_batch_size < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size must be >= 1 and max_wait_s >= 0")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._groups: OrderedDict[Hashable, _Group] = OrderedDict()
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0  # scorer calls made
        self.items = 0  # items scored
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, scorer: BatchScorer, items: Sequence[Any]) -> Future:
        """Queue ``items`` for ``scorer``; the future resolves to their scores, in order."""
        future: Future = Future()
        if not items:
            future.set_result([])
            return future
        request = _Request(future, [None] * len(items), len(items))
        with self._cond:
            if self._closed:
                raise ClosedError("the batcher is closed")
            group = self._groups.get(scorer.key)
            if group is None:
                group = self._groups[scorer.key] = _Group(scorer, time.monotonic())
            group.entries.extend((request, i, item) for i, item in enumerate(items))
            self._cond.notify()
        return future

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the queued items are scored; later submissions raise ``ClosedError``."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _take(self) -> tuple[BatchScorer, list[tuple[_Request, int, Any]]] | None:
        """Under the lock: the next batch that is due, or None after waiting a while."""
        now = time.monotonic()
        wait = None
        for key, group in self._groups.items():
            due = group.first_time + self.max_wait_s
            if self._closed or len(group.entries) >= self.max_batch_size or due <= now:
                batch = group.entries[: self.max_batch_size]
                del group.entries[: self.max_batch_size]
                if not group.entries:
                    del self._groups[key]
                return group.scorer, batch
            wait = due - now if wait is None else min(wait, due - now)
        self._cond.wait(timeout=wait)
        return None

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._closed and not self._groups:
                    return
                taken = self._take()
            if taken is not None:
                self._run(*taken)

    def _run(self, scorer: BatchScorer, batch: list[tuple[_Request, int, Any]]) -> None:
        try:
            scores = scorer.score([item for _req, _i, item in batch])
            if len(scores) != len(batch):
                raise RuntimeError(
                    f"scorer {scorer.key!r} returned {len(scores)} scores for {len(batch)} items"
                )
        except Exception as exc:  # handed to the callers, who map it to a status
            for request in {id(req): req for req, _i, _item in batch}.values():
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        finally:
            self.batches += 1
            self.items += len(batch)
        for (request, index, _item), value in zip(batch, scores, strict=True):
            if request.future.done():  # failed by an earlier batch
                continue
            request.results[index] = float(value)
            request.outstanding -= 1
            if request.outstanding == 0:
                request.future.set_result(list(request.results))
