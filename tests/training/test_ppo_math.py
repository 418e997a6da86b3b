"""PPO arithmetic against hand derivations (TRL no longer ships a PPO to compare with)."""

from __future__ import annotations

import math

import pytest
import torch

from services.training.losses.ppo import (
    KlController,
    gae,
    kl_penalised_rewards,
    masked_whiten,
    policy_loss,
    value_loss,
)


def test_kl_penalty_per_token_and_score_at_the_last_real_token():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # second sequence: 2 tokens
    rewards, kl = kl_penalised_rewards(torch.tensor([10.0, 20.0]), logp, ref, mask, kl_coef=0.1)
    assert kl.tolist() == [[0.5, 0.0, -1.0], [1.0, 0.0, 0.0]]
    expected = [[-0.05, 0.0, 0.1 + 10.0], [-0.1, 20.0, 0.0]]  # padding gets nothing
    assert torch.allclose(rewards, torch.tensor(expected))


def test_gae_matches_the_recursion_written_out():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, mask, gamma, lam)
    # sequence 0: deltas with V(after last) = 0
    d2 = 1.0 - 0.3
    d1 = 0.0 + gamma * 0.3 - 0.2
    d0 = 0.0 + gamma * 0.2 - 0.1
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    # sequence 1 ends after 2 tokens: the padded value 7.0 must not leak in
    e1 = 2.0 - 0.5
    e0 = 0.5 + gamma * 0.5 - 0.4
    b1 = e1
    b0 = e0 + gamma * lam * b1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2], [b0, b1, 0.0]]))
    assert torch.allclose(ret, adv + values * mask)


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    values = torch.tensor([[0.5, -1.0, 2.0, 0.0]])
    mask = torch.ones(1, 4)
    adv, ret = gae(rewards, values, mask, 1.0, 1.0)
    to_go = torch.tensor([[10.0, 9.0, 7.0, 4.0]])
    assert torch.allclose(ret, to_go)
    assert torch.allclose(adv, to_go - values)


def test_whiten_uses_masked_positions_only():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    out = masked_whiten(values, mask)
    real = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    expected = (real - real.mean()) / real.std(unbiased=True)
    assert torch.allclose(out[mask.bool()], expected, atol=1e-6)
    assert out[0, 2] == 0.0


def test_policy_loss_clips_the_ratio_on_the_side_that_helps():
    old = torch.zeros(1, 4)
    # ratios e^0.5 = 1.65 and e^-0.5 = 0.61, with positive and negative advantages
    new = torch.tensor([[0.5, 0.5, -0.5, -0.5]])
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, stats = policy_loss(new, old, adv, mask, clip_range=0.2)
    r_hi, r_lo = math.exp(0.5), math.exp(-0.5)
    terms = [
        max(-1.0 * r_hi, -1.0 * 1.2),  # A>0, ratio too high: clipped at 1.2
        max(1.0 * r_hi, 1.0 * 1.2),  # A<0, ratio high: unclipped (pessimistic)
        max(-1.0 * r_lo, -1.0 * 0.8),  # A>0, ratio low: unclipped
        max(1.0 * r_lo, 1.0 * 0.8),  # A<0, ratio too low: clipped at 0.8
    ]
    assert float(loss) == pytest.approx(sum(terms) / 4, rel=1e-6)
    assert stats["clipfrac"] == pytest.approx(0.5)
    weighted, _ = policy_loss(new, old, adv, mask, 0.2, weights=torch.full((1, 4), 0.5))
    assert float(weighted) == pytest.approx(float(loss) / 2, rel=1e-6)


def test_policy_gradient_raises_the_logprob_of_advantaged_tokens():
    new = torch.zeros(1, 2, requires_grad=True)
    loss, _ = policy_loss(
        new, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2), 0.2
    )
    loss.backward()
    assert new.grad[0, 0] < 0 < new.grad[0, 1]  # descent raises token 0, lowers token 1


def test_value_loss_is_the_worse_of_clipped_and_unclipped():
    old = torch.tensor([[0.0, 0.0]])
    values = torch.tensor([[1.0, 0.1]])
    returns = torch.tensor([[0.0, 2.0]])
    loss, stats = value_loss(values, old, returns, torch.ones(1, 2), clip_range=0.2)
    # token 0: unclipped (1-0)^2 = 1, clipped (0.2-0)^2 = 0.04 -> 1
    # token 1: unclipped (0.1-2)^2 = 3.61, clipped (0.1-2)^2 (inside the range) -> 3.61
    assert float(loss) == pytest.approx(0.5 * (1.0 + 3.61) / 2, rel=1e-6)
    assert stats["clipfrac"] == 0.0


def test_adaptive_kl_controller_moves_towards_the_target():
    fixed = KlController(0.2)
    fixed.update(100.0, 64)
    assert fixed.coef == 0.2
    up = KlController(0.2, adaptive=True, target=1.0, horizon=100)
    up.update(5.0, 10)  # error clipped to +0.2
    assert up.coef == pytest.approx(0.2 * (1 + 0.2 * 10 / 100))
    down = KlController(0.2, adaptive=True, target=1.0, horizon=100)
    down.update(0.9, 10)  # error -0.1
    assert down.coef == pytest.approx(0.2 * (1 - 0.1 * 10 / 100))


def test_selected_logprobs_equal_log_softmax_gathered():
    from services.training.ppo.batch import selected_logprobs

    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11) * 4
    tokens = torch.randint(0, 11, (3, 5))
    expected = torch.log_softmax(logits, -1).gather(2, tokens[..., None]).squeeze(-1)
    assert torch.allclose(selected_logprobs(logits, tokens), expected, atol=1e-6)
    half = selected_logprobs(logits.bfloat16(), tokens)
    assert half.dtype == torch.float32
    assert torch.allclose(half, expected, atol=0.1)
