"""Preference losses as pure functions over tensors: reward modelling, DPO and its variants.

Every function takes per-sequence quantities already reduced over the response tokens (see
``sequence_logps``) and returns per-example losses, so the recipes decide how to average,
accumulate and log. Shapes are in trailing comments; ``B`` is the number of preference pairs.

Formulas (``c`` = chosen, ``r`` = rejected, ``pi`` = policy, ``ref`` = reference):
- pairwise reward model: ``-log sigmoid(s_c - s_r)``
- DPO (sigmoid): with ``h = (log pi(c) - log ref(c)) - (log pi(r) - log ref(r))``,
  ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)`` (``eps`` = label smoothing)
- IPO: ``(h - 1 / (2 beta))^2`` (the ``dpo`` recipe passes length-averaged log-probs, as TRL)
- hinge: ``max(0, 1 - beta h)``
- ORPO (reference-free, on length-averaged log-probs ``a``): the log odds ratio
  ``l = (a_c - a_r) - (log(1 - e^{a_c}) - log(1 - e^{a_r}))`` and ``-log sigmoid(l)``;
  the recipe adds the chosen NLL with weight 1 and scales this term by beta
- SimPO (reference-free, length-averaged): ``-log sigmoid(beta (a_c - a_r) - gamma)``
- KTO (unpaired, rated responses): ``w_d (1 - sigmoid(beta (r - z)))`` for a desirable response,
  ``w_u (1 - sigmoid(beta (z - r)))`` for an undesirable one, ``r`` its log-ratio against the
  reference and ``z`` the batch's KL estimate
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(label_t | prefix) over response tokens, and how many there were.

    ``labels`` are unshifted (the label of position t is the token at t, -100 where masked):
    the logits at t-1 predict the token at t.
    """
    shifted_logits = logits[:, :-1, :].float()  # (N, T-1, V)
    shifted_labels = labels[:, 1:]  # (N, T-1)
    mask = shifted_labels != IGNORE_INDEX  # (N, T-1)
    safe = shifted_labels.masked_fill(~mask, 0)
    token_logps = torch.gather(
        F.log_softmax(shifted_logits, dim=-1), 2, safe.unsqueeze(-1)
    ).squeeze(-1)  # (N, T-1)
    return (token_logps * mask).sum(-1), mask.sum(-1)  # (N,), (N,)


def pairwise_reward_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """``-log sigmoid(s_c - s_r)`` per pair."""
    return -F.logsigmoid(chosen - rejected)  # (B,)


@dataclass(frozen=True)
class DpoOutput:
    losses: torch.Tensor  # (B,)
    chosen_rewards: torch.Tensor  # (B,) beta * (log pi(c) - log ref(c)), detached
    rejected_rewards: torch.Tensor  # (B,)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> DpoOutput:
    """DPO and its ``ipo`` / ``hinge`` variants on summed response log-probs."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)  # (B,)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(
            -beta * h
        )
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}; choose sigmoid, ipo or hinge")
    return DpoOutput(
        losses,
        (beta * (policy_chosen - ref_chosen)).detach(),
        (beta * (policy_rejected - ref_rejected)).detach(),
    )


def orpo_odds_ratio_loss(chosen_avg: torch.Tensor, rejected_avg: torch.Tensor) -> torch.Tensor:
    """``-log sigmoid(log odds(c) - log odds(r))`` on length-averaged log-probs (all < 0)."""
    log_odds = (chosen_avg - rejected_avg) - (log1mexp(chosen_avg) - log1mexp(rejected_avg))  # (B,)
    return -F.logsigmoid(log_odds)  # (B,)


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """``log(1 - e^a)`` for ``a < 0``, accurate near 0 too (Maechler's two branches at -ln 2):
    for a confident response (``a`` = -1e-8) ``e^a`` rounds to 1 and ``log1p(-e^a)`` is -inf."""
    return torch.where(
        a < -0.6931471805599453, torch.log1p(-torch.exp(a)), torch.log(-torch.expm1(a))
    )


def simpo_loss(
    chosen_avg: torch.Tensor, rejected_avg: torch.Tensor, beta: float, gamma: float
) -> torch.Tensor:
    """``-log sigmoid(beta (a_c - a_r) - gamma)`` on length-averaged log-probs."""
    return -F.logsigmoid(beta * (chosen_avg - rejected_avg) - gamma)  # (B,)


def kto_loss(
    policy: torch.Tensor,
    reference: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KTO (Ethayarajh et al. 2024, eq. 7, as TRL's ``KTOTrainer``) per example, and its reward.

    With ``r = log pi(y|x) - log ref(y|x)`` (summed over the response) and ``z`` the batch's KL
    estimate (detached, clamped at 0): a desirable response costs
    ``w_d (1 - sigmoid(beta (r - z)))``, an undesirable one ``w_u (1 - sigmoid(beta (z - r)))``.
    The reward is ``beta r`` (detached)."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    r = policy - reference  # (B,)
    z = kl.detach()
    good = desirable_weight * (1 - torch.sigmoid(beta * (r - z)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z - r)))
    return torch.where(desirable, good, bad), (beta * r).detach()  # (B,), (B,)
