"""Assembles the training service on the shared ``ServiceHost``."""

from __future__ import annotations

from llamafleet.training.v1 import training_service_pb2, training_service_pb2_grpc

from services.common.queues import require_redis
from services.common.server import Register, register_servicer
from services.training.config import TrainingConfig
from services.training.jobs.manager import JobManager
from services.training.servicer import TrainingServicer

SERVICE_NAME = training_service_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name


def make_register(config: TrainingConfig, manager: JobManager | None = None) -> Register:
    """The service's RPCs; ``manager`` lets tests inject one with a fake runner."""
    if config.redis_url:
        require_redis(config.redis_url)
    if manager is None:
        manager = JobManager(config).start()  # re-reads every job folder under jobs_dir
    return register_servicer(
        training_service_pb2_grpc.add_TrainingServiceServicer_to_server,
        TrainingServicer(config, manager),
        SERVICE_NAME,
    )
