"""Scorers: the ``Scorer`` protocol and the explicit table of named scorers.

A scorer turns a batch of (prompt, completion) items into one raw float each. Requests and
rollout tasks name a scorer by a string looked up in ``SCORERS``, a fixed table from name to
factory; nothing is ever imported or built from a name found in a request, and an unknown name
is INVALID_ARGUMENT listing the valid ones. Options (a regex pattern, case folding) come from
the job's settings, which are data (``job_settings.py``).

This package knows nothing about batching across callers, normalisation or transport: a scorer
scores the batch it is given (``scoring.py`` does the rest).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from services.common.errors import invalid

if TYPE_CHECKING:  # runtime imports stay lazy: rule scorers must not pay for torch
    from services.reward.scorers.model import RewardModels


class Reads(StrEnum):
    """What a scorer looks at; the engine fills the other form in with the tokenizer."""

    TEXT = "text"
    IDS = "ids"


@dataclass(frozen=True)
class ScoreInput:
    """One item in domain form (``reward.v1.ScoreItem`` without the transport)."""

    item_id: str = ""
    prompt_ids: tuple[int, ...] = ()
    completion_ids: tuple[int, ...] = ()
    prompt_text: str = ""
    completion_text: str = ""
    reference_answer: str = ""


class Scorer(Protocol):
    """Scores a batch of items; one raw float per item, in order.

    ``key`` identifies what the scorer computes with (name, options, model): batches of items
    submitted by different callers are merged only when their keys are equal. ``batched`` says
    whether merging is worth it (a model forward is; a string comparison is not).
    ``score`` may raise the project's errors (``services.common.errors``) for bad items, with
    the item's index in the field path (``items[3].reference_answer``).
    """

    name: str
    reads: Reads
    batched: bool

    @property
    def key(self) -> Hashable: ...

    def score(self, items: Sequence[ScoreInput]) -> list[float]: ...


class RuleSettings(Protocol):
    """What the rule scorers read of a job's settings (``job_settings.JobSettings`` has it)."""

    regex_pattern: str
    ignore_case: bool


@dataclass(frozen=True)
class ScorerContext:
    """What a factory may use: the job's settings, the adapter named by the caller (None: the
    configured model), the resident reward models (None when the service has none), and the
    regex limits."""

    settings: RuleSettings
    adapter: tuple[str, int] | None = None
    models: RewardModels | None = None
    max_pattern_chars: int = 512
    regex_timeout_ms: float = 100.0


Factory = Callable[[ScorerContext], Scorer]


def _exact_match(ctx: ScorerContext) -> Scorer:
    from services.reward.scorers.rules import ExactMatch

    return ExactMatch(ignore_case=ctx.settings.ignore_case)


def _contains_answer(ctx: ScorerContext) -> Scorer:
    from services.reward.scorers.rules import ContainsAnswer

    return ContainsAnswer(ignore_case=ctx.settings.ignore_case)


def _regex(ctx: ScorerContext) -> Scorer:
    from services.reward.scorers.rules import PatternLimits, RegexMatch

    limits = PatternLimits(ctx.max_pattern_chars, ctx.regex_timeout_ms)
    return RegexMatch.from_settings(ctx.settings.regex_pattern, limits)


def _format_json(ctx: ScorerContext) -> Scorer:
    from services.reward.scorers.rules import FormatJson

    return FormatJson()


def _reward_model(ctx: ScorerContext) -> Scorer:
    from services.reward.scorers.model import RewardModels

    return RewardModels.scorer_for(ctx.models, ctx.adapter)


# The whole set of scorers a request can name. Adding one is a code change reviewed here.
SCORERS: dict[str, Factory] = {
    "exact_match": _exact_match,
    "contains_answer": _contains_answer,
    "regex": _regex,
    "format_json": _format_json,
    "reward_model": _reward_model,
}

# Scorers that read a reward model (and so accept a reward adapter).
MODEL_SCORERS = frozenset({"reward_model"})


def valid_names() -> list[str]:
    return sorted(SCORERS)


def build(name: str, ctx: ScorerContext, *, field_prefix: str = "") -> Scorer:
    """The scorer called ``name``; INVALID_ARGUMENT (listing the valid names) when unknown.

    ``field_prefix`` places the fields in the caller's message (``"task."`` for a rollout).
    """
    factory = SCORERS.get(name)
    if factory is None:
        shown = repr(name) if name else "an empty name"
        raise invalid(
            f"{field_prefix}scorer",
            f"unknown scorer {shown}; valid scorers: {', '.join(valid_names())}",
            reason="UNKNOWN_SCORER",
        )
    if ctx.adapter is not None and name not in MODEL_SCORERS:
        raise invalid(
            f"{field_prefix}reward_adapter",
            f"scorer {name!r} reads no reward model; leave reward_adapter empty or use one of: "
            f"{', '.join(sorted(MODEL_SCORERS))}",
            reason="ADAPTER_NOT_USED",
        )
    return factory(ctx)
