"""Direct preference optimisation recipe (``STAGE_DPO``): DPO, IPO, hinge, ORPO, SimPO, + ftx.

Per pair, the policy's log-probability of each response is summed over its response tokens
(labels != -100), chosen and rejected in one concatenated forward pass (``preference``).

- ``sigmoid`` / ``ipo`` / ``hinge`` compare with a reference model: with LoRA the same model with
  its adapters disabled (no second copy in memory), with full fine-tuning a frozen copy of the
  base loaded once. The reference forward runs without gradients in eval mode. IPO's squared loss
  takes the log-ratios averaged over each response's tokens (as TRL and LLaMA-Factory do; summed,
  its target margin ``1 / (2 beta)`` would depend on the response length).
- ``orpo`` and ``simpo`` are reference-free and work on length-averaged log-probs; ORPO adds the
  chosen NLL to ``beta`` times its odds-ratio term.
- ``pref_ftx`` (DPO-ftx) adds ``pref_ftx`` times the SFT loss of the chosen response (its token-mean
  NLL) to every pair's loss, the mix that limits forgetting.

The loss of a step is the mean over its pairs. The formulas are ``preference_losses``'s. Reads top
to bottom: setup -> train -> save.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from services.training.loop.batches import BatchSource
from services.training.loop.distributed import World
from services.training.loop.pairs import PairInputs, PreferenceTrainer
from services.training.loop.trainer import Reporter, TrainResult
from services.training.losses.preference import dpo_loss, orpo_odds_ratio_loss, simpo_loss
from services.training.model import load as models
from services.training.spec.settings import Settings

REFERENCE_FREE = ("orpo", "simpo")


class DpoTrainer(PreferenceTrainer):
    # the policy is ``Trainer.build_model``'s: the base, with LoRA when asked

    def after_setup(self) -> None:
        s = self.settings
        self.reference: torch.nn.Module | None = None
        if s.preference.loss_type not in REFERENCE_FREE and s.method != "lora":
            reference = models.load_base(s, self.device)  # the frozen copy full FT needs
            reference.eval().requires_grad_(False)
            self.reference = reference

    def policy_logps(self, x: PairInputs) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.engine.module(**x.inputs.model_kwargs()).logits  # (N, T, V)
        return x.response_logps(logits)  # (2B,), (2B,)

    @torch.no_grad()
    def reference_logps(self, x: PairInputs) -> torch.Tensor:
        if self.reference is not None:
            return x.response_logps(self.reference(**x.inputs.model_kwargs()).logits)[0]
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():  # LoRA: the base is the reference
                logits = self.model(**x.inputs.model_kwargs()).logits
        finally:
            self.model.train(was_training)
        return x.response_logps(logits)[0]  # (2B,)

    def pair_losses(self, x: PairInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.settings.preference
        b = x.num_pairs
        logps, counts = self.policy_logps(x)  # (2B,), (2B,)
        average = logps / counts.clamp(min=1)  # (2B,)
        if p.loss_type == "orpo":
            losses = -average[:b] + p.beta * orpo_odds_ratio_loss(average[:b], average[b:])
            chosen, rejected = p.beta * average[:b], p.beta * average[b:]
        elif p.loss_type == "simpo":
            losses = simpo_loss(average[:b], average[b:], p.beta, p.simpo_gamma)
            chosen, rejected = p.beta * average[:b], p.beta * average[b:]
        else:
            ref = self.reference_logps(x)  # (2B,)
            if p.loss_type == "ipo":  # on length-averaged log-ratios, as TRL and LLaMA-Factory
                logps, ref = average, ref / counts.clamp(min=1)
            out = dpo_loss(
                logps[:b], logps[b:], ref[:b], ref[b:], p.beta, p.loss_type, p.label_smoothing
            )
            losses, chosen, rejected = out.losses, out.chosen_rewards, out.rejected_rewards
        if p.pref_ftx > 0:
            losses = losses + p.pref_ftx * -average[:b]  # SFT loss of the chosen response
        return losses, chosen.detach(), rejected.detach()  # (B,) each


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
    trainer = DpoTrainer(
        settings,
        source,
        job_dir,
        output_dir=output_dir,
        world=world,
        reporter=reporter,
        should_stop=should_stop,
    )
    trainer.setup()  # policy (+ LoRA), reference, optimizer, schedule, engine, resume state
    result = trainer.train()  # steps, logging, eval (+ accuracy, margin), checkpoints
    if result.state == "SUCCEEDED":
        trainer.evaluate_if_stale()  # held-out accuracy and margin of the final model
    trainer.save_outputs()  # final adapter or model, loss curve
    return result
