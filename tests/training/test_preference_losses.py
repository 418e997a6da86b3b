"""Preference losses against numbers derived by hand.

Hand derivations use ln(2) = 0.693147, sigmoid(1) = 0.731059, ln(sigmoid(1)) = -0.313262,
ln(sigmoid(-1)) = -1.313262.
"""

from __future__ import annotations

import math

import pytest
import torch

from services.training.losses.preference import (
    dpo_loss,
    orpo_odds_ratio_loss,
    pairwise_reward_loss,
    sequence_logps,
    simpo_loss,
)

T = torch.tensor


def test_sequence_logps_counts_only_response_tokens():
    # Vocabulary of 2. Uniform logits at every position: each counted token has log p = -ln 2.
    logits = torch.zeros(1, 4, 2)
    labels = T([[-100, -100, 1, 0]])  # tokens at t=2 and t=3 count (predicted from t=1, t=2)
    total, count = sequence_logps(logits, labels)
    assert count.tolist() == [2]
    assert total.item() == pytest.approx(-2 * math.log(2), abs=1e-6)
    # Make position 1 certain of token 1: only that prediction changes (log p -> ~0).
    logits[0, 1] = T([-50.0, 50.0])
    total, _ = sequence_logps(logits, labels)
    assert total.item() == pytest.approx(-math.log(2), abs=1e-6)


def test_pairwise_reward_loss():
    # s_c - s_r = 0 -> ln 2; = 1 -> -ln sigmoid(1) = 0.313262
    losses = pairwise_reward_loss(T([0.5, 2.0]), T([0.5, 1.0]))
    assert losses.tolist() == pytest.approx([0.693147, 0.313262], abs=1e-6)


def test_dpo_sigmoid_ipo_hinge():
    # policy c/r = -1/-3, ref c/r = -2/-2 -> h = (1) - (-1) = 2; beta = 0.5 -> beta h = 1
    args = (T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0]))
    out = dpo_loss(*args, beta=0.5)
    assert out.losses.item() == pytest.approx(0.313262, abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.5)  # 0.5 * (-1 - -2)
    assert out.rejected_rewards.item() == pytest.approx(-0.5)  # 0.5 * (-3 - -2)
    # label smoothing 0.1: 0.9 * 0.313262 + 0.1 * 1.313262 = 0.413262
    smoothed = dpo_loss(*args, beta=0.5, label_smoothing=0.1)
    assert smoothed.losses.item() == pytest.approx(0.413262, abs=1e-6)
    # IPO: (h - 1 / (2 beta))^2 = (2 - 1)^2 = 1
    assert dpo_loss(*args, beta=0.5, loss_type="ipo").losses.item() == pytest.approx(1.0)
    # hinge: max(0, 1 - beta h) = max(0, 0) = 0; with beta 0.25: 1 - 0.5 = 0.5
    assert dpo_loss(*args, beta=0.5, loss_type="hinge").losses.item() == pytest.approx(0.0)
    assert dpo_loss(*args, beta=0.25, loss_type="hinge").losses.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="sigmoid, ipo or hinge"):
        dpo_loss(*args, beta=0.5, loss_type="kto")


def test_orpo_odds_ratio():
    # a_c = ln 0.5, a_r = ln 0.25: odds(c) = 0.5/0.5 = 1, odds(r) = 0.25/0.75 = 1/3
    # log odds ratio = ln 3 = 1.098612; -ln sigmoid(1.098612) = -ln(0.75) = 0.287682
    loss = orpo_odds_ratio_loss(T([math.log(0.5)]), T([math.log(0.25)]))
    assert loss.item() == pytest.approx(0.287682, abs=1e-6)


def test_simpo():
    # beta (a_c - a_r) - gamma = 2 * (-1 - -2) - 1 = 1 -> 0.313262
    assert simpo_loss(T([-1.0]), T([-2.0]), beta=2.0, gamma=1.0).item() == pytest.approx(
        0.313262, abs=1e-6
    )
