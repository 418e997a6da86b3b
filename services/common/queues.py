"""The work queue between stages: Redis Streams with consumer groups, at-least-once.

Redis delivers each stream entry to a consumer group at least once and nothing more: a worker
that dies or stalls past its lease has its entries re-claimed (``XAUTOCLAIM``) by another worker.
Each item still takes effect once because of three things:

- **Deterministic ids.** Whoever creates an item names it (``job:policy_version:step:shard:sample``)
  and every entry carries that ``id`` next to its ``payload``. Stream entry ids (``ms-seq``) are not
  idempotency keys: a retried ``XADD`` gets a new one.
- **Idempotent publish.** :func:`publish` sets ``llamafleet:published:<stream>:<id>`` with ``NX``
  and adds the entry only if that key was new, in one Lua script, so a repeated publish (by the
  caller after a timeout whose outcome is unknown) adds one entry.
- **Atomic commit.** :meth:`WorkQueue.commit` runs one Lua script: check the entry is still
  pending *and owned by this consumer* (a worker that lost its lease writes nothing), mark the
  item done (``llamafleet:done:<group>:<id>``, ``NX``), publish the outputs only if it was newly
  done, and ``XACK``. Redis runs the script as a unit, so "done + publish next + ack" cannot be
  half applied by a crash.

A poison item is attempted ``max_deliveries`` times and then moved, with the reason, to the
dead-letter stream. Long work keeps its lease with :meth:`WorkQueue.lease_keeper`. Trimming is
:func:`trim`: ``XTRIM MINID`` below the oldest entry any group still needs; never trim by entry
count, which deletes pending work on Redis 7.0. redis-py's silent command retry is off (see
:func:`connect`): a retried ``XADD`` duplicated an entry, so retries here are explicit.

What this module does not know: the payload types. Payloads are opaque bytes (serialized
protobuf messages chosen by the services); the queue never parses them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import redis
from redis import exceptions as rexc

# Re-exported: callers reach the connection helpers as ``queues.connect`` and so on.
from services.common.redis_conn import (  # noqa: F401
    RedisUnusable,
    connect,
    describe_client,
    is_transient,
    require_redis,
    server_reply,
    unusable_message,
)

logger = logging.getLogger(__name__)

ROLLOUT_TASKS = "llamafleet:rollout:tasks"
ROLLOUT_RESULTS = "llamafleet:rollout:results"
DEADLETTER = "llamafleet:deadletter"

DEFAULT_DEDUPE_TTL_S = 3 * 24 * 3600  # how long a published/done mark outlives its item
DEFAULT_LEASE_MS = 30_000
DEFAULT_MAX_DELIVERIES = 3
_BACKOFF_MIN_S = 0.2
_BACKOFF_MAX_S = 5.0
_MAX_REASON_CHARS = 2000

# (output stream, output item id, payload)
Output = tuple[str, str, bytes]


def rollout_tasks_stream(base: str = "", default_base: str = "") -> str:
    """The rollout tasks stream of base model ``base`` (a ``llamafleet.bases`` name) in a cluster
    whose default base is ``default_base``: ``llamafleet:rollout:tasks:<base>``, except for the
    default base (and for any base when there is no default: a one-base cluster), whose stream
    keeps the single-base name ``llamafleet:rollout:tasks``."""
    return _per_base(ROLLOUT_TASKS, base, default_base)


def rollout_results_stream(base: str = "", default_base: str = "") -> str:
    """The rollouts of base ``base``, for the reward workers of that base (as above)."""
    return _per_base(ROLLOUT_RESULTS, base, default_base)


def _per_base(stream: str, base: str, default_base: str) -> str:
    if not base or not default_base or base == default_base:
        return stream
    return f"{stream}:{base}"


def reward_results_stream(job_id: str) -> str:
    """The stream of scored rollouts that one training job consumes."""
    return f"llamafleet:reward:results:{job_id}"


def published_key(stream: str, item_id: str) -> str:
    """The mark that ``item_id`` was already added to ``stream``."""
    return f"llamafleet:published:{stream}:{item_id}"


def done_key(group: str, item_id: str) -> str:
    """The mark that consumer group ``group`` has committed ``item_id``."""
    return f"llamafleet:done:{group}:{item_id}"


@dataclass(frozen=True)
class _Lua:
    src: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.src.encode()).hexdigest())

    def __call__(self, r: redis.Redis, keys: Sequence[str], args: Sequence[object]) -> object:
        try:
            return r.evalsha(self.sha, len(keys), *keys, *args)
        except rexc.NoScriptError:  # not cached on this server (yet): EVAL runs and caches it
            return r.eval(self.src, len(keys), *keys, *args)


_PUBLISH = _Lua("""
-- KEYS: stream, published key. ARGV: item id, payload, ttl seconds
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then
  redis.call('XADD', KEYS[1], '*', 'id', ARGV[1], 'payload', ARGV[2])
  return 1
end
return 0
""")

PUBLISH_CHUNK = 256  # items per publish_many script
_PUBLISH_MANY = _Lua("""
-- KEYS: stream, then each item's published key. ARGV: ttl seconds, then pairs (item id, payload)
local added = 0
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('XADD', KEYS[1], '*', 'id', ARGV[2 * i - 2], 'payload', ARGV[2 * i - 1])
    added = added + 1
  end
end
return added
""")

_OWNED = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return %s end
"""

_COMMIT = _Lua(
    """
-- KEYS: input stream, done key, then pairs (output stream, its published key)
-- ARGV: group, consumer, entry id, done ttl, published ttl, then pairs (output id, payload)
"""
    + _OWNED % "'lost'"
    + """
local result = 'duplicate'
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[4]) then
  result = 'committed'
  for i = 3, #KEYS, 2 do
    local a = i + 3
    if redis.call('SET', KEYS[i + 1], '1', 'NX', 'EX', ARGV[5]) then
      redis.call('XADD', KEYS[i], '*', 'id', ARGV[a], 'payload', ARGV[a + 1])
    end
  end
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return result
"""
)

_DEADLETTER = _Lua(
    """
-- KEYS: input stream, dead-letter stream
-- ARGV: group, consumer, entry id, item id, payload, reason
"""
    + _OWNED % "'lost'"
    + """
redis.call('XADD', KEYS[2], '*', 'id', ARGV[4], 'payload', ARGV[5], 'stream', KEYS[1],
  'group', ARGV[1], 'entry', ARGV[3], 'reason', ARGV[6], 'deliveries', tostring(p[1][4]))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return 'deadlettered'
"""
)

_RELEASE = _Lua(
    """
-- KEYS: stream. ARGV: group, consumer, entry id, idle ms, retry count
"""
    + _OWNED % "0"
    + """
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4],
  'RETRYCOUNT', ARGV[5], 'JUSTID')
return 1
"""
)

_RENEW = _Lua(
    """
-- KEYS: stream. ARGV: group, consumer, entry id
"""
    + _OWNED % "0"
    + """
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""
)


def publish(
    r: redis.Redis,
    stream: str,
    item_id: str,
    payload: bytes,
    *,
    dedupe_ttl_s: int = DEFAULT_DEDUPE_TTL_S,
) -> bool:
    """Add ``item_id`` to ``stream`` unless it was published in the last ``dedupe_ttl_s``.

    Returns True if this call added the entry. Safe to repeat after a timeout.
    """
    added = _PUBLISH(r, [stream, published_key(stream, item_id)], [item_id, payload, dedupe_ttl_s])
    return bool(added)


def publish_many(
    r: redis.Redis,
    stream: str,
    items: Sequence[tuple[str, bytes]],
    *,
    dedupe_ttl_s: int = DEFAULT_DEDUPE_TTL_S,
) -> int:
    """``publish`` for each ``(item_id, payload)``, in one atomic script: one round trip, and a
    consumer blocked on ``stream`` wakes to all of the new entries at once (not to the first
    alone; up to ``PUBLISH_CHUNK`` items per script). Returns how many were added. Safe to repeat
    after a timeout."""
    added = 0
    for start in range(0, len(items), PUBLISH_CHUNK):  # bounded work per script
        chunk = items[start : start + PUBLISH_CHUNK]
        keys = [stream, *(published_key(stream, item_id) for item_id, _ in chunk)]
        args: list[object] = [dedupe_ttl_s]
        for item_id, payload in chunk:
            args.extend((item_id, payload))
        added += int(_PUBLISH_MANY(r, keys, args))
    return added


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _next_id(entry_id: str) -> str:
    ms, seq = _id_tuple(entry_id)
    return f"{ms + 1}-0" if seq == 2**64 - 1 else f"{ms}-{seq + 1}"


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _groups(r: redis.Redis, stream: str) -> list[dict]:
    try:
        return r.xinfo_groups(stream)
    except rexc.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return []
        raise


def trim(r: redis.Redis, stream: str, *, approximate: bool = False) -> int:
    """Delete the entries every consumer group is finished with; returns how many went.

    Per group, the oldest entry still needed is the oldest pending one, else the first one after
    its last-delivered id; ``XTRIM MINID`` keeps everything from the minimum over groups. A stream
    without groups is left alone. ``approximate`` (``~``) only ever keeps more. A group created
    or moved back (``XGROUP SETID``) while this runs may find older entries gone.
    """
    keep: list[str] = []
    for group in _groups(r, stream):
        if group["pending"]:
            keep.append(_str(r.xpending(stream, group["name"])["min"]))
        else:
            keep.append(_next_id(_str(group["last-delivered-id"])))
    if not keep:
        return 0
    keep_from = min(keep, key=_id_tuple)
    return r.xtrim(stream, minid=keep_from, approximate=approximate)


def _count_after(r: redis.Redis, stream: str, last_id: str) -> int:
    if last_id == "0-0":
        return r.xlen(stream)
    count, start = 0, f"({last_id}"
    while batch := r.xrange(stream, min=start, max="+", count=1000):
        count += len(batch)
        start = f"({_str(batch[-1][0])}"
    return count


@dataclass(frozen=True)
class GroupStats:
    name: str
    consumers: int
    pending: int  # delivered, not yet acked
    lag: int  # not yet delivered
    last_delivered_id: str


@dataclass(frozen=True)
class StreamStats:
    stream: str
    length: int
    groups: list[GroupStats]
    deadletter: int  # entries in the dead-letter stream (all stages)


def _group_stats(r: redis.Redis, stream: str, info: dict) -> GroupStats:
    last = _str(info["last-delivered-id"])
    lag = info.get("lag")
    if lag is None:  # Redis 7 cannot tell after some deletions: count what is left to deliver
        lag = _count_after(r, stream, last)
    return GroupStats(_str(info["name"]), info["consumers"], info["pending"], lag, last)


def stats(r: redis.Redis, stream: str, *, deadletter: str = DEADLETTER) -> StreamStats:
    """Length, per-group consumers/pending/lag and the dead-letter count (``llamafleet status``)."""
    groups = [_group_stats(r, stream, g) for g in _groups(r, stream)]
    return StreamStats(stream, r.xlen(stream), groups, r.xlen(deadletter))


def backlog(r: redis.Redis, stream: str, group: str) -> int:
    """Work the group has not finished: lag (undelivered) + pending (delivered, not acked)."""
    for info in _groups(r, stream):
        if _str(info["name"]) == group:
            g = _group_stats(r, stream, info)
            return g.lag + g.pending
    raise ValueError(f"stream {stream!r} has no consumer group {group!r}")


def has_capacity(r: redis.Redis, stream: str, group: str, max_backlog: int) -> bool:
    """Whether a producer may enqueue more: the group's backlog is under ``max_backlog``."""
    return backlog(r, stream, group) < max_backlog


class Outcome(StrEnum):
    COMMITTED = "committed"  # marked done, outputs published, acked
    DUPLICATE = "duplicate"  # already done by this group: acked, nothing published
    LOST = "lost"  # no longer pending or owned by another consumer: nothing written
    RETRY = "retry"  # left pending; re-claimed after the lease by any consumer
    DEADLETTERED = "deadlettered"  # moved to the dead-letter stream and acked


@dataclass(frozen=True)
class Delivery:
    entry_id: str  # the stream entry id (ms-seq)
    item_id: str  # the deterministic item id
    payload: bytes
    times_delivered: int  # from XPENDING, this delivery included


def default_consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class WorkQueue:
    """One consumer of one group on one stream, with the group's delivery policy."""

    r: redis.Redis
    stream: str
    group: str
    consumer: str = field(default_factory=default_consumer_name)
    lease_ms: int = DEFAULT_LEASE_MS
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    deadletter: str = DEADLETTER
    done_ttl_s: int = DEFAULT_DEDUPE_TTL_S
    _claim_cursor: str = field(default="0-0", init=False, repr=False)

    def __post_init__(self) -> None:
        if self.lease_ms <= 0 or self.max_deliveries < 1 or self.done_ttl_s <= 0:
            raise ValueError(
                f"WorkQueue({self.stream!r}, {self.group!r}): lease_ms and done_ttl_s must be "
                f"positive and max_deliveries at least 1, got lease_ms={self.lease_ms}, "
                f"max_deliveries={self.max_deliveries}, done_ttl_s={self.done_ttl_s}"
            )

    def ensure_group(self, start_id: str = "0") -> None:
        """Create the group (and the stream) if missing; from the start of the stream by default."""
        try:
            self.r.xgroup_create(self.stream, self.group, id=start_id, mkstream=True)
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def fetch(self, count: int = 1, block_ms: int | None = None) -> list[Delivery]:
        """Up to ``count`` deliveries: expired leases first, then new entries.

        Blocks up to ``block_ms`` (None or 0: not at all) for new entries, and only when nothing
        was re-claimed. Entries delivered more than ``max_deliveries`` times are dead-lettered
        here, not handed out.
        """
        timeout = self.r.get_connection_kwargs().get("socket_timeout")
        if block_ms and timeout is not None and block_ms / 1000 >= timeout:
            raise ValueError(
                f"block_ms={block_ms} must be shorter than the client's socket_timeout="
                f"{timeout}s, or every idle read fails with a timeout"
            )
        cursor, claimed, _deleted = self.r.xautoclaim(
            self.stream, self.group, self.consumer, self.lease_ms, self._claim_cursor, count=count
        )
        self._claim_cursor = _str(cursor)
        # Redis 7 drops deleted entries from the PEL and lists them apart; 6.2 returns nil ones.
        entries = [(eid, fields) for eid, fields in claimed if fields is not None]
        if len(entries) < count:
            block = None if entries else (block_ms or None)
            reply = self.r.xreadgroup(
                self.group,
                self.consumer,
                {self.stream: ">"},
                count=count - len(entries),
                block=block,
            )
            for _stream, fresh in reply or []:
                entries.extend(fresh)
        return self._deliveries(entries)

    def _deliveries(self, entries: list[tuple[bytes, dict]]) -> list[Delivery]:
        if not entries:
            return []
        pipe = self.r.pipeline(transaction=False)
        for eid, _fields in entries:
            pipe.xpending_range(self.stream, self.group, min=eid, max=eid, count=1)
        out = []
        for (eid, fields), pending in zip(entries, pipe.execute(), strict=True):
            if not pending or _str(pending[0]["consumer"]) != self.consumer:
                continue  # re-claimed by someone else in between
            times = pending[0]["times_delivered"]
            item_id, payload = fields.get(b"id"), fields.get(b"payload")
            delivery = Delivery(_str(eid), _str(item_id or b""), payload or b"", times)
            if item_id is None or payload is None:
                self._deadletter(delivery, "malformed entry: needs fields 'id' and 'payload'")
            elif times > self.max_deliveries:
                self._deadletter(
                    delivery,
                    f"delivered {times} times, more than max_deliveries={self.max_deliveries} "
                    "(its workers died or lost the lease)",
                )
            else:
                out.append(delivery)
        return out

    def commit(self, delivery: Delivery, outputs: Sequence[Output]) -> Outcome:
        """Atomically: mark done, publish ``outputs`` if newly done, ack. See the module doc."""
        keys, args = self._commit_args(delivery, outputs)
        return Outcome(_str(_COMMIT(self.r, keys, args)))

    def _commit_args(
        self, delivery: Delivery, outputs: Sequence[Output]
    ) -> tuple[list[str], list[object]]:
        keys = [self.stream, done_key(self.group, delivery.item_id)]
        args: list[object] = [
            self.group,
            self.consumer,
            delivery.entry_id,
            self.done_ttl_s,
            self.done_ttl_s,
        ]
        for out_stream, out_id, payload in outputs:
            keys += [out_stream, published_key(out_stream, out_id)]
            args += [out_id, payload]
        return keys, args

    def commit_many(self, items: Sequence[tuple[Delivery, Sequence[Output]]]) -> list[Outcome]:
        """:meth:`commit` for many deliveries in one pipelined round trip.

        Each item is still its own atomic script (done mark + publish + ack), so a crash between
        two of them leaves each one either fully committed or still pending; a pipeline cut off
        midway is repeated safely (a committed item is then no longer pending: ``LOST``, nothing
        written twice). EVAL, not EVALSHA: a Redis restarted meanwhile has no script cache.
        """
        if not items:
            return []
        pipe = self.r.pipeline(transaction=False)
        for delivery, outputs in items:
            keys, args = self._commit_args(delivery, outputs)
            pipe.eval(_COMMIT.src, len(keys), *keys, *args)
        return [Outcome(_str(result)) for result in pipe.execute()]

    def renew_many(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """:meth:`renew` for many deliveries in one pipelined round trip."""
        if not deliveries:
            return []
        pipe = self.r.pipeline(transaction=False)
        for d in deliveries:
            pipe.eval(_RENEW.src, 1, self.stream, self.group, self.consumer, d.entry_id)
        return [bool(x) for x in pipe.execute()]

    def fail(self, delivery: Delivery, reason: str) -> Outcome:
        """The handler raised: dead-letter at ``max_deliveries``, else leave it to be re-claimed."""
        if delivery.times_delivered >= self.max_deliveries:
            return self._deadletter(delivery, reason)
        return Outcome.RETRY

    def _deadletter(self, delivery: Delivery, reason: str) -> Outcome:
        keys = [self.stream, self.deadletter]
        args = [
            self.group,
            self.consumer,
            delivery.entry_id,
            delivery.item_id,
            delivery.payload,
            reason[:_MAX_REASON_CHARS],
        ]
        outcome = Outcome(_str(_DEADLETTER(self.r, keys, args)))
        if outcome is Outcome.DEADLETTERED:
            logger.warning(
                "dead-lettered %s (entry %s) from %s/%s: %s",
                delivery.item_id,
                delivery.entry_id,
                self.stream,
                self.group,
                reason,
            )
        return outcome

    def release(self, delivery: Delivery) -> bool:
        """Hand back a delivery this consumer will not start (it is stopping): the entry is marked
        idle past the lease, so the next fetch of any consumer re-claims it at once, and its
        delivery count is set back so this delivery does not count towards ``max_deliveries``.
        False if it was no longer this consumer's."""
        args = [
            self.group,
            self.consumer,
            delivery.entry_id,
            self.lease_ms,
            max(delivery.times_delivered - 1, 0),
        ]
        return bool(_RELEASE(self.r, [self.stream], args))

    def renew(self, delivery: Delivery) -> bool:
        """Reset the lease's idle time if this consumer still owns the entry; False if lost."""
        args = [self.group, self.consumer, delivery.entry_id]
        return bool(_RENEW(self.r, [self.stream], args))

    @contextlib.contextmanager
    def lease_keeper(
        self, delivery: Delivery, interval_s: float | None = None
    ) -> Iterator[threading.Event]:
        """Renew ``delivery`` every ``interval_s`` (a third of the lease) while the body runs.

        Yields an event that is set if the lease was lost (the commit will then say so).
        """
        interval = self.lease_ms / 3000 if interval_s is None else interval_s
        done, lost = threading.Event(), threading.Event()

        def keep() -> None:
            while not done.wait(interval):
                try:
                    if not self.renew(delivery):
                        logger.warning(
                            "lost the lease on %s (entry %s) in %s/%s",
                            delivery.item_id,
                            delivery.entry_id,
                            self.stream,
                            self.group,
                        )
                        lost.set()
                        return
                except rexc.RedisError as exc:  # keep trying; the commit checks ownership
                    logger.warning("could not renew the lease on %s: %s", delivery.item_id, exc)

        thread = threading.Thread(target=keep, name=f"lease:{delivery.item_id}", daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            done.set()
            thread.join()

    def run(
        self,
        handler: Callable[[Delivery], Sequence[Output]],
        *,
        stop: threading.Event,
        count: int = 1,
        block_ms: int = 1000,
    ) -> None:
        """The worker loop: fetch, handle under a kept lease, commit; until ``stop`` is set.

        A handler that raises gets :meth:`fail`. Redis being unreachable or refusing work for a
        while (:func:`is_transient`) is logged and retried with an explicit backoff; an error no
        retry can fix (wrong password, missing ACL permission, not a Redis server) ends the loop
        with :class:`RedisUnusable`. With ``count`` > 1 later deliveries of a batch wait
        unrenewed, so keep ``count`` * handler time under the lease. Once ``stop`` is set, the
        item in hand finishes and commits, and fetched items not yet started are released.
        """
        backoff = _BACKOFF_MIN_S
        need_group = True
        while not stop.is_set():
            try:
                if need_group:
                    self.ensure_group()
                    need_group = False
                for delivery in self.fetch(count, block_ms):
                    if stop.is_set():
                        self.release(delivery)  # not started: others may take it right away
                        continue
                    self._handle(handler, delivery)
                backoff = _BACKOFF_MIN_S
            except rexc.RedisError as exc:
                if isinstance(exc, rexc.ResponseError) and "NOGROUP" in str(exc):
                    logger.warning(
                        "group %s on %s is gone (%s); recreating", self.group, self.stream, exc
                    )
                    need_group = True
                    stop.wait(backoff)
                    continue
                if not is_transient(exc):
                    # Wrong credentials or a server that is not Redis do not heal: stop, and say
                    # which setting to fix. The item in hand (if any) stays pending for others.
                    raise self.unusable(exc) from exc
                # Unreachable, restarting, loading, full, read-only or busy: nothing is lost
                # (publish and commit are all-or-nothing scripts), so the item in hand stays
                # pending and is retried when the server accepts work again.
                logger.warning(
                    "redis unavailable for %s/%s (%s: %s); retrying in %.1fs",
                    self.stream,
                    self.group,
                    type(exc).__name__,
                    exc,
                    backoff,
                )
                stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def unusable(self, exc: BaseException) -> RedisUnusable:
        """The error that ends this consumer for ``exc`` (see :func:`is_transient`)."""
        return RedisUnusable(
            unusable_message(describe_client(self.r), exc), reason="REDIS_UNUSABLE"
        )

    def _handle(self, handler: Callable[[Delivery], Sequence[Output]], delivery: Delivery) -> None:
        with self.lease_keeper(delivery):
            try:
                outputs = handler(delivery)
            except Exception as exc:
                logger.warning(
                    "handler failed on %s (delivery %d of at most %d)",
                    delivery.item_id,
                    delivery.times_delivered,
                    self.max_deliveries,
                    exc_info=True,
                )
                self.fail(delivery, f"{type(exc).__name__}: {exc}")
                return
        outcome = self.commit(delivery, outputs)
        if outcome is Outcome.LOST:
            logger.warning(
                "result for %s discarded: its lease was lost to another consumer", delivery.item_id
            )
        elif outcome is Outcome.DUPLICATE:
            logger.info(
                "%s was already done by %s; acked the duplicate", delivery.item_id, self.group
            )


class LeaseKeeper:
    """One thread that renews the leases of all of a consumer's deliveries in hand.

    ``deliveries()`` returns what is in hand now (called from the keeper thread); every
    ``interval_s`` (a third of the lease by default) their leases are renewed in one pipelined
    round trip, and ``on_lost(delivery)`` is called for each that another consumer took over
    (its commit will then write nothing). Redis errors are logged and the next round tries
    again: the commit checks ownership either way. Replaces a thread per delivery
    (:meth:`WorkQueue.lease_keeper`) for workers that hold many deliveries at once.
    """

    def __init__(
        self,
        queue: WorkQueue,
        deliveries: Callable[[], Sequence[Delivery]],
        on_lost: Callable[[Delivery], object] | None = None,
        interval_s: float | None = None,
    ) -> None:
        self.queue = queue
        self._deliveries = deliveries
        self._on_lost = on_lost or self._log_lost
        self.interval_s = queue.lease_ms / 3000 if interval_s is None else interval_s
        self._done = threading.Event()
        self.rounds = 0  # renewal round trips made (for tests and figures)
        self._thread = threading.Thread(
            target=self._keep, name=f"lease-keeper:{queue.consumer}", daemon=True
        )

    def _log_lost(self, delivery: Delivery) -> None:
        logger.warning(
            "lost the lease on %s (entry %s) in %s/%s",
            delivery.item_id,
            delivery.entry_id,
            self.queue.stream,
            self.queue.group,
        )

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _keep(self) -> None:
        while not self._done.wait(self.interval_s):
            held = list(self._deliveries())
            if not held:
                continue
            try:
                kept = self.queue.renew_many(held)
            except rexc.RedisError as exc:
                logger.warning("could not renew %d leases: %s", len(held), exc)
                continue
            self.rounds += 1
            for delivery, ok in zip(held, kept, strict=True):
                if not ok:  # taken over, or committed since ``deliveries()`` was called
                    self._on_lost(delivery)
