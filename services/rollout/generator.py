"""The rollout service's core: one engine, its resident adapters, and request validation.

``Generator`` is shared by the gRPC servicer (interactive ``Generate``) and the queue worker
(``RolloutTask``s): both validate sampling parameters here (errors name the field path, e.g.
``sampling.top_p``), pin the adapter version (fetching it when missing), and run the engine.
Without a base model it still exists, and every generation fails with FAILED_PRECONDITION saying
what to configure: never a fake result.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llamafleet.common.v1 import common_pb2
from llamafleet.rollout.v1 import rollout_pb2

from services.common.adapter_cache import AdapterCache, check_ref
from services.common.errors import FailedPrecondition, FieldViolation, InvalidArgument
from services.common.weight_files import require_safetensors_model
from services.rollout.adapters import ResidentAdapters
from services.rollout.config import RolloutConfig
from services.rollout.engines import GenerationEngine, Sampling, make_engine

logger = logging.getLogger(__name__)

_MAX_STOP_STRINGS = 16


def sampling_from_proto(
    params: rollout_pb2.SamplingParams,
    *,
    default_max_tokens: int,
    max_tokens_limit: int,
    max_n: int = 1,
    field_path: str = "sampling",
) -> Sampling:
    """Fill the proto's defaults and check every value; all violations are reported at once."""
    bad: list[FieldViolation] = []

    def check(ok: bool, name: str, description: str) -> None:
        if not ok:
            bad.append(FieldViolation(f"{field_path}.{name}", description))

    p = params
    temperature = p.temperature if p.HasField("temperature") else 1.0
    top_p = p.top_p if p.HasField("top_p") else 1.0
    top_k = p.top_k if p.HasField("top_k") else 0
    max_tokens = p.max_tokens if p.HasField("max_tokens") else default_max_tokens
    n = p.n if p.HasField("n") else 1
    penalty = p.repetition_penalty if p.HasField("repetition_penalty") else 1.0
    check(math.isfinite(temperature) and temperature >= 0, "temperature", "must be >= 0")
    check(math.isfinite(top_p) and 0 < top_p <= 1, "top_p", "must be in (0, 1]")
    check(top_k >= 0, "top_k", "must be >= 0 (0 = no limit)")
    check(
        0 < max_tokens <= max_tokens_limit,
        "max_tokens",
        f"must be in 1..{max_tokens_limit} (the service's max_tokens_limit)",
    )
    check(1 <= n <= max_n, "n", f"must be in 1..{max_n}")
    check(math.isfinite(penalty) and penalty > 0, "repetition_penalty", "must be > 0")
    check(len(p.stop) <= _MAX_STOP_STRINGS, "stop", f"at most {_MAX_STOP_STRINGS} strings")
    check(all(p.stop), "stop", "stop strings must not be empty")
    check(all(t >= 0 for t in p.stop_token_ids), "stop_token_ids", "token ids are >= 0")
    if bad:
        raise InvalidArgument("invalid sampling parameters", reason="BAD_SAMPLING", violations=bad)
    return Sampling(
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=int(top_k),
        max_tokens=int(max_tokens),
        stop=tuple(p.stop),
        stop_token_ids=tuple(int(t) for t in p.stop_token_ids),
        seed=int(p.seed) if p.HasField("seed") else None,
        n=int(n),
        repetition_penalty=float(penalty),
    )


@dataclass
class Pinned:
    """An adapter version held for one generation (``name`` None = the base model)."""

    name: str | None
    load_time_s: float  # fetch + load when it was not resident, else ~0


class Generator:
    """The engine and its adapters; ``engine`` is None when no base model is configured."""

    def __init__(
        self,
        config: RolloutConfig,
        engine: GenerationEngine | None = None,
        cache: AdapterCache | None = None,
    ) -> None:
        self.config = config
        if engine is None and config.base_model:
            if not Path(config.base_model).is_dir():
                raise FailedPrecondition(
                    f"base_model {config.base_model!r} is not a folder; point it at a local "
                    "Hugging Face model folder",
                    reason="NO_BASE_MODEL",
                )
            require_safetensors_model(Path(config.base_model), "base_model")
            engine = make_engine(
                config.engine,
                config.base_model,
                device=config.device,
                dtype=config.dtype,
                max_resident_adapters=config.max_resident_adapters,
                max_lora_rank=config.max_lora_rank,
                memory_fraction=config.vllm_memory_fraction,
            )
        self.engine = engine
        self.cache = cache
        self.adapters: ResidentAdapters | None = None
        if engine is not None:  # without a model nothing is fetched, so no cache folder either
            if self.cache is None:
                self.cache = AdapterCache(
                    config.adapter_cache_dir,
                    config.training_address,
                    auth_token=config.training_token,
                )
            self.adapters = ResidentAdapters(
                engine,
                self.cache,
                config.max_resident_adapters,
                base_model=Path(config.base_model) if config.base_model else None,
            )

    def require_engine(self) -> GenerationEngine:
        if self.engine is None:
            raise FailedPrecondition(
                "the rollout service has no base model; set base_model (config file, "
                "LLAMAFLEET_ROLLOUT_BASE_MODEL or base_model=PATH) to a local Hugging Face model "
                "folder and restart it",
                reason="NO_BASE_MODEL",
            )
        return self.engine

    def sampling(self, params: rollout_pb2.SamplingParams, *, allow_n: bool) -> Sampling:
        return sampling_from_proto(
            params,
            default_max_tokens=self.config.default_max_tokens,
            max_tokens_limit=self.config.max_tokens_limit,
            max_n=self.config.max_n if allow_n else 1,
        )

    def check_prompt(self, prompt_ids, field_path: str = "prompt_ids") -> tuple[int, ...]:
        engine = self.require_engine()
        vocab = getattr(getattr(engine, "tokenizer", None), "__len__", None)
        limit = vocab() if vocab else None
        if not prompt_ids:
            raise InvalidArgument(
                f"{field_path} is empty",
                reason="EMPTY_PROMPT",
                violations=[FieldViolation(field_path, "needs at least one token")],
            )
        context = int(getattr(engine, "max_positions", 0) or 0)
        if context and len(prompt_ids) >= context:
            raise InvalidArgument(
                f"{field_path} has {len(prompt_ids)} tokens; the base model's context is "
                f"{context} tokens, and generation needs at least one position left",
                reason="PROMPT_TOO_LONG",
                violations=[FieldViolation(field_path, f"at most {context - 1} tokens")],
            )
        for i, t in enumerate(prompt_ids):
            if t < 0 or (limit is not None and t >= limit):
                raise InvalidArgument(
                    f"{field_path}[{i}] = {t} is not a token id of the base model",
                    reason="BAD_TOKEN_ID",
                    violations=[FieldViolation(f"{field_path}[{i}]", f"must be in 0..{limit})")],
                )
        return tuple(int(t) for t in prompt_ids)

    @contextlib.contextmanager
    def pinned(
        self, ref: common_pb2.AdapterRef, source_address: str = "", field_path: str = "adapter"
    ) -> Iterator[Pinned]:
        """Hold ``ref`` resident (fetching and loading it first when needed) for the body."""
        self.require_engine()
        check_ref(ref, field_path)
        assert self.adapters is not None
        started = time.perf_counter()
        name = self.adapters.acquire(ref, source_address)
        try:
            yield Pinned(name, time.perf_counter() - started)
        finally:
            self.adapters.release(ref)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
