"""GRPO-family arithmetic: advantages of hand-built groups against closed forms, the per-token
loss against TRL's ``GRPOTrainer._compute_loss`` for each of its loss types (and hand derivations
where TRL has none: k1/k2 KL, the engine weights, micro-batch normalisers), DAPO's overlong
punishment.

TRL's loss is called directly: a ``GRPOTrainer`` made with ``object.__new__`` (no model, no
generation) with the attributes ``_compute_loss`` reads set by hand, and its
``_get_per_token_logps_and_entropies`` replaced by a function returning fixed log-probs, so the
method's own arithmetic (ratio, clipping, k3 KL, aggregation) runs on fixed tensors.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from services.training.losses import grpo as g
from services.training.ppo.advantages import (
    GroupRelative,
    ReinforcePP,
    Rloo,
    StepTokens,
    critic_free,
)

SCORES = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 2.0, -1.0, 0.0, 3.0])
GROUPS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])


def _tokens(mask=None, scores=SCORES, groups=GROUPS):
    mask = torch.ones(len(scores), 3) if mask is None else mask
    zeros = torch.zeros_like(mask)
    return StepTokens(scores, zeros, None, None, mask, groups)


def _closed(values):
    return torch.tensor(values, dtype=torch.float32)


def test_grpo_group_zscore_matches_the_closed_form():
    # group 0: mean 0.5, unbiased std sqrt(1/3); group 1: std 0 -> 0; group 2: mean 1
    s0 = (1 / 3) ** 0.5
    s2 = (((1**2) + (2**2) + (1**2) + (2**2)) / 3) ** 0.5  # deviations 1,-2,-1,2
    expected = _closed(
        [0.5 / (s0 + 1e-4), -0.5 / (s0 + 1e-4), -0.5 / (s0 + 1e-4), 0.5 / (s0 + 1e-4)]
        + [0.0] * 4
        + [1 / (s2 + 1e-4), -2 / (s2 + 1e-4), -1 / (s2 + 1e-4), 2 / (s2 + 1e-4)]
    )
    adv = GroupRelative("group").estimate(_tokens(), 0.0).advantages
    assert torch.allclose(adv[:, 0], expected, atol=1e-6)
    assert torch.equal(adv[:, 0], adv[:, 2])  # one advantage per sequence, on every token


def test_grpo_batch_scaling_and_dr_grpo_without_scaling():
    means = _closed([0.5] * 4 + [0.5] * 4 + [1.0] * 4)
    batch_std = float(SCORES.std())  # unbiased over all 12
    adv = GroupRelative("batch").estimate(_tokens(), 0.0).advantages[:, 0]
    assert torch.allclose(adv, (SCORES - means) / (batch_std + 1e-4), atol=1e-6)
    dr = critic_free("dr_grpo").estimate(_tokens(), 0.0).advantages[:, 0]
    assert torch.allclose(dr, SCORES - means, atol=1e-6)
    assert (
        critic_free("grpo", scale="none")
        .estimate(_tokens(), 0.0)
        .advantages.equal(critic_free("dr_grpo").estimate(_tokens(), 0.0).advantages)
    )


def test_rloo_subtracts_the_mean_of_the_other_samples():
    # r_i - (sum - r_i)/(n - 1), written out for group 2 (2, -1, 0, 3: sum 4)
    expected_g2 = [2 - (4 - 2) / 3, -1 - (4 + 1) / 3, 0 - 4 / 3, 3 - (4 - 3) / 3]
    adv = Rloo().estimate(_tokens(), 0.0).advantages[:, 0]
    assert torch.allclose(adv[8:], _closed(expected_g2), atol=1e-6)
    assert torch.allclose(adv[:4], _closed([2 / 3, -2 / 3, -2 / 3, 2 / 3]), atol=1e-6)
    assert torch.equal(adv[4:8], torch.zeros(4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        Rloo().estimate(_tokens(scores=SCORES[:3], groups=torch.tensor([0, 0, 1])), 0.0)


def test_reinforce_pp_whitens_over_tokens_after_a_batch_or_group_baseline():
    scores = torch.tensor([1.0, 0.0, 3.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    for baseline, centred in (
        ("batch", [1 - 1.25, 0 - 1.25, 3 - 1.25, 1 - 1.25]),
        ("group", [0.5, -0.5, 1.0, -1.0]),
    ):
        # the token values: each sequence's centred score repeated over its 2, 1, 3, 1 tokens
        values = [c for c, k in zip(centred, (2, 1, 3, 1), strict=True) for _ in range(k)]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        expected = [(c - mean) / (var + 1e-8) ** 0.5 for c in centred]
        adv = ReinforcePP(baseline).estimate(_tokens(mask, scores, groups), 0.0).advantages
        assert torch.allclose(adv[:, 0], _closed(expected), atol=1e-5), baseline
        assert float(adv[1, 1]) == 0.0  # padding stays 0


def test_critic_free_estimators_need_no_values():
    for name in ("grpo", "dr_grpo", "rloo", "reinforce_pp"):
        assert critic_free(name).needs_values is False
    with pytest.raises(ValueError, match="advantage_estimator 'gae'"):
        critic_free("gae")


def test_zero_variance_groups_are_found():
    assert g.zero_variance_groups(SCORES, GROUPS).tolist() == [False, True, False]


# --- the loss against TRL -----------------------------------------------------------------------

B, T, MAX_LEN = 4, 5, 6


def _batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 2
    old = logp + (torch.rand(B, T, generator=gen, dtype=torch.float64) - 0.5) * 0.8
    ref = logp + (torch.rand(B, T, generator=gen, dtype=torch.float64) - 0.5)
    adv = torch.tensor([1.3, -0.7, 0.4, -1.1], dtype=torch.float64)
    mask = torch.tensor(
        [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float64
    )
    return logp, old, ref, adv, mask


def _trl_loss(loss_type, logp, old, ref, adv, mask, beta, eps_low, eps_high):
    from trl import GRPOTrainer

    trainer = object.__new__(GRPOTrainer)
    ident = SimpleNamespace(
        num_processes=1, sync_gradients=True,
        reduce=lambda t, reduction="sum": t, gather=lambda t: t, gather_for_metrics=lambda t: t,
    )  # fmt: skip
    trainer.__dict__.update(
        loss_type=loss_type, beta=beta, epsilon_low=eps_low, epsilon_high=eps_high,
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
        use_vllm=False, current_gradient_accumulation_steps=1, max_completion_length=MAX_LEN,
        accelerator=ident, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)), model=SimpleNamespace(training=True),
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
    )  # fmt: skip
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (
        logp,
        torch.zeros_like(logp),
        None,
    )
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long),
        "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    return trainer._compute_loss(None, inputs), trainer._metrics["train"]


TRL_EQUIVALENTS = [
    ("grpo", "seq-mean-token-mean"),
    ("bnpo", "token-mean"),
    ("dapo", "token-mean"),
    ("dr_grpo", "seq-mean-token-sum-norm"),
]


@pytest.mark.parametrize("trl_type, ours", TRL_EQUIVALENTS)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_the_loss_and_its_per_token_gradient_equal_trls(trl_type, ours, beta):
    eps_low, eps_high = 0.2, 0.28  # DAPO's clip-higher
    logp, old, ref, adv, mask = _batch()
    logp_trl = logp.clone().requires_grad_(True)
    trl_loss, trl_metrics = _trl_loss(
        trl_type, logp_trl, old, ref, adv, mask, beta, eps_low, eps_high
    )
    trl_loss.backward()

    logp_ours = logp.clone().requires_grad_(True)
    per_token, stats = g.per_token_loss(
        logp_ours, old, adv[:, None], eps_low, eps_high, ref_logprobs=ref, beta=beta,
        kl_estimator="k3",
    )  # fmt: skip
    loss = g.aggregate(per_token, mask, ours, g.normaliser(mask, ours, MAX_LEN))
    loss.backward()
    assert abs(float(loss) - float(trl_loss)) < 1e-6
    # d loss / d logp per token: the per-token loss and its weighting are the same
    assert torch.allclose(logp_ours.grad, logp_trl.grad, atol=1e-6, rtol=0)
    tokens = mask.sum()
    assert (
        abs(
            float((stats["clip_low"] * mask).sum() / tokens) - trl_metrics["clip_ratio/low_mean"][0]
        )
        < 1e-9
    )
    assert (
        abs(
            float((stats["clip_high"] * mask).sum() / tokens)
            - trl_metrics["clip_ratio/high_mean"][0]
        )
        < 1e-9
    )
    if beta:
        assert abs(float((stats["kl"] * mask).sum() / tokens) - trl_metrics["kl"][0]) < 1e-9


def test_micro_batches_sharing_the_step_normaliser_sum_to_the_whole_step_loss():
    logp, old, ref, adv, mask = _batch(1)
    for loss_type in g.LOSS_TYPES:
        denominator = g.normaliser(mask, loss_type, MAX_LEN)
        per_token, _ = g.per_token_loss(logp, old, adv[:, None], 0.2, 0.2)
        whole = g.aggregate(per_token, mask, loss_type, denominator)
        parts = sum(
            g.aggregate(per_token[rows], mask[rows], loss_type, denominator)
            for rows in (slice(0, 1), slice(1, 4))
        )
        assert abs(float(whole) - float(parts)) < 1e-12, loss_type


def test_k1_k2_kl_terms_and_engine_weights_by_hand():
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0]], dtype=torch.float64)
    assert torch.allclose(
        g.kl_term(logp, ref, "k1"), torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    )
    assert torch.allclose(
        g.kl_term(logp, ref, "k2"), torch.tensor([[0.125, 0.5]], dtype=torch.float64)
    )
    d = ref - logp
    assert torch.allclose(g.kl_term(logp, ref, "k3"), d.exp() - d - 1)
    # on-policy (ratio 1) the clipped term is -A; weights multiply it, the KL is added after
    adv = torch.tensor([[2.0]], dtype=torch.float64)
    weights = torch.tensor([[0.5, 2.0]], dtype=torch.float64)
    per_token, stats = g.per_token_loss(
        logp, logp, adv, 0.2, 0.3, weights=weights, ref_logprobs=ref, beta=0.1, kl_estimator="k1"
    )
    assert torch.allclose(per_token, torch.tensor([[-1.0 + 0.05, -4.0 - 0.1]], dtype=torch.float64))
    assert float(stats["clip_low"].sum()) == float(stats["clip_high"].sum()) == 0.0


def test_clip_higher_clips_positive_advantages_at_one_plus_epsilon_high():
    old = torch.zeros(1, 3, dtype=torch.float64)
    logp = torch.log(torch.tensor([[1.25, 1.35, 0.7]], dtype=torch.float64))
    adv = torch.tensor([[1.0, 1.0, -1.0]], dtype=torch.float64)
    per_token, stats = g.per_token_loss(logp, old, adv, 0.2, 0.28)
    # 1.25 < 1.28: unclipped; 1.35 > 1.28: clipped at 1.28; 0.7 < 0.8 with A < 0: clipped at 0.8
    assert torch.allclose(per_token, torch.tensor([[-1.25, -1.28, 0.8]], dtype=torch.float64))
    assert stats["clip_high"].tolist() == [[0.0, 1.0, 0.0]]
    assert stats["clip_low"].tolist() == [[0.0, 0.0, 1.0]]


def test_dapo_soft_overlong_punishment():
    lengths = torch.tensor([10, 12, 14, 16, 20])
    # max 16, buffer 4: none up to 12, then linear to -factor at 16
    got = g.overlong_penalty(lengths, 16, 4, 0.5)
    assert torch.allclose(got, torch.tensor([0.0, 0.0, -0.25, -0.5, -0.5]))
