"""Settings of the rollout service: env prefix ``LLAMAFLEET_ROLLOUT_``."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ServerConfig


@dataclass(frozen=True)
class RolloutConfig(ServerConfig):
    """The rollout service's configuration (shared server fields in ``ServerConfig``)."""

    redis_url: str = ""  # the work-queue Redis; checked at start-up when set
