"""Settings of the training service: env prefix ``LLAMAFLEET_TRAINING_``.

``default_base``: in a cluster serving several base models, the name (``llamafleet.bases``) of
the base whose rollout queue keeps the single-base name; a PPO/GRPO job whose base (its
``spec.base_model``'s name) is another publishes to ``llamafleet:rollout:tasks:<name>``, which
only the workers of that base consume. Empty (one base): every job uses the single-base stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from llamafleet.bases import check_base_name

from services.common.config import ConfigError, ServerConfig


@dataclass(frozen=True)
class TrainingConfig(ServerConfig):
    """The training service's configuration (shared server fields in ``ServerConfig``)."""

    redis_url: str = ""  # the work-queue Redis; checked at start-up when set
    default_base: str = ""  # several bases: see the module docstring
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
        if self.default_base:
            try:
                check_base_name(self.default_base, "default_base")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if not self.jobs_dir:
            raise ConfigError("jobs_dir: must not be empty")
        if self.cancel_grace_s < 0:
            raise ConfigError("cancel_grace_s: must be >= 0")
        if self.poll_interval_s <= 0:
            raise ConfigError("poll_interval_s: must be > 0")
        if self.max_world_size < 1 or self.max_spec_kb < 1:
            raise ConfigError("max_world_size and max_spec_kb: must be at least 1")
