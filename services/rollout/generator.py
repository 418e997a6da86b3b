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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llamafleet.common.v1 import common_pb2
from llamafleet.rollout.v1 import rollout_pb2

from services.common.adapter_cache import AdapterCache, check_ref
from services.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    Unimplemented,
)
from services.common.limits import check_length
from services.common.weight_files import require_safetensors_model
from services.rollout.adapters import ResidentAdapters
from services.rollout.config import RolloutConfig
from services.rollout.convert import sampling_from_proto
from services.rollout.engines import GenerationEngine, Sampling, make_engine

logger = logging.getLogger(__name__)


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
                max_full=config.max_resident_full_versions,
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
        sampling = sampling_from_proto(
            params,
            default_max_tokens=self.config.default_max_tokens,
            max_tokens_limit=self.config.max_tokens_limit,
            max_n=self.config.max_n if allow_n else 1,
        )
        engine = self.engine
        if sampling.structured and not getattr(engine, "structured_outputs", False):
            name = getattr(engine, "name", "none")
            raise Unimplemented(
                f"the {name} engine has no constrained decoding, so it cannot enforce a JSON "
                "output; serve with engine: vllm (vLLM structured outputs) for "
                "sampling.structured_output",
                reason="STRUCTURED_OUTPUT_UNSUPPORTED",
                violations=[FieldViolation("sampling.structured_output", "needs engine vllm")],
            )
        return sampling

    def prompt_of(self, prompt_ids, prompt_text: str) -> tuple[int, ...]:
        """The checked prompt ids of a request: ``prompt_text`` (at most ``max_prompt_chars``
        characters, tokenized as is) or ``prompt_ids``. CPU-bound: call it off the event loop."""
        if prompt_text:
            check_length(
                prompt_text, "prompt_text", self.config.max_prompt_chars, "max_prompt_chars"
            )
            return self.check_prompt(self.require_engine().tokenize(prompt_text), "prompt_text")
        return self.check_prompt(prompt_ids)

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
    def pinned(self, ref: common_pb2.AdapterRef, field_path: str = "adapter") -> Iterator[Pinned]:
        """Hold ``ref`` resident (fetching and loading it first when needed) for the body."""
        pinned = self.pin(ref, field_path)
        try:
            yield pinned
        finally:
            self.unpin(ref)

    def pin(self, ref: common_pb2.AdapterRef, field_path: str = "adapter") -> Pinned:
        """Make ``ref`` resident and keep it so until the matching :meth:`unpin`."""
        self.require_engine()
        check_ref(ref, field_path)
        assert self.adapters is not None
        started = time.perf_counter()
        name = self.adapters.acquire(ref)
        return Pinned(name, time.perf_counter() - started)

    def unpin(self, ref: common_pb2.AdapterRef) -> None:
        assert self.adapters is not None
        self.adapters.release(ref)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
