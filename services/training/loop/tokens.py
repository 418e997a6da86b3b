"""``TokenLoss``: the next-token loss of the ``pt`` and ``sft`` recipes, one unit per trained token.

It reads a batch's packed ``rows`` (``collate``: attention kept inside each example) and sums the
cross-entropy over the trained positions: every token for ``pt`` (``train_all_tokens``), the
rows' labels for ``sft``. The model returns its last hidden states (the LM head runs on no
position inside it) and ``losses.causal_lm.chunked_causal_lm_loss_sum`` applies the head chunk by
chunk on the trained positions only; a model whose logits are more than ``lm_head(hidden)`` falls
back to full logits. Needs no reference model.
"""

from __future__ import annotations

import logging

import torch
from llamafleet.data.v1 import data_pb2

from services.training.loop.collate import ModelInputs, collate
from services.training.loop.step_loss import Layout, StepModels
from services.training.losses.causal_lm import causal_lm_loss_sum, chunked_causal_lm_loss_sum
from services.training.model.load import split_lm_head

logger = logging.getLogger(__name__)


class TokenLoss:
    needs_reference = False
    metrics: tuple[str, ...] = ()

    def __init__(self, train_all_tokens: bool) -> None:
        self.train_all_tokens = train_all_tokens
        self.head: torch.nn.Module | None = None  # the LM head split off, or None
        self.chunk_rows = 0  # positions per loss chunk
        self._split_from: torch.nn.Module | None = None

    def collate(self, batch: data_pb2.Batch, layout: Layout) -> ModelInputs:
        return collate(
            batch.rows,
            pad_id=layout.pad_id,
            attention=layout.attention,
            train_all_tokens=self.train_all_tokens,
            mask_dtype=layout.mask_dtype,
            masks=layout.masks,
        )

    def loss(self, models: StepModels, x: ModelInputs) -> tuple[torch.Tensor, float, dict]:
        """Summed loss over the trained positions, their count, no metrics."""
        head = self._split_head(models.model)
        if head is None:
            with models.autocast():
                logits = models.module(**x.model_kwargs()).logits  # (B, T, V)
            return (*causal_lm_loss_sum(logits, x.shift_labels), {})
        no_position = torch.zeros_like(x.shift_labels, dtype=torch.bool)  # (B, T)
        with models.autocast():
            out = models.module(
                **x.model_kwargs(), output_hidden_states=True, logits_to_keep=no_position
            )
        hidden = out.hidden_states[-1]  # (B, T, H): after the final norm

        def project(h: torch.Tensor) -> torch.Tensor:  # (N, H) -> (N, V)
            with models.autocast():
                return head(h)

        return (*chunked_causal_lm_loss_sum(hidden, project, x.shift_labels, self.chunk_rows), {})

    def _split_head(self, model: torch.nn.Module) -> torch.nn.Module | None:
        """The LM head when logits are exactly ``head(last hidden state)``, else None (split
        once per model)."""
        if self._split_from is not model:
            self.head, self.chunk_rows = split_lm_head(model)
            self._split_from = model
            if self.head is None:
                logger.info("the loss uses full logits (the model's head cannot be split off)")
        return self.head
