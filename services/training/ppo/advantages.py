"""Advantage estimators: one PPO step's scored rollouts -> per-token advantages (and returns).

The ``ppo`` recipe composes one ``AdvantageEstimator``; the update (clipped policy loss, and a
clipped value loss when the estimator trains a critic) is the same for all of them. An estimator
sees the step's sequences as ``(N, T)`` tensors over their completion tokens: the policy's and the
reference's log-probs of the sampled tokens, the value head's estimates when it ``needs_values``,
the mask, and one score per sequence. It decides where the KL penalty goes and how rewards become
advantages. ``Gae`` is the classic PPO-RLHF estimator (Ziegler et al. 2019 + Schulman et al.
2016): the KL penalty in the per-token reward, GAE over the value head, advantages whitened.
Critic-free estimators (GRPO, RLOO, REINFORCE++) are more objects beside it. The arithmetic is
``losses.ppo``'s (pure functions); this module knows nothing of models or queues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from services.training.losses.ppo import gae, kl_penalised_rewards, masked_whiten


@dataclass
class StepTokens:
    """One step's sequences, ``(N, T)`` over completion tokens unless noted."""

    scores: torch.Tensor  # (N,) one (normalised) score per sequence
    logprobs: torch.Tensor  # the policy's that sampled them ("old"), at the sampling temperature
    ref_logprobs: torch.Tensor  # the reference's
    values: torch.Tensor | None  # the value head's, when the estimator needs_values
    mask: torch.Tensor  # 1 on completion tokens


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
