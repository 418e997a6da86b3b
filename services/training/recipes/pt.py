"""Pre-training recipe (``STAGE_PT``): next-token loss over every token of packed rows.

The rows' labels are ignored: every token is a target, except that the last token of a packed
example never predicts the first token of the next (``collate`` shifts within segments), and
attention never crosses examples. Reads top to bottom: setup -> train -> save -> cleanup.
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
    """Train ``settings.base_model`` on ``source`` and write checkpoints and outputs."""
    trainer = Trainer(
        settings,
        source,
        job_dir,
        loss=TokenLoss(train_all_tokens=True),  # causal LM over all tokens
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
