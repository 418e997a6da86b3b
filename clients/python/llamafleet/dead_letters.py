"""Dead letters of the work queues, read and replayed from the client side.

``llamafleet status`` lists them (:func:`dead_letters`, newest first) and ``llamafleet requeue``
replays them (:func:`requeue`): each selected entry goes back, once, to the stream it came from,
atomically (a Lua script), and a requeued item the group had already committed is acked as a
duplicate by the workers, never run twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

STREAM_PREFIX = "llamafleet:"
DEADLETTER_STREAM = "llamafleet:deadletter"


class RequeueError(ValueError):
    """A requeue that cannot be done as asked (nothing named, or a dead letter with no origin)."""


# ``services.common.queues`` writes one entry per dead-lettered item to ``llamafleet:deadletter``
# with the fields ``id`` (the item id), ``payload`` (the item's payload exactly as it was read),
# ``stream`` and ``entry`` (where it came from), ``group``, ``deliveries`` and ``reason``. This
# client reads those fields; it cannot import the services (import-linter), so the field names
# are repeated here and a test dead-letters through the real queue and reads it back with these.


@dataclass
class DeadLetter:
    entry_id: str  # the entry in llamafleet:deadletter
    stream: str  # the stream the item was read from
    group: str  # the consumer group that gave up on it
    item_id: str
    deliveries: int | None
    reason: str
    source_entry: str  # its entry id in ``stream``
    payload_bytes: int


def _text(fields: dict, name: str) -> str:
    value = fields.get(name.encode(), fields.get(name, b""))
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _dead_letter(entry_id: bytes | str, fields: dict) -> DeadLetter:
    deliveries = _text(fields, "deliveries")
    payload = fields.get(b"payload", fields.get("payload"))
    return DeadLetter(
        entry_id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        stream=_text(fields, "stream"),
        group=_text(fields, "group"),
        item_id=_text(fields, "id"),
        deliveries=int(deliveries) if deliveries.isdigit() else None,
        reason=_text(fields, "reason"),
        source_entry=_text(fields, "entry"),
        payload_bytes=len(payload) if payload is not None else 0,
    )


def dead_letters(r: redis.Redis, limit: int = 10) -> list[DeadLetter]:
    """The latest ``limit`` dead letters, newest first."""
    if limit <= 0:
        return []
    return [_dead_letter(eid, f) for eid, f in r.xrevrange(DEADLETTER_STREAM, count=limit)]


# One item: re-add the newest of its dead-letter entries to the stream it came from and delete
# all of them, atomically. A second run (or a retried call whose reply was lost) finds no entry
# left and adds nothing: requeueing is idempotent.
_REQUEUE = """
-- KEYS: dead-letter stream, source stream. ARGV: the item's dead-letter entry ids, oldest first
local newest, found = nil, {}
for i = 1, #ARGV do
  local e = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #e == 1 then
    found[#found + 1] = ARGV[i]
    newest = e[1][2]
  end
end
if newest == nil then return false end
local f = {}
for i = 1, #newest, 2 do f[newest[i]] = newest[i + 1] end
if f['stream'] ~= KEYS[2] or f['id'] == nil or f['payload'] == nil then
  return redis.error_reply('ERR dead letter changed while requeueing; run the command again')
end
local added = redis.call('XADD', KEYS[2], '*', 'id', f['id'], 'payload', f['payload'])
for _, e in ipairs(found) do redis.call('XDEL', KEYS[1], e) end
return added
"""


@dataclass
class Requeued:
    item_id: str
    stream: str
    new_entry: str  # "" when there was nothing left to requeue (already done)
    dead_letter_entries: list[str]


def _all_dead_letters(r: redis.Redis) -> list[DeadLetter]:
    out, start = [], "-"
    while batch := r.xrange(DEADLETTER_STREAM, min=start, count=1000):
        out.extend(_dead_letter(eid, f) for eid, f in batch)
        last = out[-1].entry_id
        start = f"({last}"
    return out


def requeue(r: redis.Redis, selectors: list[str], *, every: bool = False) -> list[Requeued]:
    """Put dead-lettered items back on the streams they came from (an operator's replay).

    ``selectors`` are dead-letter entry ids (as ``status`` shows them) or item ids; ``every``
    takes all dead letters. Each item is added once to its source stream, with its original id
    and payload, as a new entry (so it gets ``max_deliveries`` fresh attempts), and its
    dead-letter entries are deleted in the same Lua script. The consumer group's "done" mark
    decides the rest: an item the group already committed is acked as a duplicate, not redone.
    A selector that matches nothing is reported with an empty ``new_entry``: running the same
    command twice requeues each item once.
    """
    if not selectors and not every:
        raise RequeueError("name the dead letters to requeue (entry or item ids), or pass --all")
    letters = _all_dead_letters(r)
    chosen: dict[tuple[str, str], list[DeadLetter]] = {}
    missing: list[str] = []
    wanted = set(selectors)
    for sel in selectors:
        if not any(sel in (d.entry_id, d.item_id) for d in letters):
            missing.append(sel)
    for d in letters:
        if every or d.entry_id in wanted or d.item_id in wanted:
            if not d.item_id or not d.stream.startswith(STREAM_PREFIX) or not d.payload_bytes:
                raise RequeueError(
                    f"dead letter {d.entry_id} cannot be requeued: it has no item id, payload or "
                    f"llamafleet stream (stream={d.stream!r}); inspect it with "
                    f"XRANGE {DEADLETTER_STREAM} {d.entry_id} {d.entry_id}"
                )
            chosen.setdefault((d.stream, d.item_id), [])
    # All of an item's entries go together, also those the selector did not name.
    for d in letters:
        if (d.stream, d.item_id) in chosen:
            chosen[d.stream, d.item_id].append(d)
    script = r.register_script(_REQUEUE)
    done = []
    for (stream, item_id), entries in chosen.items():
        ids = [d.entry_id for d in entries]
        added = script(keys=[DEADLETTER_STREAM, stream], args=ids)
        new_entry = added.decode() if isinstance(added, bytes) else (added or "")
        done.append(Requeued(item_id, stream, new_entry, ids))
    done += [Requeued(sel, "", "", []) for sel in missing]
    return done
