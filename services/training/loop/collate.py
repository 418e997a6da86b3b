"""Rows of a ``data.v1.Batch`` -> model inputs, with attention kept inside each packed example.

A ``TokenRow`` is unpadded and may hold several examples (segments) marked by ``cu_seqlens``;
``position_ids`` restart at 0 in each segment and labels are unshifted with -100 where no loss is
taken. This module turns a list of rows into tensors for one attention implementation:

- ``eager`` (and ``sdpa_mask``): rows padded to the longest (pad id, position 0), and an explicit
  4-D block-diagonal causal mask built from the segments: a token sees earlier tokens of its own
  example only. ``sdpa_mask`` takes it as booleans (True = attend), ``eager`` as an additive float
  mask. Padding tokens form segments of their own, so no query row is fully masked (no NaN).
  Where the model's layers slide (``model.attention.mask_plan``), a key is also hidden from a
  query ``window`` or more tokens after it: one windowed mask when every layer slides, or one
  mask per layer type (``{"full_attention": ..., "sliding_attention": ...}``).
- ``sdpa`` and ``flash_attention_2``: no padding at all: every row is concatenated into one row
  and the segment boundaries go to the attention kernel as ``cu_seq_lens_q/k`` and
  ``max_length_q/k`` (flash-attn's varlen kernel, or ``models.varlen_sdpa_attention``).

Labels are shifted here, once: ``shift_labels[t]`` is the label of token ``t + 1`` of the same
segment, and -100 at the last token of a segment (which must not predict the next example's first
token) and on padding. This module knows nothing about models or losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from llamafleet.data.v1 import data_pb2

from services.training.model.attention import FULL, SLIDING, MaskPlan

IGNORE_INDEX = -100


@dataclass
class ModelInputs:
    """Tensors for one micro-batch and its token counts."""

    input_ids: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T)
    shift_labels: torch.Tensor  # (B, T): label of the next token, -100 where none
    # (B, 1, T, T) for eager/sdpa_mask, or one per layer type; None for the varlen kernels
    attention_mask: torch.Tensor | dict[str, torch.Tensor] | None
    flash_kwargs: dict = field(default_factory=dict)  # cu_seq_lens_q/k, max_length_q/k
    num_tokens: int = 0  # tokens, padding excluded
    num_trained: int = 0  # positions with a shift label
    token_mask: torch.Tensor | None = None  # (B, T) True on real tokens; None: no padding

    def to(self, device: torch.device | str) -> ModelInputs:
        def move(t):
            if isinstance(t, dict):
                return {k: move(v) for k, v in t.items()}
            return t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t

        return ModelInputs(
            move(self.input_ids),
            move(self.position_ids),
            move(self.shift_labels),
            move(self.attention_mask),
            {k: move(v) for k, v in self.flash_kwargs.items()},
            self.num_tokens,
            self.num_trained,
            move(self.token_mask),
        )

    def model_kwargs(self) -> dict:
        """Keyword arguments for ``model(...)`` (labels excluded: the recipe computes the loss)."""
        kwargs = {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "attention_mask": self.attention_mask,
            "use_cache": False,
        }
        kwargs.update(self.flash_kwargs)
        return kwargs


def check_row(row: data_pb2.TokenRow, where: str = "row") -> None:
    """Raise ``ValueError`` naming the field when a row breaks the data contract."""
    n = len(row.input_ids)
    if n == 0:
        raise ValueError(f"{where}: empty input_ids")
    if len(row.labels) != n or len(row.position_ids) != n:
        raise ValueError(f"{where}: labels/position_ids length differs from input_ids ({n})")
    cu = list(row.cu_seqlens) or [0, n]
    if cu[0] != 0 or cu[-1] != n or any(b <= a for a, b in zip(cu, cu[1:], strict=False)):
        raise ValueError(f"{where}: cu_seqlens {cu[:8]}... must rise strictly from 0 to {n}")


def row_shift_labels(labels: Sequence[int], cu_seqlens: Sequence[int]) -> list[int]:
    """Labels of the next token within each segment; -100 at each segment's last token."""
    shifted = list(labels[1:]) + [IGNORE_INDEX]
    for end in cu_seqlens[1:]:
        shifted[end - 1] = IGNORE_INDEX
    return shifted


def segment_ids(cu_seqlens: Sequence[int], length: int) -> list[int]:
    """Segment index per token of a row padded to ``length``; each pad token its own segment."""
    ids = []
    for index, (start, end) in enumerate(zip(cu_seqlens, cu_seqlens[1:], strict=False)):
        ids.extend([index] * (end - start))
    first_pad = len(cu_seqlens)  # past every real segment
    ids.extend(range(first_pad, first_pad + length - len(ids)))
    return ids


def block_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """(B, T) segment ids -> (B, 1, T, T) bool: query q sees key k iff same segment and k <= q."""
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    same = segments[:, :, None] == segments[:, None, :]  # (B, T, T)
    return (same & causal)[:, None]


def windowed(allowed: torch.Tensor, window: int) -> torch.Tensor:
    """``allowed`` (B, 1, T, T) with keys ``window`` or more positions before the query hidden."""
    length = allowed.shape[-1]
    q = torch.arange(length)[:, None]
    k = torch.arange(length)[None, :]
    return allowed & (q - k < window)


def collate(
    rows: Sequence[data_pb2.TokenRow],
    *,
    pad_id: int,
    attention: str = "sdpa",
    train_all_tokens: bool = False,
    mask_dtype: torch.dtype = torch.float32,
    masks: MaskPlan = MaskPlan(),  # noqa: B008 (frozen)
) -> ModelInputs:
    """Model inputs for ``rows``. ``train_all_tokens`` ignores the rows' labels and trains every
    token (pre-training); ``mask_dtype`` is the dtype of eager's additive mask; ``masks`` says
    which masks the model's layers need (sliding windows)."""
    if not rows:
        raise ValueError("an empty batch has no rows")
    for i, row in enumerate(rows):
        check_row(row, f"row {i}")
    cus = [list(row.cu_seqlens) or [0, len(row.input_ids)] for row in rows]
    labels = [list(r.input_ids) if train_all_tokens else list(r.labels) for r in rows]
    shifted = [row_shift_labels(lab, cu) for lab, cu in zip(labels, cus, strict=True)]
    num_tokens = sum(len(r.input_ids) for r in rows)
    num_trained = sum(sum(1 for x in s if x != IGNORE_INDEX) for s in shifted)

    if attention in ("flash_attention_2", "sdpa"):
        input_ids = torch.tensor([[t for r in rows for t in r.input_ids]])
        position_ids = torch.tensor([[p for r in rows for p in r.position_ids]])
        shift = torch.tensor([[x for s in shifted for x in s]])
        bounds, offset = [0], 0
        for cu in cus:
            bounds.extend(offset + b for b in cu[1:])
            offset += cu[-1]
        cu_seq = torch.tensor(bounds, dtype=torch.int32)
        longest = int((cu_seq[1:] - cu_seq[:-1]).max())
        flash = {
            "cu_seq_lens_q": cu_seq,
            "cu_seq_lens_k": cu_seq,
            "max_length_q": longest,
            "max_length_k": longest,
        }
        return ModelInputs(input_ids, position_ids, shift, None, flash, num_tokens, num_trained)

    length = max(len(r.input_ids) for r in rows)
    batch = len(rows)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((batch, length), dtype=torch.long)
    shift = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    segments = torch.empty((batch, length), dtype=torch.long)
    real = torch.zeros((batch, length), dtype=torch.bool)
    for i, (row, cu, s) in enumerate(zip(rows, cus, shifted, strict=True)):
        n = len(row.input_ids)
        real[i, :n] = True
        input_ids[i, :n] = torch.tensor(row.input_ids)
        position_ids[i, :n] = torch.tensor(row.position_ids)
        shift[i, :n] = torch.tensor(s)
        segments[i] = torch.tensor(segment_ids(cu, length))
    allowed = block_causal_mask(segments)

    def as_mask(bools: torch.Tensor) -> torch.Tensor:
        if attention != "eager":
            return bools
        additive = torch.zeros(bools.shape, dtype=mask_dtype)
        return additive.masked_fill_(~bools, torch.finfo(mask_dtype).min)

    if masks.window is None:
        mask = as_mask(allowed)
    elif masks.by_layer_type:
        mask = {FULL: as_mask(allowed), SLIDING: as_mask(windowed(allowed, masks.window))}
    else:
        mask = as_mask(windowed(allowed, masks.window))
    return ModelInputs(input_ids, position_ids, shift, mask, {}, num_tokens, num_trained, real)
