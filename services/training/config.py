"""Settings of the training service: env prefix ``LLAMAFLEET_TRAINING_``."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ConfigError, ServerConfig


@dataclass(frozen=True)
class TrainingConfig(ServerConfig):
    """The training service's configuration (shared server fields in ``ServerConfig``)."""

    redis_url: str = ""  # the work-queue Redis; checked at start-up when set
    data_address: str = ""  # host:port of the data service, where jobs read their batches
    jobs_dir: str = ".llamafleet/jobs"  # one folder per job: <jobs_dir>/<job_id>/
    cancel_grace_s: float = 60.0  # after SIGTERM, a runner gets this long before SIGKILL
    poll_interval_s: float = 0.2  # how often runners are checked and event logs tailed

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.jobs_dir:
            raise ConfigError("jobs_dir: must not be empty")
        if self.cancel_grace_s < 0:
            raise ConfigError("cancel_grace_s: must be >= 0")
        if self.poll_interval_s <= 0:
            raise ConfigError("poll_interval_s: must be > 0")
