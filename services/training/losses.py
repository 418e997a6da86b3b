"""Loss functions of the causal-LM recipes: pure functions over tensors.

The recipes normalise by the number of trained tokens of the whole optimizer step (all
micro-batches, all ranks), not per micro-batch, so that gradient accumulation and data
parallelism give the same gradient as one big batch. That is why the primitive here returns a
*sum* and a *count*; ``token_mean`` divides them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_losses(logits: torch.Tensor, shift_labels: torch.Tensor) -> torch.Tensor:
    """Per-position cross-entropy (nats), 0 where ``shift_labels`` is -100.

    logits: (B, T, V), any float dtype (upcast to float32 here); shift_labels: (B, T) with the id
    of the next token or -100. Returns (B, T) float32.
    """
    vocab = logits.shape[-1]
    losses = F.cross_entropy(
        logits.float().reshape(-1, vocab),  # (B*T, V)
        shift_labels.reshape(-1),  # (B*T,)
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )  # (B*T,)
    return losses.view(shift_labels.shape)  # (B, T)


def causal_lm_loss_sum(
    logits: torch.Tensor, shift_labels: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Summed next-token loss over trained positions, and how many there were.

    logits: (B, T, V); shift_labels: (B, T). Returns (scalar float32 tensor, int).
    """
    count = int((shift_labels != IGNORE_INDEX).sum())
    return token_losses(logits, shift_labels).sum(), count  # (), int


def token_mean(loss_sum: torch.Tensor, count: int) -> torch.Tensor:
    """Mean loss per trained token; 0 (with a gradient path) when there are none."""
    return loss_sum / max(count, 1)
