"""Kahneman-Tversky optimisation recipe (``STAGE_KTO``): rated responses, no pairs needed.

Each example is a prompt and one response rated desirable or undesirable (LLaMA-Factory's
``kto_tag``; the data service's FEEDBACK examples). The policy's log-ratio against the reference
(``r``, summed over the response) is pushed above the batch's KL estimate ``z`` for desirable
responses and below it for undesirable ones: ``w_d (1 - sigmoid(beta (r - z)))`` and
``w_u (1 - sigmoid(beta (z - r)))`` (``pref_beta``, ``kto_chosen_weight``,
``kto_rejected_weight``), as TRL's ``KTOTrainer``. The reference is the loop's
(``model.reference``): the base with LoRA disabled, base + a starting SFT adapter, or a frozen
copy. The shared loop over a ``loop.feedback.FeedbackLoss``. Reads top to bottom: setup -> train
-> save.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from services.training.loop.batches import BatchSource
from services.training.loop.distributed import World
from services.training.loop.feedback import FeedbackLoss
from services.training.loop.trainer import Reporter, Trainer, TrainResult
from services.training.spec.settings import Settings


def build_trainer(
    settings: Settings, source: BatchSource, job_dir: str | Path, **kwargs
) -> Trainer:
    return Trainer(settings, source, job_dir, loss=FeedbackLoss(settings.preference), **kwargs)


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
    """Optimise ``settings.base_model`` on the rated responses of ``source``."""
    trainer = build_trainer(
        settings, source, job_dir, output_dir=output_dir, world=world, reporter=reporter,
        should_stop=should_stop,
    )  # fmt: skip
    trainer.setup()  # policy (+ LoRA), reference, optimizer, schedule, engine, resume state
    result = trainer.train()
    if result.state == "SUCCEEDED":
        trainer.evaluate_if_stale()
    trainer.save_outputs()
    return result
