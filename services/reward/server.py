"""Assembles the reward service on the shared ``ServiceHost``."""

from __future__ import annotations

from llamafleet.reward.v1 import reward_service_pb2, reward_service_pb2_grpc

from services.common.queues import require_redis
from services.common.server import Register, register_servicer
from services.reward.config import RewardConfig
from services.reward.servicer import RewardServicer

SERVICE_NAME = reward_service_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name


def make_register(config: RewardConfig) -> Register:
    if config.redis_url:
        require_redis(config.redis_url)

    return register_servicer(
        reward_service_pb2_grpc.add_RewardServiceServicer_to_server,
        RewardServicer(config),
        SERVICE_NAME,
    )
