"""Supervised fine-tuning recipe (``STAGE_SFT``): loss on response tokens only.

The data service renders each conversation with its chat template and sets labels to -100 on
everything but the assistant turns (every assistant turn of a multi-turn conversation, unless
``mask_history``), then packs several conversations per row. This recipe trains on exactly those
labels; ``collate`` isolates attention per packed conversation (block-diagonal mask or flash-attn
varlen), so a packed row trains exactly as its conversations would one by one. The loss is the
mean over the response tokens of the optimizer step. Reads top to bottom: setup -> train -> save.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from services.training.loop.batches import BatchSource
from services.training.loop.distributed import World
from services.training.loop.tokens import TokenLoss
from services.training.loop.trainer import Reporter, Trainer, TrainResult
from services.training.spec.settings import Settings


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
    """Fine-tune ``settings.base_model`` on the conversations of ``source``."""
    trainer = Trainer(
        settings,
        source,
        job_dir,
        loss=TokenLoss(train_all_tokens=False),  # the rows' labels: -100 outside assistant turns
        output_dir=output_dir,
        world=world,
        reporter=reporter,
        should_stop=should_stop,
    )
    trainer.setup()  # model (+ LoRA), optimizer, schedule, engine, resume state
    result = trainer.train()  # steps, logging, eval, checkpoints
    if result.state == "SUCCEEDED":
        trainer.evaluate_if_stale()  # eval loss and benchmark of the final model
    trainer.save_outputs()  # final adapter or model, loss curve
    return result
