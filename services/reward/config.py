"""Settings of the reward service: env prefix ``LLAMAFLEET_REWARD_``.

Reward models (see ``scorers/model.py`` for the two folder formats):
- ``reward_model``: the model used when a request names no ``reward_adapter``; a full
  sequence-classification folder, or a PEFT reward adapter folder (then ``base_model`` is needed).
- ``base_model``: the shared base that reward adapters are applied over.
- ``training_address``: where adapters named in requests are fetched from (the training
  service's ``FetchAdapter``, through ``services.common.adapter_cache`` into
  ``adapter_cache_dir``, sha256-verified);
- ``adapter_dir``: instead of fetching, a local adapter store laid out as
  ``<adapter_dir>/<adapter id>/<version>/`` (a PEFT folder each).

With none of them set the service still starts; rule scorers work and ``reward_model`` answers
FAILED_PRECONDITION naming these keys. Normalisation and rule options set here are the defaults
of every job; ``job_settings_file`` overrides them per job (``job_settings.py``: read and checked
when the service starts, in ``server.build_app``; a bad file or pattern fails start-up).

Several base models in one cluster: the worker scores the rollouts of its own base
(``base_model``'s name, ``llamafleet.bases.base_name``), read from that base's results stream
(``queues.rollout_results_stream``; the single-base name for the cluster's ``default_base``, and
for a service without ``base_model``).
"""

from __future__ import annotations

from dataclasses import dataclass

from llamafleet.bases import base_name, check_base_name

from services.common import queues
from services.common.config import ConfigError, ServerConfig
from services.reward.scorers.rules import PatternLimits, check_pattern


@dataclass(frozen=True)
class RewardConfig(ServerConfig):
    """The reward service's configuration (shared server fields in ``ServerConfig``)."""

    redis_url: str = ""  # the work-queue Redis; checked at start-up when set
    # -- reward models
    reward_model: str = ""  # full RM folder or PEFT RM adapter folder (default model)
    base_model: str = ""  # shared base for RM adapters; also the tokenizer when set
    default_base: str = ""  # several bases: the base name whose queues keep single-base names
    training_address: str = ""  # host:port of the training service (FetchAdapter)
    training_token: str = ""  # bearer token for the training service, if it wants one
    adapter_cache_dir: str = ".llamafleet/reward-adapters"  # fetched adapters, by sha256
    adapter_dir: str = ""  # or local <adapter_dir>/<id>/<version>/ PEFT folders
    tokenizer: str = ""  # tokenizer folder; default: base_model, else reward_model
    max_resident_adapters: int = 4  # RM adapters kept loaded over the base (LRU)
    max_seq_len: int = 4096  # prompt + completion tokens; longer items are INVALID_ARGUMENT
    max_item_chars: int = 262_144  # each text of an item; longer is INVALID_ARGUMENT, untokenized
    device: str = "cpu"  # "cpu", "cuda", "cuda:1"
    # -- batching of model forwards across callers
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    rule_threads: int = 2  # threads running rule scorers
    # -- worker: llamafleet:rollout:results -> llamafleet:reward:results:{job}
    worker_threads: int = 4  # consumers (their model items batch together); 0 = RPC only
    lease_ms: int = 30_000
    max_deliveries: int = 3
    # -- defaults of per-job settings (job_settings.py)
    whiten: bool = False  # subtract the job's running mean and divide by its running std
    scale: float = 1.0
    clip: float = 0.0  # clip normalized scores to [-clip, clip]; 0 = no clipping
    regex_pattern: str = ""  # pattern of the "regex" scorer
    ignore_case: bool = False  # exact_match / contains_answer compare case-insensitively
    job_settings_file: str = ""  # YAML: per-job overrides of the keys above
    regex_timeout_ms: float = 100.0  # per item; a slower match is INVALID_ARGUMENT
    max_pattern_chars: int = 512
    # -- reward functions (functions/registry.py): the owner's functions, pool, sandbox, remotes
    functions_file: str = ""  # YAML; "" = the built-in functions only
    function_workers: int = 2  # processes of the reward-function pool (started on first use)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            if self.default_base:
                check_base_name(self.default_base, "default_base")
            self.base()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        positive = {
            "max_resident_adapters": self.max_resident_adapters,
            "max_seq_len": self.max_seq_len,
            "max_item_chars": self.max_item_chars,
            "max_batch_size": self.max_batch_size,
            "rule_threads": self.rule_threads,
            "lease_ms": self.lease_ms,
            "max_deliveries": self.max_deliveries,
            "regex_timeout_ms": self.regex_timeout_ms,
            "max_pattern_chars": self.max_pattern_chars,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key}: must be > 0, got {value}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms: must be >= 0, got {self.max_wait_ms}")
        if self.worker_threads < 0:
            raise ConfigError(f"worker_threads: must be >= 0, got {self.worker_threads}")
        if self.training_address and self.adapter_dir:
            raise ConfigError(
                "adapter_dir and training_address: set one (local adapter folders, or fetching "
                "from the training service)"
            )
        if self.clip < 0:
            raise ConfigError(f"clip: must be >= 0 (0 = no clipping), got {self.clip}")
        limits = PatternLimits(self.max_pattern_chars, self.regex_timeout_ms)
        check_pattern(self.regex_pattern, "regex_pattern", limits)  # the service's own pattern

    def base(self) -> str:
        """The name of the base whose rollouts this service scores ("" without a base model)."""
        return base_name(self.base_model) if self.base_model else ""

    def results_stream(self) -> str:
        """The rollouts stream the worker consumes."""
        return queues.rollout_results_stream(self.base(), self.default_base)
