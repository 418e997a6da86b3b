"""Assembles the reward service on the shared ``ServiceHost``: engine, RPC servicer, worker.

With ``redis_url`` set and ``worker_threads`` > 0 the service also runs the worker
(``worker.py``) in the same process, sharing the engine, so rollouts from the queue and
``ScoreRollouts`` callers are batched together on one copy of the models.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from llamafleet.reward.v1 import reward_service_pb2, reward_service_pb2_grpc

from services.common import queues
from services.common.server import Register, on_drain, stop_process
from services.reward.config import RewardConfig
from services.reward.job_settings import JobSettingsTable
from services.reward.scorers.model import AdapterSource
from services.reward.scoring import ScoringEngine
from services.reward.servicer import RewardServicer
from services.reward.worker import RewardWorker

logger = logging.getLogger(__name__)

SERVICE_NAME = reward_service_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name


@dataclass
class RewardApp:
    config: RewardConfig
    engine: ScoringEngine
    servicer: RewardServicer
    worker: RewardWorker | None = None

    def register(self, server: grpc.aio.Server) -> list[str]:
        """The ``Register`` of ``ServiceHost``: adds the servicer and starts the worker."""
        reward_service_pb2_grpc.add_RewardServiceServicer_to_server(self.servicer, server)
        if self.worker is not None:
            self.worker.start()
        return [SERVICE_NAME]

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.engine.close()


def build_app(config: RewardConfig, adapters: AdapterSource | None = None) -> RewardApp:
    """Load models (if configured), check Redis (if configured) and wire the parts."""
    settings = JobSettingsTable.from_config(config)  # a bad file or pattern fails start-up
    if config.redis_url:
        queues.require_redis(config.redis_url)
    engine = ScoringEngine.from_config(config, adapters, settings=settings)
    engine.functions.start()  # the owner's functions are imported now: a bad one stops start-up
    worker = None
    if config.redis_url and config.worker_threads > 0:
        worker = RewardWorker(
            engine,
            queues.connect(config.redis_url, client_name="reward-worker"),
            threads=config.worker_threads,
            lease_ms=config.lease_ms,
            max_deliveries=config.max_deliveries,
            on_fatal=stop_process,  # a dead worker ends the process (exit 1), never a silent one
            stream=config.results_stream(),  # the rollouts of this service's base only
        )
    elif config.worker_threads > 0:
        logger.info("no redis_url: the reward worker is off (ScoreRollouts only)")
    return RewardApp(config, engine, RewardServicer(engine), worker)


def make_register(config: RewardConfig) -> Register:
    app = build_app(config)
    if app.worker is not None:
        on_drain(app.worker.stop)  # on SIGTERM: no new items; those in hand finish and commit
    return app.register
