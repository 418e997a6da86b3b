"""The seam between the shared loop and what a recipe trains on: ``StepLoss``.

The loop (``trainer.Trainer``) owns everything a step has in common: micro-batches from a
``BatchSource``, gradient accumulation, one loss normalisation over every rank, the optimizer,
logging, evaluation and checkpoints. A ``StepLoss`` owns what varies between recipes:

- ``collate(batch, layout)``: which part of a ``data.v1.Batch`` it reads (``rows``, ``pairs``)
  and the tensors it builds from it (a ``StepInputs``, moved to the device by the loop);
- ``loss(models, inputs)``: the forward passes it needs and ``(loss summed over the micro-batch's
  units, number of units, metric sums)``. A unit is what a step's loss is averaged over: a
  trained token (``tokens.TokenLoss``), a preference pair (``pairs.PairLoss``), an example;
- ``needs_reference``: whether the loop must give it a frozen reference model
  (``model.reference.Reference``: the base with adapters disabled, or a frozen copy), as
  torchtune's losses say ``is_reference_free``;
- ``metrics``: the names of the metric sums ``loss`` returns; the loop all-reduces them over the
  ranks and reports ``eval_<name>`` = sum / units after an evaluation.

A new objective is one more ``StepLoss`` (KTO: unpaired desirable/undesirable rows, a reference,
and a KL baseline taken from the micro-batch inside ``loss``), never a subclass of the loop. This
module holds only the protocol and the records both sides share.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from llamafleet.data.v1 import data_pb2

from services.training.model.attention import MaskPlan

if TYPE_CHECKING:
    from services.training.model.reference import Reference


@dataclass(frozen=True)
class Layout:
    """How rows become tensors on this rank (what ``collate`` needs from the settings)."""

    pad_id: int
    attention: str  # "eager" | "sdpa" | "flash_attention_2"
    mask_dtype: torch.dtype
    masks: MaskPlan = MaskPlan()  # sliding windows of the model's layers (eager masks)


class StepInputs(Protocol):
    """One collated micro-batch."""

    @property
    def num_tokens(self) -> int: ...  # tokens, padding excluded (throughput)

    @property
    def num_trained(self) -> int: ...  # units the step's loss is averaged over

    def to(self, device: torch.device | str) -> StepInputs: ...


@dataclass
class StepModels:
    """What a ``StepLoss`` may run, set up by the loop once the engine exists."""

    module: torch.nn.Module  # the engine's module: its forward reduces gradients over ranks
    model: torch.nn.Module  # the trained model itself (peft / transformers): heads, adapters
    reference: Reference | None  # set when the loss ``needs_reference``
    autocast: Callable[[], AbstractContextManager]  # the compute-dtype context of a forward


class StepLoss(Protocol):
    needs_reference: bool
    metrics: tuple[str, ...]

    def collate(self, batch: data_pb2.Batch, layout: Layout) -> StepInputs: ...

    def loss(
        self, models: StepModels, inputs: StepInputs
    ) -> tuple[torch.Tensor, float, dict[str, float]]:
        """``(loss summed over the units, units, {metric: sum})`` of one micro-batch."""
        ...
