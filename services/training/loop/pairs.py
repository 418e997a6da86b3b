"""Preference pairs -> one concatenated forward pass, and ``PairLoss``: one unit per pair.

A ``data.v1.Batch`` of a preference dataset carries ``pairs``: each a chosen and a rejected
``TokenRow`` (prompt + response, unpacked, labels -100 outside the response). ``collate_pairs``
puts the B chosen rows first and the B rejected rows after them and collates all 2B with
``collate.collate``, so chosen and rejected go through the model in one forward pass (for sdpa /
flash-attn as one unpadded row with the 2B sequences as separate segments). It also records, for
every position, which of the 2B sequences it belongs to (``segment``) and where each sequence is
scored (``scored_index``, flat): ``services.common.scored_position``'s rule, the last end token
(``end_ids``) of the response (the labelled part), else the last token, so template text after
the end token (ChatML's ``"\n"``) never decides a score and no read touches padding.

``PairLoss`` is the ``StepLoss`` of the pair recipes: the loop averages a per-pair loss over the
step's pairs (all micro-batches, all ranks), and an evaluation adds pairwise accuracy and the mean
margin (``eval_rewards/accuracy``, ``eval_rewards/margin``). Which per-pair loss, and whether it
needs a reference model, is the composed ``PairObjective``'s (``recipes.dpo.DpoPairs``,
``recipes.rm.RewardPairs``); this module knows nothing about it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from llamafleet.data.v1 import data_pb2

from services.common.scored_position import scored_index
from services.training.loop.collate import ModelInputs, collate
from services.training.loop.step_loss import Layout, StepModels
from services.training.losses.causal_lm import token_losses
from services.training.model.attention import MaskPlan


@dataclass
class PairInputs:
    """One micro-batch of B pairs as 2B sequences: chosen ``[0, B)``, rejected ``[B, 2B)``."""

    inputs: ModelInputs  # 2B sequences collated
    segment: torch.Tensor  # shape of input_ids: index of the sequence of each position
    scored_index: torch.Tensor  # (2B,) flat index (into input_ids.flatten()) of each scored token
    num_pairs: int

    @property
    def num_tokens(self) -> int:
        return self.inputs.num_tokens

    @property
    def num_trained(self) -> int:  # the loop normalises by this: one unit per pair
        return self.num_pairs

    def to(self, device: torch.device | str) -> PairInputs:
        return PairInputs(
            self.inputs.to(device),
            self.segment.to(device),
            self.scored_index.to(device),
            self.num_pairs,
        )

    def sequence_sums(self, values: torch.Tensor) -> torch.Tensor:
        """Per-sequence sums (2B,) of ``values`` shaped like ``input_ids``."""
        out = torch.zeros(2 * self.num_pairs, dtype=values.dtype, device=values.device)
        return out.index_add(0, self.segment.flatten(), values.flatten())

    def response_logps(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log p of the response tokens per sequence, and their counts: (2B,), (2B,)."""
        shift = self.inputs.shift_labels
        logps = -token_losses(logits, shift)  # (N, T), 0 where no label
        counts = self.sequence_sums((shift != -100).float())  # (2B,)
        return self.sequence_sums(logps), counts


def collate_pairs(
    pairs: Sequence[data_pb2.PreferencePair],
    *,
    pad_id: int,
    attention: str = "sdpa",
    mask_dtype: torch.dtype = torch.float32,
    end_ids: Collection[int] = frozenset(),
    masks: MaskPlan = MaskPlan(),  # noqa: B008 (frozen)
) -> PairInputs:
    """Collate B pairs into one forward of 2B sequences (chosen first); each is scored at the
    last of ``end_ids`` in its response, else at its last token."""
    if not pairs:
        raise ValueError("an empty batch has no preference pairs")
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    ends = frozenset(end_ids)
    scored = []  # index within each row
    for i, row in enumerate(rows):
        side, index = ("chosen", i) if i < len(pairs) else ("rejected", i - len(pairs))
        n = len(row.input_ids)
        if len(row.cu_seqlens) > 2 or (row.cu_seqlens and list(row.cu_seqlens) != [0, n]):
            raise ValueError(f"pair {index} {side}: preference rows must be unpacked (one example)")
        start = next((t for t, x in enumerate(row.labels) if x != -100), None)
        if start is None:
            raise ValueError(f"pair {index} {side}: no response tokens (every label is -100)")
        scored.append(scored_index(row.input_ids, start, ends))
    inputs = collate(rows, pad_id=pad_id, attention=attention, mask_dtype=mask_dtype, masks=masks)
    lengths = torch.tensor([len(r.input_ids) for r in rows])  # (2B,)
    within = torch.tensor(scored)  # (2B,)
    sequences = torch.arange(len(rows))
    if inputs.attention_mask is None:  # one unpadded row, sequences back to back
        segment = torch.repeat_interleave(sequences, lengths)[None]  # (1, N)
        flat = lengths.cumsum(0) - lengths + within
    else:  # 2B right-padded rows
        width = inputs.input_ids.shape[1]
        segment = sequences[:, None].expand(-1, width).contiguous()  # (2B, T)
        flat = sequences * width + within
    return PairInputs(inputs, segment, flat, len(pairs))


class PairObjective(Protocol):
    """A per-pair loss over one micro-batch of pairs."""

    needs_reference: bool

    def pair_losses(
        self, models: StepModels, x: PairInputs
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-pair losses (B,) and the chosen and rejected rewards (B,) (detached)."""
        ...


class PairLoss:
    """The ``StepLoss`` over preference pairs: the objective's per-pair loss, one unit per pair."""

    metrics = ("rewards/accuracy", "rewards/margin")  # sums: correct pairs, margins

    def __init__(
        self, objective: PairObjective, recipe: str, end_ids: Collection[int] = frozenset()
    ) -> None:
        self.objective, self.recipe = objective, recipe
        self.end_ids = frozenset(end_ids)  # where a sequence is scored (``collate_pairs``)
        self.needs_reference = objective.needs_reference

    def collate(self, batch: data_pb2.Batch, layout: Layout) -> PairInputs:
        if not batch.pairs:
            raise ValueError(
                f"batch {batch.index} of epoch {batch.epoch} has no preference pairs: "
                f"the {self.recipe} stage needs a preference dataset "
                "(DATASET_FORMAT_PREFERENCE_ALPACA or _SHAREGPT)"
            )
        return collate_pairs(
            batch.pairs,
            pad_id=layout.pad_id,
            attention=layout.attention,
            mask_dtype=layout.mask_dtype,
            end_ids=self.end_ids,
            masks=layout.masks,
        )

    def loss(self, models: StepModels, x: PairInputs) -> tuple[torch.Tensor, float, dict]:
        with models.autocast():
            losses, chosen, rejected = self.objective.pair_losses(models, x)  # (B,) each
        margin = (chosen - rejected).float()  # (B,)
        metrics = {
            "rewards/accuracy": float((margin > 0).sum()),
            "rewards/margin": float(margin.sum()),
        }
        return losses.float().sum(), x.num_pairs, metrics
