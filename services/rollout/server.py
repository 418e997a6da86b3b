"""Assembles the rollout service on the shared ``ServiceHost``: servicer, engine, queue worker.

The engine loads the base model here, before the server answers. The queue worker runs in a
daemon thread when ``redis_url`` is set, ``worker`` is on and a base model is configured (without
one every task would fail and be dead-lettered, so it is not started, with a warning).
"""

from __future__ import annotations

import atexit
import logging

from llamafleet.rollout.v1 import rollout_service_pb2, rollout_service_pb2_grpc

from services.common.queues import require_redis
from services.common.server import Register, on_drain, register_servicer, stop_process
from services.rollout.config import RolloutConfig
from services.rollout.generator import Generator
from services.rollout.servicer import RolloutServicer
from services.rollout.worker import RolloutWorker, make_worker

logger = logging.getLogger(__name__)

SERVICE_NAME = rollout_service_pb2.DESCRIPTOR.services_by_name["RolloutService"].full_name


def start_worker(config: RolloutConfig, generator: Generator) -> RolloutWorker | None:
    if not (config.redis_url and config.worker):
        return None
    if generator.engine is None:
        logger.warning(
            "rollout worker not started: no base_model configured (tasks stay queued for "
            "workers that have one)"
        )
        return None
    worker = make_worker(
        generator,
        config.redis_url,
        lease_ms=config.worker_lease_ms,
        max_deliveries=config.worker_max_deliveries,
        max_inflight=config.worker_max_inflight,
        on_fatal=stop_process,  # a dead worker ends the process (exit 1), never a silent one
        tasks_stream=config.tasks_stream(),  # the tasks of this service's base only
        results_stream=config.results_stream(),
    )
    worker.start()
    return worker


def make_register(config: RolloutConfig) -> Register:
    if config.redis_url:
        require_redis(config.redis_url)
    generator = Generator(config)
    worker = start_worker(config, generator)
    if worker is not None:
        on_drain(worker.stop)  # on SIGTERM: no new tasks; those in hand finish and commit
        atexit.register(worker.stop)

    return register_servicer(
        rollout_service_pb2_grpc.add_RolloutServiceServicer_to_server,
        RolloutServicer(config, generator),
        SERVICE_NAME,
    )
