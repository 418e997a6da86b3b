"""The scoring engine the RPC and the worker share: resolve, prepare, batch, normalise.

``ScoringEngine.score`` takes a scorer name, a job id, an optional reward adapter and items:
1. resolve the name in the scorer table (``scorers.build``) with the job's settings;
2. prepare the items: fill in text from ids (rule scorers) or ids from text (reward models)
   with the tokenizer, and check ids, lengths and references, with field paths;
3. submit them: batched scorers go through the cross-caller ``Batcher``, rule scorers run on a
   small thread pool (a regex match may take up to its timeout);
4. normalise with the job's running statistics (``normalize.py``).

The scorer ``functions`` (a job's weighted sum of reward functions) and a reward function named
directly as the scorer resolve through ``functions/`` (``RewardFunctions``) instead of the
scorer table; their scores carry each function's part (``Scored.components``).

It knows the domain types only; ``servicer.py`` and ``worker.py`` translate protos.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from llamafleet.common.v1 import common_pb2

from services.common.adapter_cache import AdapterCache, check_ref
from services.common.config import ConfigError
from services.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, invalid
from services.common.full_weights import is_full_weights
from services.common.weight_files import require_trained_base
from services.reward import job_settings, scorers
from services.reward.batching import Batcher
from services.reward.config import RewardConfig
from services.reward.functions import FUNCTIONS_SCORER, Component, FunctionCall, registry
from services.reward.functions.runtime import RewardFunctions
from services.reward.job_settings import JobSettings, JobSettingsTable
from services.reward.normalize import Normalizer
from services.reward.scorers import Reads, ScoreInput, Scorer, ScorerContext
from services.reward.scorers.model import AdapterKey, AdapterSource, LocalAdapterDir, RewardModels
from services.reward.scorers.rules import PatternLimits

logger = logging.getLogger(__name__)

_MAX_VIOLATIONS = 10


@dataclass(frozen=True)
class Scored:
    scorer: str
    raw: list[float]
    normalized: list[float]
    components: list[tuple[Component, ...]] = dataclasses.field(default_factory=list)


def adapter_key(adapter_id: str, version: int, field_path: str) -> AdapterKey | None:
    """An AdapterRef as a key; None for the empty ref (the configured model)."""
    check_ref(common_pb2.AdapterRef(id=adapter_id, version=version), field_path)
    return (adapter_id, int(version)) if adapter_id else None


@dataclass(frozen=True)
class CachedAdapters:
    """Reward adapters fetched from the training service through the shared adapter cache;
    one trained on another base model than ``base_model`` (by base name) is refused with
    ADAPTER_BASE_MISMATCH (``weight_files.require_trained_base``)."""

    cache: AdapterCache
    base_model: Path | None = None

    def ensure(self, ref: AdapterKey) -> Path:
        fetched = self.cache.fetch(common_pb2.AdapterRef(id=ref[0], version=ref[1]))
        path = fetched.path
        if is_full_weights(path):
            raise FailedPrecondition(
                f"adapter {ref[0]}@{ref[1]} is a full-weights GRPO policy version, not a reward "
                "model adapter; name a reward-modelling (STAGE_RM) job's adapter",
                reason="NOT_A_REWARD_ADAPTER",
            )
        require_trained_base(
            fetched.base_model, self.base_model, f"reward adapter {ref[0]}@{ref[1]}"
        )
        return path


def adapter_source(config: RewardConfig) -> AdapterSource | None:
    if config.training_address:
        cache = AdapterCache(
            config.adapter_cache_dir, config.training_address, auth_token=config.training_token
        )
        return CachedAdapters(cache, Path(config.base_model) if config.base_model else None)
    if config.adapter_dir:
        return LocalAdapterDir(Path(config.adapter_dir))
    return None


class Codec:
    """The base tokenizer: text -> ids for reward models, ids -> text for rule scorers.

    Text is tokenized literally (no special tokens added: a templated prompt carries its own
    BOS); a completion given as text gets the tokenizer's EOS appended, as a stopped rollout has.
    """

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(path)
        self.eos_id = self._tok.eos_token_id
        # A fast tokenizer may reconfigure its Rust backend per call ("Already borrowed" when
        # shared); the event loop and the worker threads share this one.
        self._lock = threading.Lock()

    def _encode(self, text: str) -> list[int]:
        with self._lock:
            return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, text: str) -> tuple[int, ...]:
        return tuple(self._encode(text))

    def encode_completion(self, text: str) -> tuple[int, ...]:
        ids = self._encode(text)
        if self.eos_id is not None and (not ids or ids[-1] != self.eos_id):
            ids.append(self.eos_id)
        return tuple(ids)

    def decode(self, ids: Sequence[int]) -> str:
        with self._lock:
            return self._tok.decode(list(ids), skip_special_tokens=True)


def _load_codec(config: RewardConfig) -> Codec | None:
    """The tokenizer named by ``tokenizer``, else the one in base_model / reward_model, if any."""
    path = config.tokenizer or config.base_model or config.reward_model
    if not path:
        return None
    try:
        if not Path(path).is_dir():
            raise OSError(f"{path} is not a folder")
        return Codec(path)
    except (OSError, ValueError) as exc:
        if config.tokenizer:
            raise FailedPrecondition(
                f"tokenizer {path!r} could not be loaded: {exc}", reason="TOKENIZER_NOT_LOADABLE"
            ) from None
        logger.warning("no tokenizer in %s (%s); set tokenizer to convert text", path, exc)
        return None


class ScoringEngine:
    """Scorer table + tokenizer + reward models + batcher + normaliser of one service."""

    def __init__(
        self,
        config: RewardConfig,
        *,
        models: RewardModels | None = None,
        codec: Codec | None = None,
        settings: JobSettingsTable | None = None,
        functions: RewardFunctions | None = None,
    ) -> None:
        self.config = config
        self.functions = functions or _load_functions(config)
        self.models = models
        self.codec = codec
        self.settings = settings or JobSettingsTable.from_config(config)
        self.normalizer = Normalizer()
        self.batcher = Batcher(config.max_batch_size, config.max_wait_ms / 1000)
        self._rules = ThreadPoolExecutor(config.rule_threads, thread_name_prefix="reward-rules")

    @classmethod
    def from_config(
        cls,
        config: RewardConfig,
        adapters: AdapterSource | None = None,
        *,
        settings: JobSettingsTable | None = None,
    ) -> ScoringEngine:
        """Load what the config names (models, tokenizer); nothing configured is fine.
        ``settings`` default to the config's own (``JobSettingsTable.from_config``)."""
        settings = settings or JobSettingsTable.from_config(config)
        if adapters is None:
            adapters = adapter_source(config)
        models = None
        if config.reward_model or config.base_model:
            models = RewardModels(
                reward_model=config.reward_model,
                base_model=config.base_model,
                adapters=adapters,
                device=config.device,
                max_resident_adapters=config.max_resident_adapters,
            )
        else:
            logger.info("no reward model configured: rule scorers only")
        return cls(config, models=models, codec=_load_codec(config), settings=settings)

    def close(self) -> None:
        self.batcher.close()
        self._rules.shutdown(wait=False, cancel_futures=True)
        self.functions.close()

    # -- the steps ------------------------------------------------------------------------------

    def job_settings(self, job_id: str, override: JobSettings | None) -> JobSettings:
        """The request's own settings when it carries them, else the service's for the job."""
        return override if override is not None else self.settings.for_job(job_id)

    def resolve(
        self,
        name: str,
        job_id: str,
        adapter: AdapterKey | None,
        field_prefix: str = "",
        override: JobSettings | None = None,
        calls: tuple[FunctionCall, ...] | None = None,
    ) -> Scorer:
        if calls is not None:
            if adapter is not None:
                raise invalid(
                    f"{field_prefix}reward_adapter",
                    "reward functions read no reward model; leave reward_adapter empty",
                    reason="ADAPTER_NOT_USED",
                )
            return self.functions.scorer(calls)
        if name not in scorers.SCORERS:
            shown = repr(name) if name else "an empty name"
            offered = sorted(self.functions.config.functions)
            raise invalid(
                f"{field_prefix}scorer",
                f"unknown scorer {shown}; valid scorers: {', '.join(scorers.valid_names())}, "
                f"{FUNCTIONS_SCORER!r} (the job's reward_settings.functions) or a reward "
                f"function: {', '.join(offered)}",
                reason="UNKNOWN_SCORER",
            )
        ctx = ScorerContext(
            settings=self.job_settings(job_id, override),
            adapter=adapter,
            models=self.models,
            max_pattern_chars=self.config.max_pattern_chars,
            regex_timeout_ms=self.config.regex_timeout_ms,
        )
        return scorers.build(name, ctx, field_prefix=field_prefix)

    def prepare(
        self, scorer: Scorer, items: Sequence[ScoreInput], field: str = "items"
    ) -> list[ScoreInput]:
        """Items in the form ``scorer`` reads; INVALID_ARGUMENT listing every bad item."""
        out, violations = [], []
        for i, item in enumerate(items):
            where = f"{field}[{i}]"
            if scorer.reads is Reads.TEXT:
                wants_prompt = getattr(scorer, "wants_prompt", False)
                if wants_prompt and not item.prompt_text and item.prompt_ids and self.codec:
                    item = dataclasses.replace(item, prompt_text=self.codec.decode(item.prompt_ids))
                if not item.completion_text and item.completion_ids:
                    item = dataclasses.replace(
                        item, completion_text=self._codec(where).decode(item.completion_ids)
                    )
                out.append(item)
                continue
            if not item.prompt_ids and item.prompt_text:
                item = dataclasses.replace(
                    item, prompt_ids=self._codec(where).encode_prompt(item.prompt_text)
                )
            if not item.completion_ids and item.completion_text:
                item = dataclasses.replace(
                    item, completion_ids=self._codec(where).encode_completion(item.completion_text)
                )
            violations += self._check_ids(item, where)
            out.append(item)
        if violations:
            raise InvalidArgument(
                f"{len(violations)} item(s) cannot be scored by {scorer.name!r}",
                reason="BAD_ITEMS",
                violations=violations[:_MAX_VIOLATIONS],
            )
        return out

    def _check_ids(self, item: ScoreInput, where: str) -> list[FieldViolation]:
        length = len(item.prompt_ids) + len(item.completion_ids)
        if length == 0:
            return [FieldViolation(f"{where}.completion_ids", "no tokens (and no text) to score")]
        if length > self.config.max_seq_len:
            return [
                FieldViolation(
                    f"{where}.completion_ids",
                    f"prompt + completion are {length} tokens, more than max_seq_len="
                    f"{self.config.max_seq_len}",
                )
            ]
        vocab = self.models.vocab_size if self.models is not None else None
        for part in ("prompt_ids", "completion_ids"):
            bad = [t for t in getattr(item, part) if t < 0 or (vocab is not None and t >= vocab)]
            if bad:
                return [
                    FieldViolation(
                        f"{where}.{part}",
                        f"token id {bad[0]} is outside the vocabulary [0, {vocab})",
                    )
                ]
        return []

    def _codec(self, where: str) -> Codec:
        if self.codec is None:
            raise FailedPrecondition(
                f"{where} needs converting between text and token ids, and the reward service "
                "has no tokenizer: set tokenizer (or base_model) in its config, or send both forms",
                reason="TOKENIZER_NOT_CONFIGURED",
            )
        return self.codec

    def submit(self, scorer: Scorer, items: Sequence[ScoreInput]) -> Future:
        """A future of the raw scores."""
        if scorer.batched:
            return self.batcher.submit(scorer, items)
        executor = getattr(scorer, "executor", None) or self._rules
        return executor.submit(scorer.score, list(items))

    def finish(
        self,
        scorer: Scorer,
        job_id: str,
        raws: Sequence[float],
        field: str,
        override: JobSettings | None = None,
    ) -> Scored:
        components = [tuple(getattr(r, "components", ())) for r in raws]
        raws = [float(r) for r in raws]
        bad = [i for i, r in enumerate(raws) if not math.isfinite(r)]
        if bad:
            raise FailedPrecondition(
                f"scorer {scorer.name!r} produced a non-finite score for {field}[{bad[0]}]; "
                "the reward model is broken (NaN/inf weights?)",
                reason="NON_FINITE_SCORE",
            )
        settings = self.job_settings(job_id, override)
        normalized = self.normalizer.apply(job_id, settings, raws)
        return Scored(scorer.name, list(raws), normalized, components)

    # -- the two entry points -------------------------------------------------------------------

    def score(
        self,
        name: str,
        job_id: str,
        adapter: AdapterKey | None,
        items: Sequence[ScoreInput],
        *,
        field_prefix: str = "",
        items_field: str = "items",
        override: JobSettings | None = None,
        calls: tuple[FunctionCall, ...] | None = None,
    ) -> Scored:
        """Blocking: for worker threads. ``override``: the request's own job settings;
        ``calls``: the reward functions of the scorer ``functions`` (``function_calls``)."""
        scorer = self.resolve(name, job_id, adapter, field_prefix, override, calls)
        prepared = self.prepare(scorer, items, items_field)
        raws = self.submit(scorer, prepared).result()
        return self.finish(scorer, job_id, raws, items_field, override)

    async def score_async(
        self,
        name: str,
        job_id: str,
        adapter: AdapterKey | None,
        items: Sequence[ScoreInput],
        override: JobSettings | None = None,
        calls: tuple[FunctionCall, ...] | None = None,
    ) -> Scored:
        """For the event loop: resolving (which may fetch and load a reward adapter) and preparing
        (tokenizing) run in a worker thread; the batch is awaited without holding one."""

        def resolve_and_prepare() -> tuple[Scorer, list[ScoreInput]]:
            scorer = self.resolve(name, job_id, adapter, override=override, calls=calls)
            return scorer, self.prepare(scorer, items)

        scorer, prepared = await asyncio.to_thread(resolve_and_prepare)
        raws = await asyncio.wrap_future(self.submit(scorer, prepared))
        return self.finish(scorer, job_id, raws, "items", override)

    def settings_from(self, message, field: str) -> JobSettings:
        """A request's ``RewardSettings``, checked with this service's pattern limits."""
        limits = PatternLimits(self.config.max_pattern_chars, self.config.regex_timeout_ms)
        return job_settings.from_proto(message, field, limits)

    def function_calls(self, name: str, refs, field: str) -> tuple[FunctionCall, ...] | None:
        """The reward functions a request's scorer runs: its ``RewardSettings.functions`` for the
        scorer ``functions``, the one function when ``name`` is a reward function, else None (a
        scorer of the table). Functions given with another scorer are INVALID_ARGUMENT."""
        if name == FUNCTIONS_SCORER:
            return self.functions.calls_from_proto(refs, field)
        if refs:
            raise invalid(
                field,
                f"reward functions are read only with the scorer {FUNCTIONS_SCORER!r} "
                f"(this request's scorer is {name!r})",
                reason="FUNCTIONS_NEED_FUNCTIONS_SCORER",
            )
        if name not in scorers.SCORERS and name in self.functions.config.functions:
            return (FunctionCall(name, name, 1.0, {}),)
        return None

    async def test_functions(self, refs, item: ScoreInput) -> tuple[float, tuple[Component, ...]]:
        """``TestRewardFunction``: the functions on one item, without a job (no normalisation)."""
        calls = self.functions.calls_from_proto(refs, "functions")
        scorer = self.functions.scorer(calls)
        prepared = self.prepare(scorer, [item], "item")
        [result] = await asyncio.wrap_future(self.submit(scorer, prepared))
        return float(result), tuple(result.components)


def _load_functions(config: RewardConfig) -> RewardFunctions:
    """The reward functions of ``config`` (built-ins + its functions_file)."""
    try:
        loaded = registry.load(config.functions_file, config.function_workers)
    except ConfigError as exc:
        raise FailedPrecondition(str(exc), reason="BAD_FUNCTIONS_FILE") from None
    limits = PatternLimits(config.max_pattern_chars, config.regex_timeout_ms)
    return RewardFunctions(loaded, limits)
