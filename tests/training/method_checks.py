"""Shared proof of a fine-tuning method on the tiny model: a repeated batch, exact parameter moves.

``train_on_repeated_batch`` trains a few steps on one batch seen again every step and returns the
trainer, the loss history and the weights before training, so a test can assert that the loss
fell, that exactly the expected parameters moved, and that the rest are bit-identical.
"""

from __future__ import annotations

import torch
from synthetic import digit_task, pack, task_rows

from services.training.loop.batches import InMemorySource
from services.training.loop.tokens import TokenLoss
from services.training.loop.trainer import Trainer


def repeated_batch_rows(tokenizer) -> list:
    """Two packed rows: one micro-batch of ``batch_rows=2``, the same one every step."""
    return pack(task_rows(tokenizer, digit_task(3, 12)), cutoff=128)[:2]


def train_on_repeated_batch(settings, rows, job_dir) -> tuple[Trainer, list[float], dict]:
    trainer = Trainer(
        settings, InMemorySource(rows), job_dir, loss=TokenLoss(train_all_tokens=False)
    )
    trainer.setup()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    losses = [loss for _, loss in trainer.history]
    return trainer, losses, before


def moved(model: torch.nn.Module, before: dict) -> set[str]:
    """Names of parameters whose values differ from ``before`` (bitwise)."""
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


@torch.no_grad()
def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(input_ids=ids).logits
