"""The arithmetic of critic-free online RL on token sequences (GRPO, Dr. GRPO, DAPO, RLOO,
REINFORCE++): group baselines, the clipped per-token loss with DAPO's clip-higher, the KL term's
estimators, the three loss aggregations, and DAPO's soft overlong punishment.

Every ``(B, T)`` tensor is over the completion tokens of B sequences, right-padded, with a float
``mask``; ``groups`` is ``(B,)`` with each sequence's group index (the samples of one prompt).

Written here rather than imported: TRL's ``GRPOTrainer`` has this arithmetic only inline in
``_compute_loss`` / ``_generate_and_score_completions`` (methods of a trainer that generates in
process, not functions), with no RLOO leave-one-out or REINFORCE++ estimator beside GRPO's, no
k1/k2 KL estimators, and normalisers that assume its own micro-batching. The formulas follow
Shao et al. 2024 (GRPO, k3 KL), Liu et al. 2025 (Dr. GRPO), Yu et al. 2025 (DAPO: clip-higher,
token-mean, overlong punishment), Ahmadian et al. 2024 (RLOO) and Hu 2025 (REINFORCE++); the
tests compare the per-token loss with TRL's ``GRPOTrainer._compute_loss`` for every loss type it
has and derive the rest by hand.
"""

from __future__ import annotations

import torch

from services.training.losses.ppo import masked_whiten

STD_EPS = 1e-4  # TRL's: advantages / (std + 1e-4)
LOSS_TYPES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")


def group_ids(groups: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``groups`` (any labels) -> dense indices 0..G-1 and G."""
    _, dense = torch.unique(groups, return_inverse=True)
    return dense, int(dense.max()) + 1 if dense.numel() else 0


def group_mean_std(scores: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-sequence mean, unbiased std and size of its group, each ``(B,)``."""
    dense, count = group_ids(groups)
    scores = scores.double()
    size = torch.zeros(count, dtype=scores.dtype).index_add_(0, dense, torch.ones_like(scores))
    total = torch.zeros(count, dtype=scores.dtype).index_add_(0, dense, scores)
    mean = (total / size)[dense]
    squares = torch.zeros(count, dtype=scores.dtype).index_add_(0, dense, (scores - mean) ** 2)
    var = squares / (size - 1).clamp(min=1)
    return mean, var.sqrt()[dense], size[dense]


def zero_variance_groups(scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``(G,)`` bool: the groups (in dense order) whose rewards are all equal."""
    dense, count = group_ids(groups)
    lo = torch.full((count,), float("inf"), dtype=torch.float64).scatter_reduce(
        0, dense, scores.double(), "amin"
    )
    hi = torch.full((count,), float("-inf"), dtype=torch.float64).scatter_reduce(
        0, dense, scores.double(), "amax"
    )
    return lo == hi


def grpo_advantages(scores: torch.Tensor, groups: torch.Tensor, scale: str) -> torch.Tensor:
    """GRPO: ``(r - mean_group) / (std + 1e-4)``; ``scale`` picks the std: "group" (its group's,
    unbiased), "batch" (the whole batch's, unbiased) or "none" (no division: Dr. GRPO)."""
    mean, std, _ = group_mean_std(scores, groups)
    centred = scores.double() - mean
    if scale == "none":
        return centred.float()
    if scale == "batch":
        std = scores.double().std().expand_as(centred) if scores.numel() > 1 else centred * 0
    elif scale != "group":
        raise ValueError(f"scale_rewards {scale!r}: expected 'group', 'batch' or 'none'")
    return (centred / (std + STD_EPS)).float()


def rloo_advantages(scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """RLOO: ``r_i - mean of the other samples of its group`` (= n/(n-1) (r_i - mean))."""
    mean, _, size = group_mean_std(scores, groups)
    if bool((size < 2).any()):
        raise ValueError("RLOO needs at least 2 samples per group (sampling.n >= 2)")
    others = (mean * size - scores.double()) / (size - 1)
    return (scores.double() - others).float()


def reinforce_pp_advantages(
    scores: torch.Tensor, groups: torch.Tensor, mask: torch.Tensor, baseline: str
) -> torch.Tensor:
    """REINFORCE++: the score minus a baseline ("batch": the batch mean, as published; "group":
    the group mean, OpenRLHF's ``reinforce_baseline``), broadcast over each sequence's tokens
    (gamma = 1, the KL is a loss term here), then whitened over every token of the batch."""
    if baseline == "group":
        centred = scores.double() - group_mean_std(scores, groups)[0]
    elif baseline == "batch":
        centred = scores.double() - scores.double().mean()
    else:
        raise ValueError(f"reinforce_pp_baseline {baseline!r}: expected 'batch' or 'group'")
    per_token = centred.float()[:, None] * mask
    return masked_whiten(per_token, mask)


def kl_term(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probs:
    k1 ``log pi - log ref``, k2 ``(log pi - log ref)^2 / 2``, k3 ``exp(d) - d - 1`` with
    ``d = log ref - log pi`` (Schulman 2020; GRPO's and TRL's)."""
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k2":
        return 0.5 * (logprobs - ref_logprobs) ** 2
    if estimator == "k3":
        d = ref_logprobs - logprobs
        return torch.exp(d) - d - 1
    raise ValueError(f"kl_estimator {estimator!r}: expected one of {KL_ESTIMATORS}")


def per_token_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,  # (B, T) or (B, 1)
    epsilon: float,
    epsilon_high: float,
    *,
    weights: torch.Tensor | None = None,  # truncated engine importance weights, (B, T)
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``-min(r A, clip(r, 1 - eps, 1 + eps_high) A)`` (x ``weights``) ``+ beta * KL``; returns
    the per-token loss and per-token indicators (low/high clipping, the KL) for the metrics."""
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    loss = -torch.min(ratio * advantages, clipped * advantages)
    if weights is not None:
        loss = loss * weights
    stats = {
        "clip_low": ((ratio < 1 - epsilon) & (advantages < 0)).float(),
        "clip_high": ((ratio > 1 + epsilon_high) & (advantages > 0)).float(),
    }
    if beta != 0.0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs the reference's log-probs")
        kl = kl_term(logprobs, ref_logprobs, kl_estimator)
        loss = loss + beta * kl
        stats["kl"] = kl.detach()
    return loss, stats


def normaliser(mask: torch.Tensor, loss_type: str, max_tokens: int | None = None) -> float:
    """What ``aggregate`` divides by for the sequences of ``mask``: all of one optimizer step's
    sequences (over its micro-batches) share it, so summing the micro-batches' aggregates is the
    aggregate of the whole step. token-mean: their tokens; seq-mean-token-mean: their number;
    seq-mean-token-sum-norm: their number x ``max_tokens``."""
    if loss_type == "token-mean":
        return max(float(mask.sum()), 1.0)
    if loss_type == "seq-mean-token-mean":
        return float(mask.shape[0])
    if loss_type == "seq-mean-token-sum-norm":
        if not max_tokens:
            raise ValueError("seq-mean-token-sum-norm needs the sampling's max_tokens")
        return float(mask.shape[0] * max_tokens)
    raise ValueError(f"loss_type {loss_type!r}: expected one of {LOSS_TYPES}")


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, denominator: float
) -> torch.Tensor:
    """The loss of these sequences' share of a step (see ``normaliser`` for ``denominator``):
    token-mean ``sum(l m) / D``; seq-mean-token-mean ``sum_i (sum_t l m / sum_t m) / D``;
    seq-mean-token-sum-norm ``sum(l m) / D``."""
    if loss_type == "seq-mean-token-mean":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.sum() / denominator
    if loss_type in ("token-mean", "seq-mean-token-sum-norm"):
        return (per_token * mask).sum() / denominator
    raise ValueError(f"loss_type {loss_type!r}: expected one of {LOSS_TYPES}")


def overlong_penalty(lengths: torch.Tensor, max_tokens: int, buffer: int, factor: float):
    """DAPO's soft overlong punishment, ``(B,)``: 0 up to ``max_tokens - buffer`` tokens, then
    ``factor * ((max_tokens - buffer) - L) / buffer`` down to ``-factor`` at ``max_tokens`` (and
    beyond)."""
    start = max_tokens - buffer
    over = (lengths.double() - start).clamp(min=0, max=buffer)
    return (-factor * over / buffer).float()
