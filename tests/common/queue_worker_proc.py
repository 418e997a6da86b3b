"""A queue worker in its own process, for tests that SIGKILL a consumer mid-item.

Usage: ``python queue_worker_proc.py URL STREAM GROUP CONSUMER LEASE_MS OUT_STREAM MARKER_KEY``.

The handler writes ``MARKER_KEY`` = the item id (so the test knows the item is in hand), then
blocks while ``WorkQueue.run`` keeps its lease; the test kills the process during that block.
"""

from __future__ import annotations

import sys
import threading
import time

from services.common.queues import Delivery, Output, WorkQueue, connect


def main(argv: list[str]) -> None:
    url, stream, group, consumer, lease_ms, out_stream, marker = argv
    r = connect(url, socket_timeout=2.0)
    queue = WorkQueue(r, stream, group, consumer=consumer, lease_ms=int(lease_ms))

    def handler(delivery: Delivery) -> list[Output]:
        r.set(marker, delivery.item_id)
        time.sleep(60)  # the test kills us long before this ends
        return [(out_stream, f"{delivery.item_id}:out", b"from-" + consumer.encode())]

    queue.run(handler, stop=threading.Event(), block_ms=100)


if __name__ == "__main__":
    main(sys.argv[1:])
