"""Settings of the reward service: env prefix ``LLAMAFLEET_REWARD_``."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ServerConfig


@dataclass(frozen=True)
class RewardConfig(ServerConfig):
    """The reward service's configuration (shared server fields in ``ServerConfig``)."""

    redis_url: str = ""  # the work-queue Redis; checked at start-up when set
