"""Requests from many queue deliveries merged into engine batches: ``submit`` -> a future.

The rollout worker holds up to ``max_inflight`` tasks at once and hands each one's
``GenerationRequest`` to an ``EngineScheduler``; the future resolves to the request's
completions (one per sample). Two ways, chosen by what the engine offers:

- **Continuous batching** (an engine with ``submit``, the ``vllm`` engine): every request goes
  into the running engine at once, joins the batch at its next step and leaves when it is done.
- **Static batches** (the ``hf`` engine): one thread takes what is queued (after waiting up to
  ``max_wait_s`` for more, or until ``max_batch_rows`` sequences are queued), runs it as one
  ``generate_batch`` call and resolves those futures; requests submitted meanwhile form the next
  batch. If a call raises, every request in it gets the exception.

Modelled on ``services/reward/batching.py`` (the reward worker's batcher); this module knows
engines and requests, nothing about queues or protos.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future

from services.rollout.engines import GenerationEngine, GenerationRequest

logger = logging.getLogger(__name__)


class ClosedError(RuntimeError):
    pass


class EngineScheduler:
    """See the module docstring."""

    def __init__(
        self,
        engine: GenerationEngine,
        *,
        max_batch_rows: int | None = None,
        max_wait_s: float = 0.005,
    ) -> None:
        self.engine = engine
        self._native = getattr(engine, "submit", None)
        rows = max_batch_rows or int(getattr(engine, "max_batch_rows", 0) or 64)
        if rows < 1 or max_wait_s < 0:
            raise ValueError("max_batch_rows must be >= 1 and max_wait_s >= 0")
        self.max_batch_rows = rows
        self.max_wait_s = max_wait_s
        self._pending: list[tuple[GenerationRequest, Future]] = []
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0  # engine calls made (static mode)
        self.requests = 0  # requests submitted
        self._thread: threading.Thread | None = None
        if self._native is None:
            self._thread = threading.Thread(target=self._loop, name="rollout-batcher", daemon=True)
            self._thread.start()

    @property
    def continuous(self) -> bool:
        return self._native is not None

    def submit(self, request: GenerationRequest) -> Future:
        """Queue ``request``; the future resolves to its ``sampling.n`` completions."""
        self.requests += 1
        if self._native is not None:
            if self._closed:
                raise ClosedError("the scheduler is closed")
            return self._native(request)
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise ClosedError("the scheduler is closed")
            self._pending.append((request, future))
            self._cond.notify()
        return future

    def submit_many(self, requests: list[GenerationRequest]) -> list[Future]:
        """``submit`` for several at once: queued together, so a static batch never takes only
        the first of them (the worker hands over a whole fetch this way)."""
        if self._native is not None:
            self.requests += len(requests)
            many = getattr(self.engine, "submit_many", None)
            if many is not None:
                return many(requests)
            return [self._native(r) for r in requests]
        futures: list[Future] = [Future() for _ in requests]
        with self._cond:
            if self._closed:
                raise ClosedError("the scheduler is closed")
            self._pending.extend(zip(requests, futures, strict=True))
            self.requests += len(requests)
            self._cond.notify()
        return futures

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the queued requests are generated; later submissions raise."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _take(self) -> list[tuple[GenerationRequest, Future]]:
        """Under the lock: the next batch, waiting for it to fill up to ``max_wait_s``."""
        while not self._pending:
            if self._closed:
                return []
            self._cond.wait()
        deadline = time.monotonic() + self.max_wait_s
        while not self._closed and self._rows() < self.max_batch_rows:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._cond.wait(left)
        batch, rows = [], 0
        while self._pending:
            n = self._pending[0][0].sampling.n
            if batch and rows + n > self.max_batch_rows:
                break
            batch.append(self._pending.pop(0))
            rows += n
        return batch

    def _rows(self) -> int:
        return sum(r.sampling.n for r, _f in self._pending)

    def _loop(self) -> None:
        while True:
            with self._cond:
                batch = self._take()
            if not batch:
                return
            live = [(r, f) for r, f in batch if f.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                results = self.engine.generate_batch([r for r, _f in live])
            except Exception as exc:  # handed to each caller (the worker fails the task)
                logger.warning("engine batch of %d requests failed: %s", len(live), exc)
                for _r, f in live:
                    f.set_exception(exc)
                continue
            finally:
                self.batches += 1
            for (_r, f), completions in zip(live, results, strict=True):
                f.set_result(completions)
