"""Settings of the training service: env prefix ``LLAMAFLEET_TRAINING_``."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ServerConfig


@dataclass(frozen=True)
class TrainingConfig(ServerConfig):
    """The training service's configuration (shared server fields in ``ServerConfig``)."""

    redis_url: str = ""  # the work-queue Redis; checked at start-up when set
    data_address: str = ""  # host:port of the data service, where jobs read their batches
