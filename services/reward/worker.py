"""The reward worker: ``llamafleet:rollout:results`` -> ``llamafleet:reward:results:{job}``.

(With several base models, the results stream of the service's base: ``RewardConfig``.)

Each entry's payload is a serialized ``rollout.v1.Rollout``. The worker scores it with the
scorer its task names (``task.scorer``, ``task.reward_adapter``, the job's settings), and
commits one serialized ``reward.v1.ScoredRollout`` to the job's stream with item id
``task.item_id``, through ``WorkQueue.commit`` (mark done + publish + ack in one Lua script), so
a redelivered rollout is published once. Several worker threads share the service's
``ScoringEngine``, so their reward-model items are batched together (and with RPC callers).

A rollout that cannot be scored (undecodable, unknown scorer, missing reference answer, ...)
raises; the queue retries it after the lease and dead-letters it after ``max_deliveries`` with
the error text as the reason. This module knows nothing about how scores are computed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis
from google.protobuf.message import DecodeError
from llamafleet.reward.v1 import reward_pb2
from llamafleet.rollout.v1 import rollout_pb2

from services.common import queues
from services.common.errors import InvalidArgument
from services.common.queues import WorkQueue
from services.reward.functions.messages import components_pb
from services.reward.scorers import ScoreInput
from services.reward.scoring import ScoringEngine, adapter_key

logger = logging.getLogger(__name__)

GROUP = "reward"


def rollout_item(rollout: rollout_pb2.Rollout) -> ScoreInput:
    task = rollout.task
    return ScoreInput(
        item_id=task.item_id,
        prompt_ids=tuple(task.prompt_ids),
        completion_ids=tuple(rollout.completion_ids),
        completion_text=rollout.completion_text,
        reference_answer=task.reference_answer,
    )


def score_rollout(
    engine: ScoringEngine, payload: bytes, worker: str = ""
) -> tuple[str, str, bytes]:
    """``(output stream, item id, ScoredRollout bytes)`` for one serialized Rollout, scored by
    the consumer named ``worker``."""
    rollout = rollout_pb2.Rollout()
    try:
        rollout.ParseFromString(payload)
    except DecodeError:
        raise InvalidArgument(
            "payload is not a serialized llamafleet.rollout.v1.Rollout", reason="BAD_PAYLOAD"
        ) from None
    task = rollout.task
    if not task.job_id or not task.item_id:
        raise InvalidArgument(
            "rollout has no task.job_id or task.item_id; cannot name its output",
            reason="BAD_PAYLOAD",
        )
    adapter = adapter_key(
        task.reward_adapter.id, task.reward_adapter.version, "task.reward_adapter"
    )
    override = None
    if task.HasField("reward_settings"):  # the job's own settings, carried by its task
        override = engine.settings_from(task.reward_settings, "task.reward_settings")
    calls = engine.function_calls(
        task.scorer, task.reward_settings.functions, "task.reward_settings.functions"
    )
    scored = engine.score(
        task.scorer,
        task.job_id,
        adapter,
        [rollout_item(rollout)],
        field_prefix="task.",
        items_field="rollout",
        override=override,
        calls=calls,
    )
    out = reward_pb2.ScoredRollout(
        rollout=rollout,
        raw_score=scored.raw[0],
        normalized_score=scored.normalized[0],
        scorer=scored.scorer,
        components=components_pb(scored.components[0]) if scored.components else [],
        worker=worker,
    )
    return queues.reward_results_stream(task.job_id), task.item_id, out.SerializeToString()


class RewardWorker:
    """``threads`` consumers of the ``reward`` group, each running ``WorkQueue.run``."""

    def __init__(
        self,
        engine: ScoringEngine,
        r: redis.Redis,
        *,
        threads: int = 1,
        lease_ms: int = queues.DEFAULT_LEASE_MS,
        max_deliveries: int = queues.DEFAULT_MAX_DELIVERIES,
        block_ms: int = 1000,
        consumer_prefix: str | None = None,
        on_fatal: Callable[[str], object] | None = None,
        stream: str = queues.ROLLOUT_RESULTS,
    ) -> None:
        self.engine = engine
        self.stream = stream
        self.on_fatal = on_fatal  # told why, when the loops end by themselves (the process stops)
        self.stop_event = threading.Event()
        self._block_ms = block_ms
        prefix = consumer_prefix or queues.default_consumer_name()
        self.queues = [
            WorkQueue(
                r,
                stream,
                GROUP,
                consumer=f"{prefix}:{i}",
                lease_ms=lease_ms,
                max_deliveries=max_deliveries,
            )
            for i in range(threads)
        ]
        self._threads: list[threading.Thread] = []
        self.failure: Exception | None = None  # why the loops ended by themselves, if they did

    def start(self) -> None:
        for q in self.queues:
            try:
                q.ensure_group()
            except redis.RedisError as exc:
                if not queues.is_transient(exc):
                    raise q.unusable(exc) from exc
                # Redis is down for now: the loop creates the group when it is back.
            thread = threading.Thread(
                target=self._run,
                args=(q,),
                name=f"reward-worker:{q.consumer}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        logger.info(
            "reward worker: %d consumer(s) of %s/%s",
            len(self.queues),
            self.stream,
            GROUP,
        )

    def _run(self, queue: WorkQueue) -> None:
        try:
            queue.run(
                lambda delivery: [score_rollout(self.engine, delivery.payload, queue.consumer)],
                stop=self.stop_event,
                block_ms=self._block_ms,
            )
        except queues.RedisUnusable as exc:  # wrong password, ACL, not Redis: no retry helps
            self.failure = exc
            self.stop_event.set()  # the other threads share the client: they would fail alike
            logger.error("reward worker %s stopped: %s", queue.consumer, exc)
        except Exception as exc:
            self.failure = exc
            logger.exception("reward worker %s stopped on an unexpected error", queue.consumer)
        else:
            return
        if self.on_fatal is not None:
            self.on_fatal(f"reward worker {queue.consumer} stopped: {self.failure}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop fetching; an item in hand is finished (or left to be re-claimed)."""
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout)
