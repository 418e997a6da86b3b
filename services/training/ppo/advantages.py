"""Advantage estimators: one PPO step's scored rollouts -> per-token advantages (and returns).

The ``ppo`` recipe composes one ``AdvantageEstimator``; the update (clipped policy loss, and a
clipped value loss when the estimator trains a critic) is the same for all of them. An estimator
sees the step's sequences as ``(N, T)`` tensors over their completion tokens: the policy's and the
reference's log-probs of the sampled tokens, the value head's estimates when it ``needs_values``,
the mask, and one score per sequence. It decides where the KL penalty goes and how rewards become
advantages. ``Gae`` is the classic PPO-RLHF estimator (Ziegler et al. 2019 + Schulman et al.
2016): the KL penalty in the per-token reward, GAE over the value head, advantages whitened.
The critic-free estimators of the ``grpo`` recipe (``GroupRelative`` for GRPO and Dr. GRPO,
``Rloo``, ``ReinforcePP``) are objects beside it: no value head, the KL is a loss term (not in the
reward), one advantage per sequence from its group (``StepTokens.groups``). The arithmetic is
``losses.ppo``'s and ``losses.grpo``'s (pure functions); this module knows nothing of models or
queues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from services.training.losses import grpo as grpo_math
from services.training.losses.ppo import gae, kl_penalised_rewards, masked_whiten


@dataclass
class StepTokens:
    """One step's sequences, ``(N, T)`` over completion tokens unless noted."""

    scores: torch.Tensor  # (N,) one (normalised) score per sequence
    logprobs: torch.Tensor  # the policy's that sampled them ("old"), at the sampling temperature
    ref_logprobs: torch.Tensor | None  # the reference's (None: no reference, beta = 0)
    values: torch.Tensor | None  # the value head's, when the estimator needs_values
    mask: torch.Tensor  # 1 on completion tokens
    groups: torch.Tensor | None = None  # (N,) the group (prompt) of each sequence


@dataclass
class Advantages:
    advantages: torch.Tensor  # (N, T)
    returns: torch.Tensor | None  # (N, T) the value head's targets; None without a critic
    kl: torch.Tensor  # (N, T) per-token ``logp - ref_logp`` (logged as ``ppo/kl``)


class AdvantageEstimator(Protocol):
    needs_values: bool  # a value head is trained beside the policy (the value loss applies)

    def estimate(self, x: StepTokens, kl_coef: float) -> Advantages: ...


@dataclass(frozen=True)
class Gae:
    """KL-penalised per-token rewards, GAE over the value head, whitened advantages."""

    gamma: float
    lam: float
    whiten_rewards: bool = False  # scores whitened over the step before the penalty
    needs_values = True

    def estimate(self, x: StepTokens, kl_coef: float) -> Advantages:
        scores = x.scores  # (N,)
        if self.whiten_rewards and len(scores) > 1:
            scores = (scores - scores.mean()) / (scores.std() + 1e-8)
        rewards, kl = kl_penalised_rewards(scores, x.logprobs, x.ref_logprobs, x.mask, kl_coef)
        advantages, returns = gae(rewards, x.values, x.mask, self.gamma, self.lam)  # (N, T) each
        return Advantages(masked_whiten(advantages, x.mask), returns, kl)


def _kl(x: StepTokens) -> torch.Tensor:
    if x.ref_logprobs is None:
        return torch.zeros_like(x.mask)
    return (x.logprobs - x.ref_logprobs) * x.mask


def _groups(x: StepTokens) -> torch.Tensor:
    if x.groups is None:
        raise ValueError(
            "a group-relative estimator needs each sequence's group (StepTokens.groups)"
        )
    return x.groups


@dataclass(frozen=True)
class GroupRelative:
    """GRPO (``scale`` "group" or "batch": the z-score within the group, divided by the group's or
    the batch's std) and Dr. GRPO (``scale`` "none": the score minus its group's mean)."""

    scale: str = "group"
    needs_values = False

    def estimate(self, x: StepTokens, kl_coef: float) -> Advantages:
        adv = grpo_math.grpo_advantages(x.scores, _groups(x), self.scale)
        return Advantages(adv[:, None] * x.mask, None, _kl(x))


@dataclass(frozen=True)
class Rloo:
    """RLOO: the score minus the mean of the other samples of its group."""

    needs_values = False

    def estimate(self, x: StepTokens, kl_coef: float) -> Advantages:
        adv = grpo_math.rloo_advantages(x.scores, _groups(x))
        return Advantages(adv[:, None] * x.mask, None, _kl(x))


@dataclass(frozen=True)
class ReinforcePP:
    """REINFORCE++: the score minus a batch or group baseline, whitened over the batch's tokens."""

    baseline: str = "batch"
    needs_values = False

    def estimate(self, x: StepTokens, kl_coef: float) -> Advantages:
        groups = x.groups if x.groups is not None else torch.zeros_like(x.scores)
        adv = grpo_math.reinforce_pp_advantages(x.scores, groups, x.mask, self.baseline)
        return Advantages(adv, None, _kl(x))


def critic_free(name: str, *, scale: str = "group", baseline: str = "batch") -> AdvantageEstimator:
    """The estimator a ``grpo`` spec names: "grpo", "dr_grpo", "rloo" or "reinforce_pp"."""
    if name == "grpo":
        return GroupRelative(scale)
    if name == "dr_grpo":
        return GroupRelative("none")
    if name == "rloo":
        return Rloo()
    if name == "reinforce_pp":
        return ReinforcePP(baseline)
    raise ValueError(
        f"advantage_estimator {name!r}: expected 'grpo', 'dr_grpo', 'rloo' or 'reinforce_pp'"
    )
