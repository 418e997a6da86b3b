"""Assembles the rollout service on the shared ``ServiceHost``."""

from __future__ import annotations

from llamafleet.rollout.v1 import rollout_service_pb2, rollout_service_pb2_grpc

from services.common.queues import require_redis
from services.common.server import Register, register_servicer
from services.rollout.config import RolloutConfig
from services.rollout.servicer import RolloutServicer

SERVICE_NAME = rollout_service_pb2.DESCRIPTOR.services_by_name["RolloutService"].full_name


def make_register(config: RolloutConfig) -> Register:
    if config.redis_url:
        require_redis(config.redis_url)

    return register_servicer(
        rollout_service_pb2_grpc.add_RolloutServiceServicer_to_server,
        RolloutServicer(config),
        SERVICE_NAME,
    )
