"""Preference pairs -> one concatenated forward pass, and the training loop of the pair recipes.

A ``data.v1.Batch`` of a preference dataset carries ``pairs``: each a chosen and a rejected
``TokenRow`` (prompt + response, unpacked, labels -100 outside the response). ``collate_pairs``
puts the B chosen rows first and the B rejected rows after them and collates all 2B with
``collate.collate``, so chosen and rejected go through the model in one forward pass (for sdpa /
flash-attn as one unpadded row with the 2B sequences as separate segments). It also records, for
every position, which of the 2B sequences it belongs to (``segment``) and where each sequence's
last real token is (``last_index``, flat), so per-sequence sums and last-token reads never touch
padding.

``PreferenceTrainer`` is the shared ``Trainer`` loop with one optimizer step averaging a per-pair
loss over the step's pairs (all micro-batches, all ranks) instead of a per-token loss. A recipe
subclasses it with ``pair_losses`` (and ``Trainer``'s ``build_model`` / ``after_setup`` hooks);
evaluation adds pairwise accuracy and the mean margin (``eval_rewards/accuracy``,
``eval_rewards/margin``), also once at step 0 before training. This module knows nothing about
which preference loss is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from llamafleet.data.v1 import data_pb2

from services.training.loop.batches import InMemoryPairSource
from services.training.loop.collate import ModelInputs, collate
from services.training.loop.distributed import all_reduce_sum
from services.training.loop.trainer import Trainer, TrainResult
from services.training.losses.causal_lm import token_losses
from services.training.model import load as models

__all__ = ["InMemoryPairSource", "PairInputs", "PreferenceTrainer", "collate_pairs"]


@dataclass
class PairInputs:
    """One micro-batch of B pairs as 2B sequences: chosen ``[0, B)``, rejected ``[B, 2B)``."""

    inputs: ModelInputs  # 2B sequences collated
    segment: torch.Tensor  # shape of input_ids: index of the sequence of each position
    last_index: torch.Tensor  # (2B,) flat index (into input_ids.flatten()) of each last token
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
            self.last_index.to(device),
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
) -> PairInputs:
    """Collate B pairs into one forward of 2B sequences (chosen first)."""
    if not pairs:
        raise ValueError("an empty batch has no preference pairs")
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    for i, row in enumerate(rows):
        side, index = ("chosen", i) if i < len(pairs) else ("rejected", i - len(pairs))
        n = len(row.input_ids)
        if len(row.cu_seqlens) > 2 or (row.cu_seqlens and list(row.cu_seqlens) != [0, n]):
            raise ValueError(f"pair {index} {side}: preference rows must be unpacked (one example)")
        if not any(x != -100 for x in row.labels):
            raise ValueError(f"pair {index} {side}: no response tokens (every label is -100)")
    inputs = collate(rows, pad_id=pad_id, attention=attention, mask_dtype=mask_dtype)
    lengths = torch.tensor([len(r.input_ids) for r in rows])  # (2B,)
    sequences = torch.arange(len(rows))
    if inputs.attention_mask is None:  # one unpadded row, sequences back to back
        segment = torch.repeat_interleave(sequences, lengths)[None]  # (1, N)
        last_index = lengths.cumsum(0) - 1
    else:  # 2B right-padded rows
        width = inputs.input_ids.shape[1]
        segment = sequences[:, None].expand(-1, width).contiguous()  # (2B, T)
        last_index = sequences * width + lengths - 1
    return PairInputs(inputs, segment, last_index, len(pairs))


class PreferenceTrainer(Trainer):
    """The ``Trainer`` loop over preference pairs: a per-pair loss, averaged over the step."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, train_all_tokens=False, **kwargs)
        self._stats = [0.0, 0.0, 0.0]  # correct pairs, summed margin, pairs
        self.last_eval_metrics: dict[str, float] = {}
        self.evaluated_step: int | None = None  # the step of the last evaluation

    def evaluate_if_stale(self) -> None:
        """The final evaluation of a recipe, unless the loop just evaluated this step."""
        if self.has_eval and self.evaluated_step != self.step:
            self.evaluate(log=True)

    # --- what a recipe defines (and ``Trainer.build_model`` / ``after_setup``) -------------

    def pair_losses(self, x: PairInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-pair losses (B,) and the chosen and rejected rewards (B,) (detached)."""
        raise NotImplementedError

    # --- the Trainer seams -------------------------------------------------------------------

    def train(self) -> TrainResult:
        """The shared loop, after one evaluation at step 0 (when there is eval data and the job
        is not resuming): the held-out accuracy and margin before any update are logged, so a
        job's events show what it learned (for DPO the margin starts at 0: policy = reference)."""
        if self.has_eval and self.step == 0:
            self.evaluate(log=True)
        return super().train()

    def _collate(self, batch: data_pb2.Batch) -> PairInputs:
        if not batch.pairs:
            raise ValueError(
                f"batch {batch.index} of epoch {batch.epoch} has no preference pairs: "
                f"the {self.settings.recipe} stage needs a preference dataset "
                "(DATASET_FORMAT_PREFERENCE_ALPACA or _SHAREGPT)"
            )
        return collate_pairs(
            batch.pairs,
            pad_id=self.pad_id,
            attention=self.settings.attention,
            mask_dtype=models.mask_dtype(self.settings),
        ).to(self.device)

    def _forward_loss(self, x: PairInputs) -> tuple[torch.Tensor, int]:
        context = models.autocast(self.settings, self.device)
        if not self.engine.uses_autocast:
            context = torch.autocast(self.device.type, enabled=False)
        with context:
            losses, chosen, rejected = self.pair_losses(x)  # (B,) each
        margin = (chosen - rejected).float()
        self._stats[0] += float((margin > 0).sum())
        self._stats[1] += float(margin.sum())
        self._stats[2] += x.num_pairs
        return losses.float().sum(), x.num_pairs

    @torch.no_grad()
    def evaluate(self, log: bool = False) -> float:
        """Pair-mean loss over the eval split, with pairwise accuracy and mean margin."""
        self._stats = [0.0, 0.0, 0.0]
        loss = super().evaluate(log=False)
        correct, margin, count = all_reduce_sum(self._stats, self.world)
        self.evaluated_step = self.step
        self.last_eval_metrics = {
            "eval_loss": loss,
            "eval_rewards/accuracy": correct / max(count, 1.0),
            "eval_rewards/margin": margin / max(count, 1.0),
        }
        if log and self.world.is_main:
            record = {"step": self.step, **self.last_eval_metrics}
            self.writer.write(record)
            self.report.metrics({**record, "eval_only": True})
        return loss
