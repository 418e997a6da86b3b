"""Our preference losses against TRL 1.16's own implementations, on the same log-probs.

TRL is the independent reference. Its loss code lives in trainer methods, so they are called
unbound with a stand-in ``self`` carrying only the attributes they read:

- ``CPOTrainer.cpo_loss`` (``trl.experimental.cpo``) computes, on the "logits" it is given,
  ``sigmoid`` with label smoothing, ``hinge``, ``ipo`` and ``simpo``. Given the DPO log-ratios
  ``log pi(y) - log ref(y)`` as its "policy log-probs" it is exactly the reference-based DPO
  family (CPO is DPO with the reference dropped), so it checks ``dpo_loss`` including the
  label-smoothed (conservative) form that TRL's ``DPOTrainer`` no longer offers.
- ``ORPOTrainer.odds_ratio_loss`` (``trl.experimental.orpo``) returns ``beta * log sigmoid(log
  odds ratio)`` per pair; ours is ``-log sigmoid(...)`` (the recipe multiplies by beta).

The recipe-level comparison (model, reference, padding, the concatenated forward) against
``DPOTrainer.compute_loss`` is ``test_dpo.test_dpo_loss_equals_trl_dpo_trainer``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from services.training.losses.preference import dpo_loss, orpo_odds_ratio_loss, simpo_loss

cpo = pytest.importorskip("trl.experimental.cpo")
orpo = pytest.importorskip("trl.experimental.orpo")

TOL = 1e-6  # float32, same operations up to reordering


def trl_self(**fields) -> SimpleNamespace:
    fields.setdefault("label_smoothing", 0.0)
    fields.setdefault("simpo_gamma", 0.5)
    return SimpleNamespace(alpha=0.0, accelerator=SimpleNamespace(device="cpu"), **fields)


@pytest.fixture
def logps():
    """Summed response log-probs of 16 pairs: policy and reference, chosen and rejected."""
    g = torch.Generator().manual_seed(0)
    pc, pr = -20 * torch.rand(16, generator=g), -20 * torch.rand(16, generator=g)
    rc = pc + torch.randn(16, generator=g)
    rr = pr + torch.randn(16, generator=g)
    return pc, pr, rc, rr


@pytest.mark.parametrize(
    ("loss_type", "beta", "smoothing"),
    [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.2), ("hinge", 0.3, 0.0), ("ipo", 0.1, 0.0)],
)
def test_dpo_family_equals_trl(logps, loss_type, beta, smoothing):
    pc, pr, rc, rr = logps
    ours = dpo_loss(pc, pr, rc, rr, beta, loss_type, label_smoothing=smoothing)
    theirs, _, _ = cpo.CPOTrainer.cpo_loss(
        trl_self(beta=beta, loss_type=loss_type, label_smoothing=smoothing), pc - rc, pr - rr
    )
    assert (theirs.abs() > 1e-3).sum() >= 8  # a non-trivial batch
    torch.testing.assert_close(ours.losses, theirs, rtol=0, atol=TOL)
    # TRL's rewards on the log-ratios are beta * (log pi - log ref), ours too
    _, chosen, rejected = cpo.CPOTrainer.cpo_loss(
        trl_self(beta=beta, loss_type=loss_type), pc - rc, pr - rr
    )
    torch.testing.assert_close(ours.chosen_rewards, chosen, rtol=0, atol=TOL)
    torch.testing.assert_close(ours.rejected_rewards, rejected, rtol=0, atol=TOL)


@pytest.mark.parametrize(("beta", "gamma"), [(2.0, 0.5), (10.0, 1.4)])
def test_simpo_equals_trl(logps, beta, gamma):
    pc, pr, _, _ = logps
    chosen_avg, rejected_avg = pc / 7, pr / 5  # length-averaged
    theirs, _, _ = cpo.CPOTrainer.cpo_loss(
        trl_self(beta=beta, loss_type="simpo", simpo_gamma=gamma), chosen_avg, rejected_avg
    )
    ours = simpo_loss(chosen_avg, rejected_avg, beta, gamma)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOL)


def test_orpo_odds_ratio_equals_trl_including_confident_responses():
    """Averages from very unlikely to almost certain: ``log(1 - e^a)`` for ``a`` near 0 needs
    the stable form (``log(-expm1(a))``); naively ``exp(-1e-8)`` rounds to 1 in float32."""
    chosen = torch.tensor([-3.0, -0.7, -0.2, -1e-3, -1e-8, -5.0, -1e-6])
    rejected = torch.tensor([-2.0, -0.9, -1e-8, -0.5, -4.0, -1e-7, -2e-6])
    beta = 0.25
    theirs, _, _, _, _ = orpo.ORPOTrainer.odds_ratio_loss(trl_self(beta=beta), chosen, rejected)
    ours = orpo_odds_ratio_loss(chosen, rejected)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(beta * ours, -theirs, rtol=1e-5, atol=1e-6)
