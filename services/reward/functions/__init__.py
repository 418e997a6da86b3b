"""Reward functions: named, owner-registered scorers a job combines into a weighted sum.

A job names functions (``RewardSettings.functions``: name, weight, arguments, label) under the
scorer ``"functions"`` (or names one function directly as its scorer); every reward worker
resolves the same names from its own configuration. Nothing a job sends is code or an address.

- ``registry.py``: what the service offers: the rules (in process), ``math_verify`` (subprocess
  pool), ``code_tests`` (sandbox), the owner's ``module:function``s and entry points (subprocess
  pool) and remote scorers, read from the owner's ``functions_file``;
- ``pool.py`` + ``invoke.py``: the subprocess pool with per-call deadlines, and the call
  convention inside a worker process;
- ``math_verify.py``, ``sandbox.py`` + ``sandbox_init.py``, ``remote.py``: the built-in kinds;
- ``runtime.py``: runs a job's functions on items and sums them (the ``functions`` scorer).

This package knows nothing about queues, normalisation or protos beyond ``RewardFunctionRef``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.errors import FailedPrecondition

FUNCTIONS_SCORER = "functions"


@dataclass(frozen=True)
class FunctionCall:
    """One function as a job names it."""

    name: str
    label: str
    weight: float = 1.0
    args: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Component:
    """One function's score on one item (before its weight)."""

    label: str
    name: str
    weight: float
    score: float
    sub_scores: dict = field(default_factory=dict, hash=False)
    detail: str = ""


@dataclass(frozen=True)
class Detailed:
    """A weighted sum with its parts; ``float()`` gives the sum (what normalisation reads)."""

    total: float
    components: tuple[Component, ...]

    def __float__(self) -> float:
        return self.total


class FunctionFailed(FailedPrecondition):
    """A reward function did not produce a score for an item (raised, timed out, crashed, or
    its sandbox or remote endpoint failed); the message names the item and the function."""
