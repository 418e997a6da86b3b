"""One stage worker in its own process, for the fault tests (kill, stop, cut, crash Redis).

    python worker_proc.py --url URL --in STREAM --group GROUP --out STREAM --log FILE [options]

Every item becomes one output with the same item id on ``--out``. The handler is synthetic:
it sleeps ``--work-ms`` (the "generation"), records which item it holds in the hash
``rel:inhand`` (field = consumer name) and counts its attempts in ``rel:attempts:<group>``
(and per item in the hash ``rel:attempts:<group>:by-item``).
Payloads steer it: ``poison:raise`` raises, ``poison:crash`` SIGKILLs this process (a worker
that segfaults on the item), ``hold`` blocks until the key ``rel:release`` exists.

``--mode`` picks the commit protocol:
- ``correct``: the real ``WorkQueue.run`` loop and its atomic Lua commit (the code under test);
- ``ack-first``: XACK on receipt, then work, then publish (broken: a crash mid-item loses it);
- ``no-dedupe``: publish with a plain XADD (no done mark, no ownership check), then finish up
  for ``--post-ms``, then XACK (broken: a crash in between or a lost lease doubles the item).

Each commit outcome is appended to ``--log`` as ``<outcome> <item id>`` (flushed per line), so
a test knows which commits Redis acknowledged before a fault. SIGTERM stops the loop cleanly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from services.common.queues import (  # noqa: E402
    Delivery,
    Outcome,
    Output,
    WorkQueue,
    connect,
)

RELEASE_KEY = "rel:release"
INHAND_KEY = "rel:inhand"


def attempts_key(group: str) -> str:
    return f"rel:attempts:{group}"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--in", dest="in_stream", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--consumer", default="")
    p.add_argument("--mode", choices=["correct", "ack-first", "no-dedupe"], default="correct")
    p.add_argument("--lease-ms", type=int, default=1500)
    p.add_argument("--max-deliveries", type=int, default=50)
    p.add_argument("--work-ms", type=float, default=10.0)
    p.add_argument("--post-ms", type=float, default=0.0)
    p.add_argument("--socket-timeout", type=float, default=2.0)
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    consumer = args.consumer or f"{args.group}-{os.getpid()}"
    r = connect(args.url, socket_timeout=args.socket_timeout, socket_connect_timeout=1.0)
    queue = WorkQueue(
        r,
        args.in_stream,
        args.group,
        consumer=consumer,
        lease_ms=args.lease_ms,
        max_deliveries=args.max_deliveries,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log = open(args.log, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def record(outcome: str, item_id: str) -> None:
        log.write(f"{outcome} {item_id}\n")

    def handler(delivery: Delivery) -> list[Output]:
        r.hset(INHAND_KEY, consumer, delivery.item_id)
        r.incr(attempts_key(args.group))
        r.hincrby(attempts_key(args.group) + ":by-item", delivery.item_id)
        if delivery.payload == b"poison:raise":
            raise ValueError(f"cannot handle {delivery.item_id}")
        if delivery.payload == b"poison:crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if delivery.payload == b"hold":
            deadline = time.monotonic() + 120
            while not r.exists(RELEASE_KEY) and time.monotonic() < deadline:
                time.sleep(0.02)
        time.sleep(args.work_ms / 1000)
        return [(args.out, delivery.item_id, b"by " + consumer.encode())]

    if args.mode == "correct":
        commit = queue.commit

        def logged_commit(delivery: Delivery, outputs: list[Output]) -> Outcome:
            outcome = commit(delivery, outputs)
            record(outcome.value, delivery.item_id)
            return outcome

        queue.commit = logged_commit  # the real run loop calls it; only the log is added
        queue.run(handler, stop=stop, block_ms=200)
        return 0

    queue.ensure_group()
    while not stop.is_set():
        for delivery in queue.fetch(1, block_ms=200):
            if args.mode == "ack-first":
                r.xack(args.in_stream, args.group, delivery.entry_id)
                [(out, out_id, payload)] = handler(delivery)
                r.xadd(out, {"id": out_id, "payload": payload})
                record("committed", delivery.item_id)
            else:  # no-dedupe
                [(out, out_id, payload)] = handler(delivery)
                r.xadd(out, {"id": out_id, "payload": payload})
                time.sleep(args.post_ms / 1000)  # "finishing up" before the ack
                r.xack(args.in_stream, args.group, delivery.entry_id)
                record("committed", delivery.item_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
