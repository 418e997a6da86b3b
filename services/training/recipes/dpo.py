"""Direct preference optimisation recipe (``STAGE_DPO``): DPO, IPO, hinge, ORPO, SimPO, + ftx.

Per pair, the policy's log-probability of each response is summed over its response tokens
(labels != -100), chosen and rejected in one concatenated forward pass (``loop.pairs``).

- ``sigmoid`` / ``ipo`` / ``hinge`` compare with a reference model: with LoRA the same model with
  its adapters disabled (no second copy in memory), with full fine-tuning a frozen copy of the
  base loaded once. The reference forward runs without gradients in eval mode. IPO's squared loss
  takes the log-ratios averaged over each response's tokens (as TRL and LLaMA-Factory do; summed,
  its target margin ``1 / (2 beta)`` would depend on the response length).
- ``orpo`` and ``simpo`` are reference-free and work on length-averaged log-probs; ORPO adds the
  chosen NLL to ``beta`` times its odds-ratio term.
- ``pref_ftx`` (DPO-ftx) adds ``pref_ftx`` times the SFT loss of the chosen response (its token-mean
  NLL) to every pair's loss, the mix that limits forgetting.

The loss of a step is the mean over its pairs: the shared loop (``loop.trainer``) with a
``PairLoss`` over ``DpoPairs``, which says whether it needs the reference (the loop builds it:
``model.reference``). The formulas are ``losses.preference``'s. Reads top to bottom: setup ->
train -> save.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from services.training.loop.batches import BatchSource
from services.training.loop.distributed import World
from services.training.loop.pairs import PairInputs, PairLoss
from services.training.loop.step_loss import StepModels
from services.training.loop.trainer import Reporter, Trainer, TrainResult
from services.training.losses.preference import dpo_loss, orpo_odds_ratio_loss, simpo_loss
from services.training.spec.settings import PreferenceSettings, Settings

REFERENCE_FREE = ("orpo", "simpo")


class DpoPairs:
    """The DPO family's per-pair losses (a ``PairObjective``)."""

    def __init__(self, preference: PreferenceSettings) -> None:
        self.preference = preference
        self.needs_reference = preference.loss_type not in REFERENCE_FREE

    def policy_logps(self, models: StepModels, x: PairInputs) -> tuple[torch.Tensor, torch.Tensor]:
        logits = models.module(**x.inputs.model_kwargs()).logits  # (N, T, V)
        return x.response_logps(logits)  # (2B,), (2B,)

    @torch.no_grad()
    def reference_logps(self, models: StepModels, x: PairInputs) -> torch.Tensor:
        logits = models.reference.logits(**x.inputs.model_kwargs())  # (N, T, V)
        return x.response_logps(logits)[0]  # (2B,)

    def pair_losses(
        self, models: StepModels, x: PairInputs
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.preference
        b = x.num_pairs
        logps, counts = self.policy_logps(models, x)  # (2B,), (2B,)
        average = logps / counts.clamp(min=1)  # (2B,)
        if p.loss_type == "orpo":
            losses = -average[:b] + p.beta * orpo_odds_ratio_loss(average[:b], average[b:])
            chosen, rejected = p.beta * average[:b], p.beta * average[b:]
        elif p.loss_type == "simpo":
            losses = simpo_loss(average[:b], average[b:], p.beta, p.simpo_gamma)
            chosen, rejected = p.beta * average[:b], p.beta * average[b:]
        else:
            ref = self.reference_logps(models, x)  # (2B,)
            if p.loss_type == "ipo":  # on length-averaged log-ratios, as TRL and LLaMA-Factory
                logps, ref = average, ref / counts.clamp(min=1)
            out = dpo_loss(
                logps[:b], logps[b:], ref[:b], ref[b:], p.beta, p.loss_type, p.label_smoothing
            )
            losses, chosen, rejected = out.losses, out.chosen_rewards, out.rejected_rewards
        if p.pref_ftx > 0:
            losses = losses + p.pref_ftx * -average[:b]  # SFT loss of the chosen response
        return losses, chosen.detach(), rejected.detach()  # (B,) each


def build_trainer(
    settings: Settings, source: BatchSource, job_dir: str | Path, **kwargs
) -> Trainer:
    """The shared loop over ``DpoPairs`` (the policy: the base, with LoRA when asked)."""
    loss = PairLoss(DpoPairs(settings.preference), settings.recipe)
    return Trainer(settings, source, job_dir, loss=loss, **kwargs)


def run(
    settings: Settings,
    source: BatchSource,
    job_dir: str | Path,
    *,
    output_dir: str | Path | None = None,
    world: World | None = None,
    reporter: Reporter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> TrainResult:
    """Optimise ``settings.base_model`` on the preference pairs of ``source``."""
    trainer = build_trainer(
        settings,
        source,
        job_dir,
        output_dir=output_dir,
        world=world,
        reporter=reporter,
        should_stop=should_stop,
    )
    trainer.setup()  # policy (+ LoRA), reference, optimizer, schedule, engine, resume state
    if trainer.has_eval and trainer.step == 0:
        trainer.evaluate(log=True)  # accuracy and margin before any update (margin 0: no change)
    result = trainer.train()  # steps, logging, eval (+ accuracy, margin), checkpoints
    if result.state == "SUCCEEDED":
        trainer.evaluate_if_stale()  # held-out accuracy and margin of the final model
    trainer.save_outputs()  # final adapter or model, loss curve
    return result
