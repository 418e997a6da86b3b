"""Settings of the rollout service: env prefix ``LLAMAFLEET_ROLLOUT_``.

The service serves one base model (``base_model``, a local Hugging Face folder) and many LoRA
adapter versions over it. Without ``base_model`` it still starts (the local cluster starts it that
way) and answers Generate with FAILED_PRECONDITION naming the field to set.

Several base models in one cluster: each rollout service serves one, named by its folder
(``llamafleet.bases.base_name``); ``default_base`` names the cluster's default base. The worker
consumes the tasks of its own base only (``queues.rollout_tasks_stream``): the single-base
stream for the default base (or when ``default_base`` is empty: a one-base cluster),
``llamafleet:rollout:tasks:<name>`` otherwise, and publishes to the matching results stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from llamafleet.bases import base_name, check_base_name

from services.common import queues
from services.common.config import ConfigError, ServerConfig
from services.rollout.engines import ENGINES

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class RolloutConfig(ServerConfig):
    """The rollout service's configuration (shared server fields in ``ServerConfig``)."""

    redis_url: str = ""  # the work-queue Redis; checked at start-up when set
    base_model: str = ""  # local HF model folder; empty = Generate answers FAILED_PRECONDITION
    default_base: str = ""  # several bases: the base name whose queues keep single-base names
    engine: str = "hf"  # hf | vllm
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    training_address: str = ""  # host:port of the training service: the only adapter source
    training_token: str = ""  # bearer token for the training service, if it wants one
    adapter_cache_dir: str = ".llamafleet/adapters"  # fetched adapters, by sha256
    max_resident_adapters: int = 4  # adapter versions loaded at once (LRU beyond)
    # full-weights policy versions (GRPO FULL/FREEZE) loaded at once, a model each (LRU beyond);
    # a job with ppo.max_staleness k has tasks on at most k + 1 versions
    max_resident_full_versions: int = 2
    max_lora_rank: int = 64  # vllm: the largest LoRA rank an adapter may have
    vllm_memory_fraction: float = 0.9  # vllm: share of GPU (on CPU: host) memory it reserves
    default_max_tokens: int = 256  # when a request leaves sampling.max_tokens unset
    max_tokens_limit: int = 4096  # larger sampling.max_tokens is INVALID_ARGUMENT
    max_n: int = 16  # larger sampling.n is INVALID_ARGUMENT
    max_prompt_chars: int = 262_144  # longer prompt_text is INVALID_ARGUMENT, never tokenized
    worker: bool = True  # run the queue worker thread when redis_url is set
    worker_lease_ms: int = 30_000  # renewed every third of it while a task generates
    worker_max_deliveries: int = 3  # then the task goes to the dead-letter stream
    worker_max_inflight: int = 16  # tasks in the engine at once (one fetch, one batch)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            if self.default_base:
                check_base_name(self.default_base, "default_base")
            self.base()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.engine not in ENGINES:
            raise ConfigError(
                f"engine: unknown engine {self.engine!r}; choose one of: {', '.join(ENGINES)}"
            )
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"dtype: unknown dtype {self.dtype!r}; choose one of: {', '.join(DTYPES)}"
            )
        if self.max_resident_adapters < 1:
            raise ConfigError("max_resident_adapters: must be at least 1")
        if self.max_resident_full_versions < 1:
            raise ConfigError("max_resident_full_versions: must be at least 1")
        if not 1 <= self.default_max_tokens <= self.max_tokens_limit:
            raise ConfigError("default_max_tokens: must be between 1 and max_tokens_limit")
        if self.max_n < 1:
            raise ConfigError("max_n: must be at least 1")
        if self.max_prompt_chars < 1:
            raise ConfigError("max_prompt_chars: must be at least 1")
        if self.worker_max_inflight < 1:
            raise ConfigError("worker_max_inflight: must be at least 1")
        if self.worker_lease_ms < 100 or self.worker_max_deliveries < 1:
            raise ConfigError("worker_lease_ms must be >= 100 and worker_max_deliveries >= 1")

    def base(self) -> str:
        """The name of the base this service serves ("" without a base model)."""
        return base_name(self.base_model) if self.base_model else ""

    def tasks_stream(self) -> str:
        return queues.rollout_tasks_stream(self.base(), self.default_base)

    def results_stream(self) -> str:
        return queues.rollout_results_stream(self.base(), self.default_base)
