"""A reward worker in its own process, for the kill test: the service's engine and worker.

    python reward_worker_proc.py REDIS_URL FUNCTIONS_FILE CONSUMER

Runs until SIGTERM (or SIGKILL, which is the point).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.common import queues  # noqa: E402
from services.reward.config import RewardConfig  # noqa: E402
from services.reward.scoring import ScoringEngine  # noqa: E402
from services.reward.worker import RewardWorker  # noqa: E402


def main(url: str, functions_file: str, consumer: str) -> int:
    engine = ScoringEngine.from_config(RewardConfig(functions_file=functions_file))
    r = queues.connect(url, socket_timeout=3.0)
    worker = RewardWorker(engine, r, threads=2, lease_ms=1500, max_deliveries=5, block_ms=100,
                          consumer_prefix=consumer)  # fmt: skip
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker.start()
    stop.wait()
    worker.stop()
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
