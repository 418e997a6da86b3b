"""Runs a job's reward functions on items: the ``functions`` scorer and ``TestRewardFunction``.

``RewardFunctions`` holds what the service offers (``registry``) and the means to run it: the
subprocess pool (started on first use, or at start-up when the owner registered functions, so
an import error stops the service instead of the first job), the sandbox and the remote
scorers. ``calls_from_proto`` checks a job's ``RewardFunctionRef`` list against it (unknown name,
duplicate label, non-finite weight, unknown argument of a built-in: INVALID_ARGUMENT with the
field path). ``FunctionSetScorer`` is the ``Scorer`` the engine runs: for each item it runs
every function concurrently, each under its deadline, and returns the weighted sum with each
function's part (``Detailed``). A function that fails fails its item with ``FunctionFailed``
naming the item, the function and the reason; nothing is scored 0 in its place.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from google.protobuf import json_format

from services.common.errors import FieldViolation, InvalidArgument, Unavailable
from services.reward.functions import (
    FUNCTIONS_SCORER,
    Component,
    Detailed,
    FunctionCall,
    FunctionFailed,
)
from services.reward.functions import sandbox as sandbox_mod
from services.reward.functions.pool import CallError, PoolStartError, SubprocessPool
from services.reward.functions.registry import (
    POOL_PRELOAD,
    FunctionsConfig,
    FunctionSpec,
    Kind,
)
from services.reward.functions.remote import RemoteError
from services.reward.scorers import Reads, ScoreInput
from services.reward.scorers.rules import (
    ContainsAnswer,
    ExactMatch,
    FormatJson,
    PatternLimits,
    RegexMatch,
    compile_pattern,
)

logger = logging.getLogger(__name__)

MAX_FUNCTIONS = 16


def _payload(item: ScoreInput, args: dict) -> dict:
    return {
        "prompt": item.prompt_text,
        "completion": item.completion_text,
        "prompt_ids": list(item.prompt_ids),
        "completion_ids": list(item.completion_ids),
        "reference": item.reference_answer,
        "args": args,
    }


class RewardFunctions:
    """The functions of one service and the means to run them (thread-safe)."""

    def __init__(self, config: FunctionsConfig, limits: PatternLimits | None = None) -> None:
        self.config = config
        self.limits = limits or PatternLimits()
        self.sandbox = sandbox_mod.Sandbox(config.sandbox)
        self._pool: SubprocessPool | None = None
        self._pool_error = ""
        self._pool_lock = threading.Lock()
        threads = max(8, config.pool_workers + config.sandbox.uid_count // 4 + 8)
        self.calls = ThreadPoolExecutor(threads, thread_name_prefix="reward-fn-call")
        self.orchestrator = ThreadPoolExecutor(threads, thread_name_prefix="reward-fn-item")

    def start(self) -> None:
        """Start the pool now when the owner registered functions (their imports are checked)."""
        if self.config.pool_targets:
            self.pool()

    def close(self) -> None:
        self.orchestrator.shutdown(wait=False, cancel_futures=True)
        self.calls.shutdown(wait=False, cancel_futures=True)
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def pool(self) -> SubprocessPool:
        with self._pool_lock:
            if self._pool is None:
                if self.config.pool_workers < 1:
                    raise Unavailable(
                        "this reward service runs no function pool (function_workers=0)",
                        reason="FUNCTION_POOL_DISABLED",
                    )
                try:
                    self._pool = SubprocessPool(
                        self.config.pool_workers,
                        targets=self.config.pool_targets,
                        python_path=self.config.python_path,
                        preload=POOL_PRELOAD,
                        memory_mb=self.config.pool_memory_mb,
                    )
                except PoolStartError as exc:
                    self._pool_error = str(exc)
                    raise FunctionFailed(
                        f"the reward-function pool could not start: {exc}",
                        reason="FUNCTION_POOL_FAILED",
                    ) from None
            return self._pool

    # -- what is offered -------------------------------------------------------------------------

    def specs(self) -> list[FunctionSpec]:
        return [self.config.functions[n] for n in sorted(self.config.functions)]

    def unavailable_reason(self, spec: FunctionSpec) -> str:
        if spec.kind is Kind.SANDBOX:
            return self.sandbox.unavailable_reason()
        if spec.kind in (Kind.BUILTIN, Kind.USER) and self.config.pool_workers < 1:
            return "this reward service runs no function pool (function_workers=0)"
        if spec.kind in (Kind.BUILTIN, Kind.USER) and self._pool_error:
            return self._pool_error
        return ""

    def timeout_s(self, spec: FunctionSpec) -> float:
        if spec.kind is Kind.SANDBOX:
            return self.config.sandbox.wall_s
        return spec.timeout_s

    # -- a job's list ---------------------------------------------------------------------------

    def calls_from_proto(self, refs: Sequence, field: str) -> tuple[FunctionCall, ...]:
        """``RewardFunctionRef``s checked against this service (INVALID_ARGUMENT if not)."""
        if not refs:
            raise InvalidArgument(
                f"{field}: scorer {FUNCTIONS_SCORER!r} needs at least one reward function",
                reason="NO_REWARD_FUNCTIONS",
                violations=[FieldViolation(field, "empty")],
            )
        if len(refs) > MAX_FUNCTIONS:
            raise InvalidArgument(
                f"{field}: {len(refs)} functions, more than {MAX_FUNCTIONS}",
                reason="TOO_MANY_REWARD_FUNCTIONS",
            )
        violations: list[FieldViolation] = []
        calls, labels = [], set()
        for i, ref in enumerate(refs):
            at = f"{field}[{i}]"
            spec = self.config.functions.get(ref.name)
            if spec is None:
                shown = repr(ref.name) if ref.name else "an empty name"
                violations.append(
                    FieldViolation(
                        f"{at}.name",
                        f"unknown reward function {shown}; this reward service offers: "
                        f"{', '.join(sorted(self.config.functions))}",
                    )
                )
                continue
            weight = ref.weight if ref.HasField("weight") else 1.0
            if not math.isfinite(weight):
                violations.append(FieldViolation(f"{at}.weight", f"{weight} is not finite"))
            label = ref.label or ref.name
            if label in labels:
                violations.append(
                    FieldViolation(f"{at}.label", f"{label!r} is used twice; give each a label")
                )
            labels.add(label)
            args = json_format.MessageToDict(ref.args) if ref.HasField("args") else {}
            violations += self._check_args(spec, args, f"{at}.args")
            calls.append(FunctionCall(spec.name, label, float(weight), args))
        if violations:
            raise InvalidArgument(
                f"{field}: {len(violations)} problem(s) with the job's reward functions",
                reason="BAD_REWARD_FUNCTIONS",
                violations=violations[:10],
            )
        return tuple(calls)

    def _check_args(self, spec: FunctionSpec, args: dict, at: str) -> list[FieldViolation]:
        if spec.args is None:
            return []
        unknown = sorted(set(args) - set(spec.args))
        if unknown:
            takes = ", ".join(spec.args) if spec.args else "none"
            return [
                FieldViolation(at, f"{spec.name} takes no argument {unknown[0]!r} (takes: {takes})")
            ]
        if spec.name == "regex":
            pattern = args.get("pattern")
            if not isinstance(pattern, str) or not pattern:
                return [FieldViolation(f"{at}.pattern", "regex needs a non-empty pattern")]
            try:
                compile_pattern(pattern, f"{at}.pattern", self.limits)
            except InvalidArgument as exc:
                return list(exc.violations)
        return []

    def scorer(self, calls: tuple[FunctionCall, ...]) -> FunctionSetScorer:
        return FunctionSetScorer(self, calls)

    # -- one call -------------------------------------------------------------------------------

    def run(self, call: FunctionCall, item: ScoreInput, where: str) -> Component:
        spec = self.config.functions[call.name]
        try:
            result = self._run(spec, call, item)
        except FunctionFailed as exc:
            raise FunctionFailed(f"{where}: {exc.message}", reason=exc.reason) from None
        return Component(
            call.label, call.name, call.weight, float(result["score"]),
            dict(result.get("sub_scores") or {}), str(result.get("detail") or ""),
        )  # fmt: skip

    def _run(self, spec: FunctionSpec, call: FunctionCall, item: ScoreInput) -> dict:
        what = f"reward function {call.label!r}" + (
            f" ({spec.name})" if call.label != spec.name else ""
        )
        if spec.kind is Kind.RULE:
            return {"score": self._rule(spec.name, call.args, item)}
        if spec.kind is Kind.SANDBOX:
            try:
                return sandbox_mod.score(
                    self.sandbox, completion=item.completion_text,
                    reference=item.reference_answer, **call.args,
                )  # fmt: skip
            except ValueError as exc:
                raise FunctionFailed(f"{what}: {exc}", reason="BAD_CODE_TESTS") from None
            except sandbox_mod.SandboxError as exc:
                raise FunctionFailed(f"{what}: {exc}", reason="SANDBOX_FAILED") from None
        if spec.kind is Kind.REMOTE:
            assert spec.remote is not None
            try:
                return spec.remote.score(_payload(item, call.args))
            except RemoteError as exc:
                raise FunctionFailed(
                    f"{what}: remote scorer failed: {exc}", reason="REMOTE_SCORER_FAILED"
                ) from None
        try:
            return self.pool().call(spec.target, _payload(item, call.args), spec.timeout_s)
        except CallError as exc:
            reason = {
                "raised": "REWARD_FUNCTION_RAISED",
                "timeout": "REWARD_FUNCTION_TIMEOUT",
                "crashed": "REWARD_FUNCTION_CRASHED",
            }.get(exc.kind, "REWARD_FUNCTION_BUSY")
            verb = "raised" if exc.kind == "raised" else "failed:"
            raise FunctionFailed(f"{what} {verb} {exc.message}", reason=reason) from None

    def _rule(self, name: str, args: dict, item: ScoreInput) -> float:
        ignore_case = bool(args.get("ignore_case", False))
        if name == "exact_match":
            scorer = ExactMatch(ignore_case=ignore_case)
        elif name == "contains_answer":
            scorer = ContainsAnswer(ignore_case=ignore_case)
        elif name == "regex":
            scorer = RegexMatch.from_settings(str(args.get("pattern", "")), self.limits)
        else:
            scorer = FormatJson()
        try:
            return scorer.score([item])[0]
        except InvalidArgument as exc:
            raise FunctionFailed(f"reward function {name!r}: {exc}", reason=exc.reason) from None


@dataclass(frozen=True)
class FunctionSetScorer:
    """The ``functions`` scorer: a job's weighted sum (see the module docstring)."""

    functions: RewardFunctions
    calls: tuple[FunctionCall, ...]
    name: str = FUNCTIONS_SCORER
    reads: Reads = Reads.TEXT
    batched: bool = False
    wants_prompt: bool = True  # the engine decodes prompt_ids into prompt_text when it can

    @property
    def key(self) -> Hashable:
        return (self.name, tuple((c.name, c.label, c.weight, repr(c.args)) for c in self.calls))

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self.functions.orchestrator

    def score(self, items: Sequence[ScoreInput]) -> list[Detailed]:
        futures = [
            [self.functions.calls.submit(self.functions.run, call, item, f"items[{i}]")
             for call in self.calls]
            for i, item in enumerate(items)
        ]  # fmt: skip
        try:
            parts = [tuple(f.result() for f in row) for row in futures]
        except BaseException:
            for row in futures:
                for f in row:
                    f.cancel()
            raise
        return [Detailed(math.fsum(c.weight * c.score for c in row), row) for row in parts]
