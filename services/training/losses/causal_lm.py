"""Loss functions of the causal-LM recipes: pure functions over tensors.

The recipes normalise by the number of trained tokens of the whole optimizer step (all
micro-batches, all ranks), not per micro-batch, so that gradient accumulation and data
parallelism give the same gradient as one big batch. That is why the primitive here returns a
*sum* and a *count*; ``token_mean`` divides them.

``chunked_causal_lm_loss_sum`` is the same loss computed from the last hidden states instead of
the logits: the trained positions are gathered first (prompt and padding positions never reach
the LM head), and the head + cross-entropy run over chunks of positions, each chunk under
activation checkpointing when there are several, so the full (B, T, V) logits and their float32
copy never exist at once (the backward recomputes one chunk's logits at a time). Liger-Kernel's
fused linear cross-entropy does the same with Triton kernels, on GPUs only; this is plain PyTorch
and runs anywhere. It knows nothing about models: the caller passes the head as a function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
LOGITS_PER_CHUNK = 1 << 23  # elements of one chunk's logits: 32 MiB in float32


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


def chunk_rows(vocab_size: int) -> int:
    """Positions per chunk so that one chunk's logits hold about ``LOGITS_PER_CHUNK`` elements."""
    return max(64, LOGITS_PER_CHUNK // max(vocab_size, 1))


def _chunk_loss_sum(
    head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    logits = head(hidden)  # (N, V), the head's dtype
    return F.cross_entropy(logits.float(), labels, reduction="sum")  # ()


def chunked_causal_lm_loss_sum(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    shift_labels: torch.Tensor,
    rows_per_chunk: int,
) -> tuple[torch.Tensor, int]:
    """``causal_lm_loss_sum(head(hidden), shift_labels)`` without materialising the logits.

    hidden: (B, T, H) last hidden states (what the LM head reads); head: (N, H) -> (N, V);
    shift_labels: (B, T) with -100 where no label. Returns (scalar float32 tensor, int).
    """
    trained = shift_labels != IGNORE_INDEX  # (B, T)
    count = int(trained.sum())
    positions = hidden[trained]  # (N, H): trained positions only
    labels = shift_labels[trained]  # (N,)
    if count == 0:
        return positions.float().sum(), 0  # 0 with a gradient path
    chunks = list(zip(positions.split(rows_per_chunk), labels.split(rows_per_chunk), strict=True))
    if len(chunks) == 1:  # one chunk: recomputing it would save nothing at the peak
        return _chunk_loss_sum(head, positions, labels), count
    total = positions.new_zeros((), dtype=torch.float32)
    for h, y in chunks:  # (n, H), (n,)
        total = total + checkpoint(_chunk_loss_sum, head, h, y, use_reentrant=False)
    return total, count  # (), int
