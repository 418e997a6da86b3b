"""Settings of the data service: env prefix ``LLAMAFLEET_DATA_``."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ServerConfig


@dataclass(frozen=True)
class DataConfig(ServerConfig):
    """The data service's configuration (shared server fields in ``ServerConfig``)."""
