"""The arithmetic of PPO on token sequences: KL-penalised rewards, GAE, whitening, the clipped
losses and the adaptive KL controller.

Every tensor is ``(B, T)`` over the completion tokens of B sequences, right-padded, with a float
``mask`` (1 on real completion tokens, 0 on padding); position ``t`` is the action "emit completion
token ``t``". Written by hand because the field's library for it no longer has it: TRL removed
its PPO trainer (and ``AdaptiveKLController``, ``masked_whiten``) before 1.x, and pulling an old TRL
for five formulas would pin transformers. The formulas follow Ziegler et al. 2019 (KL penalty,
adaptive controller), Schulman et al. 2016 (GAE) and 2017 (clipped objectives), as TRL's PPO and
LLaMA-Factory's PPO stage applied them: reward at the last token, per-token KL ``log pi - log
ref`` (the "k1" estimator), value loss clipped around the old values, both halved as there.
Tests derive each one by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (a scalar)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True
) -> torch.Tensor:
    """``(values - mean) / std`` over the masked positions (unbiased variance, as TRL had it);
    with ``shift_mean=False`` the mean is added back (rewards keep their sign)."""
    mean = masked_mean(values, mask)
    count = mask.sum()
    variance = masked_mean((values - mean) ** 2, mask) * count / (count - 1).clamp(min=1)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_penalised_rewards(
    scores: torch.Tensor,  # (B,) one scalar reward per sequence
    logprobs: torch.Tensor,  # (B, T) policy log-probs of the sampled tokens
    ref_logprobs: torch.Tensor,  # (B, T) reference log-probs of the same tokens
    mask: torch.Tensor,  # (B, T)
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ``-kl_coef * (logp - ref_logp)`` plus the score at each sequence's last
    real token; returns ``(rewards, kl)``, both ``(B, T)`` and 0 on padding."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)  # (B,) index of the last real token
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards * mask, kl


def gae(
    rewards: torch.Tensor,  # (B, T)
    values: torch.Tensor,  # (B, T) value estimates before each action
    mask: torch.Tensor,  # (B, T)
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation; returns ``(advantages, returns)`` with
    ``returns = advantages + values``. The value after a sequence's last token is 0 (the episode
    ends there), so padding never leaks into a real position."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def policy_loss(
    logprobs: torch.Tensor,  # (B, T) under the policy being optimised
    old_logprobs: torch.Tensor,  # (B, T) under the policy that the step started with
    advantages: torch.Tensor,  # (B, T)
    mask: torch.Tensor,  # (B, T)
    clip_range: float,
    weights: torch.Tensor | None = None,  # (B, T) per-token importance weights, or None
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate ``max(-A r, -A clip(r, 1-e, 1+e))``, masked mean over tokens, each
    token's term multiplied by ``weights`` when given. Returns the loss and its statistics."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    per_token = torch.maximum(unclipped, clipped)
    if weights is not None:
        per_token = per_token * weights
    loss = masked_mean(per_token, mask)
    with torch.no_grad():
        stats = {
            "clipfrac": float(masked_mean((clipped > unclipped).float(), mask)),
            "ratio": float(masked_mean(ratio, mask)),
            "approx_kl": float(masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask)),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,  # (B, T) under the value head being optimised
    old_values: torch.Tensor,  # (B, T) when the step started
    returns: torch.Tensor,  # (B, T)
    mask: torch.Tensor,  # (B, T)
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``0.5 * max((v - R)^2, (clip(v, v_old - e, v_old + e) - R)^2)``, masked mean."""
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        stats = {"clipfrac": float(masked_mean((clipped_loss > unclipped_loss).float(), mask))}
    return loss, stats


@dataclass
class KlController:
    """Fixed, or adaptive towards ``target`` (Ziegler et al. 2019): after each step,
    ``coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_samples / horizon``."""

    coef: float
    adaptive: bool = False
    target: float = 6.0
    horizon: int = 10_000

    def update(self, kl: float, n_samples: int) -> None:
        if not self.adaptive:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * n_samples / self.horizon
