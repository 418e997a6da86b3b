"""The PPO trainer's side of the queues: rollout tasks out, scored rollouts in, acks after the
checkpoint.

- **Out.** ``publish_tasks`` adds ``RolloutTask``s to ``llamafleet:rollout:tasks`` (in a cluster
  with several base models: the stream of the job's base, ``queues.rollout_tasks_stream``, which
  only that base's workers read) with the idempotent ``queues.publish_many`` (one atomic script
  per call, so a rollout worker blocked on the stream wakes to all of them and puts them in one
  engine batch): task ids are deterministic (``job:version:step:prompt:sample``),
  so a resumed trainer that publishes a step again adds nothing.
  Where Redis has a replica (Sentinel), a step's tasks count as published only once a replica
  has them (``replication.wait_replicated``): a failover cannot lose them.
- **In.** The job's ``llamafleet:reward:results:{job}`` stream is read in the ``training`` group by
  one consumer named after the job. A (re)started trainer first reads that consumer's own pending
  entries (delivered before a crash, never acked), then new ones. Entries are not acked when read:
  ``ack`` runs after the checkpoint that records their ids as consumed, so a crash in between
  redelivers them and the resumed trainer skips those it already used.
- **Dead letters.** A task that a rollout or reward worker gave up on never produces a scored
  rollout; waiting for it would hang the job. ``dead_letters`` reads the dead-letter stream for
  this job's items, so the trainer fails with the reason instead.
- **Redis going away.** Every call waits out a Redis that is restarting, loading, read-only or
  busy (``queues.is_transient``), for up to ``outage_limit_s``; the writes are idempotent
  (``publish`` marks, ``XACK``), so repeating one whose reply was lost changes nothing. A read
  that fails re-reads this consumer's own pending entries next, because the entries a lost reply
  carried are delivered to it and would otherwise never be seen. Wrong credentials or ACL end the
  job at once (``queues.RedisUnusable``).

Knows Redis and the payload types; nothing about models or PPO arithmetic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis
from google.protobuf.message import DecodeError
from llamafleet.reward.v1 import reward_pb2
from llamafleet.rollout.v1 import rollout_pb2

from services.common import queues, replication
from services.common.errors import Unavailable

logger = logging.getLogger(__name__)

GROUP = "training"
READ_COUNT = 256
OUTAGE_LIMIT_S = 600.0  # how long the trainer waits for Redis to come back before failing
_BACKOFF_MIN_S, _BACKOFF_MAX_S = 0.2, 5.0
_WARN_EVERY_S = 10.0
T = TypeVar("T")


def task_id(job_id: str, version: int, step: int, prompt: int, sample: int) -> str:
    """The deterministic id of one rollout task (DESIGN.md section 2)."""
    return f"{job_id}:{version}:{step}:{prompt}:{sample}"


def parse_task_id(item_id: str) -> tuple[str, int, int, int, int] | None:
    """``(job, version, step, prompt, sample)`` of a task id, or None if it is not one."""
    parts = item_id.split(":")
    if len(parts) < 5 or not all(p.isdigit() for p in parts[-4:]):
        return None
    return ":".join(parts[:-4]), *(int(p) for p in parts[-4:])  # type: ignore[return-value]


@dataclass(frozen=True)
class Received:
    entry_id: str
    item_id: str
    scored: reward_pb2.ScoredRollout | None  # None: the payload did not decode


@dataclass(frozen=True)
class DeadTask:
    item_id: str
    group: str
    deliveries: str
    reason: str


def connect(
    redis_url: str, job_id: str, *, tasks_stream: str = queues.ROLLOUT_TASKS
) -> RolloutExchange:
    """The exchange of ``job_id`` over the work-queue Redis at ``redis_url``, publishing tasks to
    ``tasks_stream`` (the stream of the job's base)."""
    r = queues.connect(redis_url, socket_timeout=10.0, client_name=f"ppo-trainer-{job_id}")
    return RolloutExchange(r, job_id, tasks_stream=tasks_stream)


class RolloutExchange:
    """Tasks out, scored rollouts in, for one PPO job."""

    def __init__(
        self,
        r: redis.Redis,
        job_id: str,
        *,
        outage_limit_s: float = OUTAGE_LIMIT_S,
        tasks_stream: str = queues.ROLLOUT_TASKS,
    ) -> None:
        self.r = r
        self.job_id = job_id
        self.tasks = tasks_stream  # the rollout tasks stream of the job's base
        self.results = queues.reward_results_stream(job_id)
        self.consumer = f"trainer-{job_id}"
        self.outage_limit_s = outage_limit_s
        self.outages = 0  # how many times Redis went away and came back (for the figures)
        self._history = "0"  # own pending entries first, then ">" (new ones)
        self._deadletter_cursor = "0"
        self._outage_since: float | None = None
        self._backoff = _BACKOFF_MIN_S
        self._warned = 0.0

    # --- waiting out Redis ------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` (idempotent Redis calls), retried until Redis takes it or the outage is over
        ``outage_limit_s``."""
        while True:
            try:
                value = fn()
            except redis.RedisError as exc:
                time.sleep(self._outage(what, exc))
                continue
            self._healed()
            return value

    def _outage(self, what: str, exc: redis.RedisError) -> float:
        """Note a failed call; the seconds to wait before the next try. Raises when waiting
        cannot help (credentials, ACL, not Redis) or has lasted ``outage_limit_s``."""
        if not queues.is_transient(exc):
            raise queues.RedisUnusable(
                queues.unusable_message(queues.describe_client(self.r), exc),
                reason="REDIS_UNUSABLE",
            ) from exc
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since, self._backoff, self._warned = now, _BACKOFF_MIN_S, 0.0
        down = now - self._outage_since
        if down > self.outage_limit_s:
            raise Unavailable(
                f"Redis at {queues.describe_client(self.r)} (setting redis_url) has been "
                f"unavailable for {down:.0f} s, more than the PPO trainer waits "
                f"({self.outage_limit_s:.0f} s; last error on {what}: {type(exc).__name__}: "
                f"{exc}); the job stops here: resume it from its last checkpoint with `resume`",
                reason="REDIS_UNAVAILABLE",
            ) from exc
        if now - self._warned >= _WARN_EVERY_S:
            self._warned = now
            logger.warning(
                "PPO job %s: Redis unavailable for %.1f s (%s: %s: %s); waiting for it",
                self.job_id, down, what, type(exc).__name__, exc,
            )  # fmt: skip
        wait, self._backoff = self._backoff, min(self._backoff * 2, _BACKOFF_MAX_S)
        return wait

    def _healed(self) -> None:
        if self._outage_since is not None:
            logger.warning(
                "PPO job %s: Redis is back after %.1f s",
                self.job_id, time.monotonic() - self._outage_since,
            )  # fmt: skip
            self._outage_since = None
            self.outages += 1

    # --- the queues ---------------------------------------------------------------------------

    def ensure_group(self) -> None:
        def create() -> None:
            try:
                self.r.xgroup_create(self.results, GROUP, id="0", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

        self._call("create the consumer group", create)

    def publish_tasks(self, tasks: list[rollout_pb2.RolloutTask]) -> int:
        """Publish ``tasks``; returns how many were new (0 when all were published before).

        Where the primary has a replica, returns only once one has them (``WAIT``): a task lost
        in a failover would never be scored, and nobody else would publish it again. Until a
        replica confirms, the tasks are published again (idempotent) and waited for again."""
        added = None
        while True:
            items = [(task.item_id, task.SerializeToString()) for task in tasks]
            # one script: the workers wake to the whole step's tasks at once, and batch them
            new = self._call(
                "publish tasks",
                lambda: queues.publish_many(self.r, self.tasks, items),  # noqa: B023
            )
            added = new if added is None else added
            try:
                replication.wait_replicated(self.r)
            except redis.RedisError as exc:
                time.sleep(self._outage("replicate tasks", exc))
                continue
            self._healed()
            return added

    def leftovers(self) -> str:
        """What Redis still holds of an earlier job with this id ("" if nothing): a job created
        afresh under a reused id would have its tasks de-duplicated away and wait forever."""
        first = queues.published_key(self.tasks, task_id(self.job_id, 1, 0, 0, 0))
        entries = self._call("check for leftovers", lambda: self.r.xlen(self.results))
        published = self._call("check for leftovers", lambda: self.r.exists(first))
        if not entries and not published:
            return ""
        return f"{entries} scored rollout(s) in {self.results}" + (
            f" and the publish mark of task {task_id(self.job_id, 1, 0, 0, 0)}" if published else ""
        )

    def task_consumers(self) -> int:
        """How many rollout workers read the job's tasks stream (consumers of its groups): 0
        while no worker serves the job's base (or none has started yet: KEDA scales from zero)."""

        def count() -> int:
            try:
                return sum(g["consumers"] for g in self.r.xinfo_groups(self.tasks))
            except redis.ResponseError:  # no such stream yet: nothing has read it
                return 0

        return self._call("count the rollout workers", count)

    def published_version(self, step: int, versions: list[int]) -> int | None:
        """The first of ``versions`` under which ``step``'s tasks were already published (by a
        run that crashed after publishing them), or None."""
        for version in versions:
            key = queues.published_key(self.tasks, task_id(self.job_id, version, step, 0, 0))
            if self._call("look up published tasks", lambda: self.r.exists(key)):  # noqa: B023
                return version
        return None

    def read(self, block_ms: int) -> list[Received]:
        """Scored rollouts delivered to this trainer: its own unacked ones first (after a
        restart), then new ones, blocking up to ``block_ms`` when there are none. Nothing
        (after a wait) while Redis is unavailable; the caller calls again."""
        try:
            got = self._read(block_ms)
        except redis.RedisError as exc:
            wait = self._outage("read scored rollouts", exc)
            # A lost reply may have carried entries that are now pending for this consumer:
            # read its own pending entries again first (the caller skips what it already has).
            self._history = "0"
            time.sleep(wait)
            return []
        self._healed()
        return got

    def _read(self, block_ms: int) -> list[Received]:
        if self._history != ">":
            reply = self.r.xreadgroup(
                GROUP, self.consumer, {self.results: self._history}, count=READ_COUNT
            )
            entries = reply[0][1] if reply else []
            if entries:
                self._history = entries[-1][0].decode()
                return [self._received(eid, fields) for eid, fields in entries]
            self._history = ">"
        reply = self.r.xreadgroup(
            GROUP, self.consumer, {self.results: ">"}, count=READ_COUNT, block=block_ms or None
        )
        entries = reply[0][1] if reply else []
        return [self._received(eid, fields) for eid, fields in entries]

    @staticmethod
    def _received(entry_id: bytes, fields: dict) -> Received:
        item_id = (fields.get(b"id") or b"").decode()
        try:
            scored = reward_pb2.ScoredRollout.FromString(fields.get(b"payload") or b"")
        except DecodeError:
            scored = None
        return Received(entry_id.decode(), item_id, scored)

    def ack(self, entry_ids: list[str]) -> None:
        for start in range(0, len(entry_ids), 1000):
            chunk = entry_ids[start : start + 1000]
            self._call("ack", lambda: self.r.xack(self.results, GROUP, *chunk))  # noqa: B023

    def dead_letters(self) -> list[DeadTask]:
        """Dead-lettered items of this job added since the last call (all of them, first)."""
        out: list[DeadTask] = []
        prefix = f"{self.job_id}:"
        while True:
            start = "-" if self._deadletter_cursor == "0" else f"({self._deadletter_cursor}"
            try:
                entries = self.r.xrange(queues.DEADLETTER, min=start, count=1000)
            except redis.RedisError as exc:
                time.sleep(self._outage("read dead letters", exc))
                return out  # what was read so far; the cursor is where it stopped
            if not entries:
                return out
            self._deadletter_cursor = entries[-1][0].decode()
            for _eid, fields in entries:
                item_id = (fields.get(b"id") or b"").decode()
                if item_id.startswith(prefix):
                    out.append(
                        DeadTask(
                            item_id,
                            (fields.get(b"group") or b"").decode(),
                            (fields.get(b"deliveries") or b"").decode(),
                            (fields.get(b"reason") or b"").decode(),
                        )
                    )
