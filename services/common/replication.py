"""Writes that must survive a failover: ``WAIT`` for a replica where the primary has one.

Redis replicates asynchronously. A write the primary acknowledged but had not yet sent to its
replica is gone when Sentinel promotes that replica (RELIABILITY.md, Failover, measures it).
Most of the pipeline does not care: a worker's commit ("mark done + publish next + ack" in one
script) is lost whole, with its ack, so the item is delivered again and redone. What cannot be
redone is a write nobody would repeat: the PPO trainer's rollout tasks. A lost task never
produces a scored rollout, and the trainer would wait for it forever. So the trainer calls
:func:`wait_replicated` after publishing a step's tasks, and publishes again (idempotently,
``queues.publish``) until a replica has them.

A primary with no replica attached (a single Redis, durable through its AOF) has nothing to
wait for. ``WAIT`` is "best effort" under Sentinel (the Redis documentation's word): it makes an
acknowledged write survive the failover of one primary, not every combination of partitions.

Knows Redis replication only; nothing about streams or jobs.
"""

from __future__ import annotations

import redis
from redis import exceptions as rexc

DEFAULT_TIMEOUT_MS = 2000
PROBE_KEY = "llamafleet:replication:probe"  # a counter written before WAIT (see below)


class NotReplicated(rexc.TryAgainError):
    """No replica confirmed the writes in time. A transient error (``is_transient``): the
    caller repeats its idempotent writes and waits again."""


def attached_replicas(r: redis.Redis) -> int:
    """How many replicas the primary behind ``r`` has connected now."""
    return int(r.info("replication").get("connected_slaves", 0))


def wait_replicated(r: redis.Redis, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> int:
    """Block until one replica has every write this connection made, when the primary has any
    replica; returns how many confirmed (0: no replica attached, nothing to wait for).

    Raises :class:`NotReplicated` when a replica is attached but none confirmed within
    ``timeout_ms``. ``WAIT`` covers the writes of the connection it runs on, and a client's
    earlier writes may have gone over another connection of its pool; so a small write
    (``INCR`` of :data:`PROBE_KEY`) goes first on the same connection. The replication stream
    is one ordered log, so a replica that has the probe has every write before it.
    """
    if attached_replicas(r) == 0:
        return 0
    with r.pipeline(transaction=False) as pipe:
        pipe.incr(PROBE_KEY)
        pipe.execute_command("WAIT", 1, timeout_ms)
        _probe, confirmed = pipe.execute()
    if int(confirmed) < 1:
        raise NotReplicated(
            f"no replica confirmed the writes within {timeout_ms} ms (WAIT 1 {timeout_ms})"
        )
    return int(confirmed)
