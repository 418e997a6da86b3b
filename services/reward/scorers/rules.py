"""Rule scorers: plain functions of the completion text (and the reference answer).

- ``exact_match``: 1.0 when the completion equals the reference answer after trimming and
  collapsing whitespace (optionally ignoring case), else 0.0.
- ``contains_answer``: 1.0 when the reference answer occurs in the completion (same folding).
- ``regex``: 1.0 when the job's ``regex_pattern`` matches somewhere in the completion, else 0.0.
- ``format_json``: 1.0 when the completion (trimmed, optionally inside one ```json fence) is a
  JSON object, else 0.0.

Patterns are untrusted data: they are compiled by the ``regex`` package with a length cap, and
every match runs with a timeout, so a catastrophic pattern costs at most ``regex_timeout_ms`` per
item and is then INVALID_ARGUMENT; a pattern that does not compile is INVALID_ARGUMENT too.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import regex

from services.common.config import ConfigError
from services.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, invalid
from services.reward.scorers import Reads, ScoreInput

_MAX_JSON_CHARS = 1_000_000
_FENCE = regex.compile(r"\A```(?:json)?\s*\n(.*)\n```\Z", regex.DOTALL)


@dataclass(frozen=True)
class PatternLimits:
    max_chars: int = 512
    timeout_ms: float = 100.0


def _fold(text: str, ignore_case: bool) -> str:
    text = " ".join(text.split())
    return text.casefold() if ignore_case else text


def _require_reference(items: Sequence[ScoreInput], scorer: str) -> None:
    missing = [i for i, item in enumerate(items) if not item.reference_answer.strip()]
    if missing:
        raise InvalidArgument(
            f"scorer {scorer!r} compares with a reference answer, and {len(missing)} item(s) "
            "have none",
            reason="MISSING_REFERENCE_ANSWER",
            violations=[
                FieldViolation(f"items[{i}].reference_answer", "empty") for i in missing[:10]
            ],
        )


@dataclass(frozen=True)
class ExactMatch:
    ignore_case: bool = False
    name: str = "exact_match"
    reads: Reads = Reads.TEXT
    batched: bool = False

    @property
    def key(self) -> Hashable:
        return (self.name, self.ignore_case)

    def score(self, items: Sequence[ScoreInput]) -> list[float]:
        _require_reference(items, self.name)
        return [
            float(
                _fold(it.completion_text, self.ignore_case)
                == _fold(it.reference_answer, self.ignore_case)
            )
            for it in items
        ]


@dataclass(frozen=True)
class ContainsAnswer:
    ignore_case: bool = False
    name: str = "contains_answer"
    reads: Reads = Reads.TEXT
    batched: bool = False

    @property
    def key(self) -> Hashable:
        return (self.name, self.ignore_case)

    def score(self, items: Sequence[ScoreInput]) -> list[float]:
        _require_reference(items, self.name)
        return [
            float(
                _fold(it.reference_answer, self.ignore_case)
                in _fold(it.completion_text, self.ignore_case)
            )
            for it in items
        ]


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> regex.Pattern:
    return regex.compile(pattern, regex.VERSION0)


def compile_pattern(pattern: str, field_path: str, limits: PatternLimits) -> regex.Pattern:
    """Compile an untrusted pattern; INVALID_ARGUMENT at ``field_path`` when too long or bad."""
    if len(pattern) > limits.max_chars:
        raise invalid(
            field_path,
            f"pattern has {len(pattern)} characters, more than the limit of {limits.max_chars}",
            reason="PATTERN_TOO_LONG",
        )
    try:
        return _compile(pattern)
    except (regex.error, ValueError, TypeError, RecursionError) as exc:
        raise invalid(
            field_path, f"pattern {pattern!r} does not compile: {exc}", reason="BAD_PATTERN"
        ) from None


def check_pattern(pattern: str, where: str, limits: PatternLimits) -> None:
    """``compile_pattern`` for a configured pattern: a ``ConfigError`` naming ``where``."""
    if not pattern:
        return
    try:
        compile_pattern(pattern, where, limits)
    except InvalidArgument as exc:
        raise ConfigError(f"{where}: {exc.violations[0].description}") from None


@dataclass(frozen=True)
class RegexMatch:
    pattern: regex.Pattern
    timeout_ms: float = 100.0
    name: str = "regex"
    reads: Reads = Reads.TEXT
    batched: bool = False

    @classmethod
    def from_settings(cls, pattern: str, limits: PatternLimits) -> RegexMatch:
        if not pattern:
            raise FailedPrecondition(
                "scorer 'regex' needs a pattern: set regex_pattern in the reward service config "
                "or for this job in its job_settings_file or its RewardSettings",
                reason="REGEX_PATTERN_NOT_CONFIGURED",
            )
        return cls(compile_pattern(pattern, "regex_pattern", limits), limits.timeout_ms)

    @property
    def key(self) -> Hashable:
        return (self.name, self.pattern.pattern)

    def score(self, items: Sequence[ScoreInput]) -> list[float]:
        timeout = self.timeout_ms / 1000
        out = []
        for i, it in enumerate(items):
            try:
                found = self.pattern.search(it.completion_text, timeout=timeout)
            except TimeoutError:
                raise invalid(
                    f"items[{i}].completion_text",
                    f"regex_pattern {self.pattern.pattern!r} took longer than "
                    f"{self.timeout_ms:g} ms on this text (catastrophic backtracking?); "
                    "simplify the pattern",
                    reason="PATTERN_TIMEOUT",
                ) from None
            out.append(float(found is not None))
        return out


def is_json_object(text: str) -> bool:
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    if not text.startswith("{") or len(text) > _MAX_JSON_CHARS:
        return False
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


@dataclass(frozen=True)
class FormatJson:
    name: str = "format_json"
    reads: Reads = Reads.TEXT
    batched: bool = False

    @property
    def key(self) -> Hashable:
        return (self.name,)

    def score(self, items: Sequence[ScoreInput]) -> list[float]:
        return [float(is_json_object(it.completion_text)) for it in items]
