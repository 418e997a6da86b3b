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
    # -- what requests may touch (services/common/roots.py); os.pathsep-separated folders
    model_roots: str = ""  # spec.base_model is read only under these; empty = none
    export_roots: str = ""  # spec.output_dir and ExportModel write here (and in jobs_dir)
    denied_paths: str = ""  # never read or written, even under a root
    allow_remote_code: bool = False  # whether spec.trust_remote_code may be set
    # -- request bounds (services/common/limits.py)
    max_world_size: int = 8  # larger spec.distributed.world_size is INVALID_ARGUMENT
    max_spec_kb: int = 64  # a larger serialized spec is INVALID_ARGUMENT (listing stays small)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.jobs_dir:
            raise ConfigError("jobs_dir: must not be empty")
        if self.cancel_grace_s < 0:
            raise ConfigError("cancel_grace_s: must be >= 0")
        if self.poll_interval_s <= 0:
            raise ConfigError("poll_interval_s: must be > 0")
        if self.max_world_size < 1 or self.max_spec_kb < 1:
            raise ConfigError("max_world_size and max_spec_kb: must be at least 1")
