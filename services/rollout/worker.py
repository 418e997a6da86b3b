"""The rollout queue worker: ``RolloutTask``s from ``llamafleet:rollout:tasks`` -> ``Rollout``s.

Consumes the stream in the ``rollout`` consumer group with ``services.common.queues.WorkQueue``
(at-least-once delivery; each task takes effect once because the commit marks ``task.item_id``
done, publishes the ``Rollout`` to ``llamafleet:rollout:results`` under the same id and acks, in
one Lua script). The lease is renewed while a long generation runs (``WorkQueue.run`` keeps it
with ``lease_keeper``). A task whose adapter version is missing has it fetched from training
first; a task that keeps failing (an adapter version training does not have, a malformed payload,
bad sampling parameters) is dead-lettered with the reason after ``max_deliveries`` attempts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError
from llamafleet.rollout.v1 import rollout_pb2

from services.common import queues
from services.common.errors import InvalidArgument
from services.common.queues import Delivery, Output, WorkQueue
from services.rollout.convert import FINISH_REASONS
from services.rollout.engines import GenerationRequest, collect
from services.rollout.generator import Generator

logger = logging.getLogger(__name__)

GROUP = "rollout"


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(max(0, int(seconds * 1e9)))
    return d


class RolloutWorker:
    """Turns deliveries into rollouts; ``start``/``stop`` run ``WorkQueue.run`` in a thread."""

    def __init__(
        self,
        queue: WorkQueue,
        generator: Generator,
        *,
        on_fatal: Callable[[str], object] | None = None,
    ) -> None:
        self.queue = queue
        self.generator = generator
        self.on_fatal = on_fatal  # told why, when the loop ends by itself (the process stops)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failure: Exception | None = None  # why the loop ended by itself, if it did

    def handle(self, delivery: Delivery) -> list[Output]:
        try:
            task = rollout_pb2.RolloutTask.FromString(delivery.payload)
        except DecodeError:
            raise InvalidArgument(
                f"payload of {delivery.item_id} is not a RolloutTask", reason="BAD_TASK"
            ) from None
        if task.item_id != delivery.item_id:
            raise InvalidArgument(
                f"entry id {delivery.item_id!r} differs from task.item_id {task.item_id!r}",
                reason="BAD_TASK",
            )
        gen = self.generator
        engine = gen.require_engine()
        sampling = gen.sampling(_without_n(task.sampling), allow_n=False)
        prompt = gen.check_prompt(task.prompt_ids)
        picked_up = time.time()
        with gen.pinned(task.adapter) as pinned:
            started = time.perf_counter()
            request = GenerationRequest(prompt, sampling, pinned.name)
            # not cancelled by stop(): a started task finishes and commits (at most max_tokens)
            (completion,) = collect(engine.generate(request), 1)
            generation_s = time.perf_counter() - started
        if completion.finish_reason is None:  # pragma: no cover - engines always finish
            raise RuntimeError(f"engine {engine.name} ended {task.item_id} without a reason")
        created = task.create_time.ToNanoseconds() / 1e9
        queue_s = picked_up - created if created else 0.0
        rollout = rollout_pb2.Rollout(
            task=task,
            completion_ids=completion.token_ids,
            logprobs=completion.logprobs,
            finish_reason=FINISH_REASONS[completion.finish_reason],
            completion_text=completion.text,
            engine=engine.name,
            adapter_version=task.adapter.version if task.adapter.id else 0,
            worker=self.queue.consumer,
            timings=rollout_pb2.RolloutTimings(
                queue_time=_duration(queue_s),
                adapter_load_time=_duration(pinned.load_time_s),
                generation_time=_duration(generation_s),
            ),
        )
        return [(queues.ROLLOUT_RESULTS, task.item_id, rollout.SerializeToString())]

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rollout-worker", daemon=True)
        self._thread.start()
        logger.info(
            "rollout worker %s consuming %s (group %s)",
            self.queue.consumer,
            self.queue.stream,
            self.queue.group,
        )

    def _run(self) -> None:
        try:
            self.queue.run(self.handle, stop=self._stop, block_ms=500)
        except queues.RedisUnusable as exc:  # wrong password, ACL, not Redis: no retry helps
            self.failure = exc
            logger.error("rollout worker stopped: %s", exc)
        except Exception as exc:
            self.failure = exc
            logger.exception("rollout worker stopped on an unexpected error")
        if self.failure is not None and self.on_fatal is not None:
            self.on_fatal(f"rollout worker stopped: {self.failure}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop fetching; a task being generated finishes and commits first (up to ``timeout``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def _without_n(params: rollout_pb2.SamplingParams) -> rollout_pb2.SamplingParams:
    copy = rollout_pb2.SamplingParams()
    copy.CopyFrom(params)
    copy.ClearField("n")  # RolloutTask ignores n: one task is one sample
    return copy


def make_worker(
    generator: Generator,
    redis_url: str,
    *,
    lease_ms: int,
    max_deliveries: int,
    on_fatal: Callable[[str], object] | None = None,
):
    """A worker on the rollout tasks stream with the service's delivery policy."""
    r = queues.connect(redis_url, client_name="rollout-worker")
    queue = WorkQueue(
        r,
        stream=queues.ROLLOUT_TASKS,
        group=GROUP,
        lease_ms=lease_ms,
        max_deliveries=max_deliveries,
    )
    return RolloutWorker(queue, generator, on_fatal=on_fatal)
