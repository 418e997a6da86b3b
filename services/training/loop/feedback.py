"""Rated responses (KTO) -> model inputs, and ``FeedbackLoss``: one unit per rated response.

A ``data.v1.Batch`` of a FEEDBACK dataset carries ``feedback``: each a ``TokenRow`` (prompt +
response, labels -100 on the prompt), the prompt's length and whether the response is desirable
(LLaMA-Factory's ``kto_tag``). KTO's KL baseline is estimated on mismatched pairs built from the
same micro-batch the way TRL's ``KTOTrainer`` builds them: the responses rotated by one, so
example ``i`` gets the prompt of ``i`` and the response of ``i - 1`` (example 0 that of the last).
``z = mean(log pi(y'|x) - log ref(y'|x))`` over those, clamped at 0, computed without gradients.

``FeedbackLoss`` is the ``StepLoss`` of the ``kto`` recipe: the per-example loss
(``losses.preference.kto_loss``) averaged over the step's rated responses, against a reference
the loop builds (``model.reference``: the base with adapters disabled, base + the starting
adapter, or a frozen copy). Written here because TRL's trainer owns its own loop and data
pipeline; the loss itself is checked against TRL's ``KTOTrainer`` in the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from llamafleet.data.v1 import data_pb2

from services.training.loop.collate import ModelInputs, collate
from services.training.loop.step_loss import Layout, StepModels
from services.training.losses.causal_lm import token_losses
from services.training.losses.preference import kto_loss
from services.training.spec.settings import PreferenceSettings


@dataclass
class SequenceInputs:
    """N unpacked sequences collated for one forward, with the sequence of every position."""

    inputs: ModelInputs
    segment: torch.Tensor  # shape of input_ids: which sequence each position belongs to
    count: int

    def to(self, device: torch.device | str) -> SequenceInputs:
        return SequenceInputs(self.inputs.to(device), self.segment.to(device), self.count)

    def response_logps(self, logits: torch.Tensor) -> torch.Tensor:
        """Summed log p of the labelled tokens of each sequence (N,)."""
        logps = -token_losses(logits, self.inputs.shift_labels)  # (rows, T), 0 where no label
        out = torch.zeros(self.count, dtype=logps.dtype, device=logps.device)
        return out.index_add(0, self.segment.flatten(), logps.flatten())


def collate_sequences(rows: Sequence[data_pb2.TokenRow], layout: Layout) -> SequenceInputs:
    inputs = collate(rows, pad_id=layout.pad_id, attention=layout.attention,
                     mask_dtype=layout.mask_dtype, masks=layout.masks)  # fmt: skip
    lengths = torch.tensor([len(r.input_ids) for r in rows])
    sequences = torch.arange(len(rows))
    if inputs.attention_mask is None:  # one unpadded row, sequences back to back
        segment = torch.repeat_interleave(sequences, lengths)[None]
    else:
        segment = sequences[:, None].expand(-1, inputs.input_ids.shape[1]).contiguous()
    return SequenceInputs(inputs, segment, len(rows))


def mismatched_rows(examples: Sequence[data_pb2.FeedbackExample]) -> list[data_pb2.TokenRow]:
    """Prompt of ``i`` + response of ``i - 1`` (TRL's rotation by one), labels on the response."""
    out = []
    for i, example in enumerate(examples):
        other = examples[i - 1]
        p, q = example.prompt_length, other.prompt_length
        ids = list(example.row.input_ids[:p]) + list(other.row.input_ids[q:])
        labels = [-100] * p + list(other.row.labels[q:])
        out.append(
            data_pb2.TokenRow(
                input_ids=ids, labels=labels, position_ids=range(len(ids)), cu_seqlens=[0, len(ids)]
            )
        )
    return out


@dataclass
class FeedbackInputs:
    matched: SequenceInputs  # the rated responses to their own prompts
    mismatched: SequenceInputs  # the KL estimate's pairs
    desirable: torch.Tensor  # (B,) bool

    @property
    def num_tokens(self) -> int:
        return self.matched.inputs.num_tokens

    @property
    def num_trained(self) -> int:  # the loop normalises by this: one unit per rated response
        return self.matched.count

    def to(self, device: torch.device | str) -> FeedbackInputs:
        return FeedbackInputs(
            self.matched.to(device), self.mismatched.to(device), self.desirable.to(device)
        )


def collate_feedback(
    examples: Sequence[data_pb2.FeedbackExample], layout: Layout
) -> FeedbackInputs:
    if not examples:
        raise ValueError("an empty batch has no rated responses")
    for i, example in enumerate(examples):
        n = len(example.row.input_ids)
        if not 0 < example.prompt_length < n:
            raise ValueError(
                f"feedback example {i}: prompt_length {example.prompt_length} must be inside its "
                f"row of {n} tokens (a prompt and a response)"
            )
    return FeedbackInputs(
        collate_sequences([e.row for e in examples], layout),
        collate_sequences(mismatched_rows(examples), layout),
        torch.tensor([e.desirable for e in examples], dtype=torch.bool),
    )


class FeedbackLoss:
    """The ``StepLoss`` of KTO over rated responses."""

    needs_reference = True
    metrics = ("kto/kl", "rewards/desirable", "rewards/undesirable")  # sums per unit

    def __init__(self, preference: PreferenceSettings) -> None:
        self.preference = preference

    def collate(self, batch: data_pb2.Batch, layout: Layout) -> FeedbackInputs:
        if not batch.feedback:
            raise ValueError(
                f"batch {batch.index} of epoch {batch.epoch} has no rated responses: the kto "
                "stage needs a FEEDBACK dataset (a kto_tag column)"
            )
        return collate_feedback(batch.feedback, layout)

    def kl_estimate(self, models: StepModels, x: FeedbackInputs) -> torch.Tensor:
        """``mean(log pi - log ref)`` over the mismatched pairs, clamped at 0 (no gradient)."""
        kwargs = x.mismatched.inputs.model_kwargs()
        with torch.no_grad():
            policy = x.mismatched.response_logps(models.module(**kwargs).logits)
            reference = x.mismatched.response_logps(models.reference.logits(**kwargs))
        return (policy - reference).mean().clamp(min=0)

    def per_example(
        self, models: StepModels, x: FeedbackInputs
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Losses (B,), rewards (B,) and the KL estimate."""
        p = self.preference
        kl = self.kl_estimate(models, x)
        kwargs = x.matched.inputs.model_kwargs()
        policy = x.matched.response_logps(models.module(**kwargs).logits)
        with torch.no_grad():
            reference = x.matched.response_logps(models.reference.logits(**kwargs))
        losses, rewards = kto_loss(policy, reference, x.desirable, kl, p.beta,
                                   p.kto_chosen_weight, p.kto_rejected_weight)  # fmt: skip
        return losses, rewards, kl

    def loss(self, models: StepModels, x: FeedbackInputs) -> tuple[torch.Tensor, float, dict]:
        with models.autocast():
            losses, rewards, kl = self.per_example(models, x)
        metrics = {
            "kto/kl": float(kl) * x.matched.count,
            "rewards/desirable": float(rewards[x.desirable].sum()),
            "rewards/undesirable": float(rewards[~x.desirable].sum()),
        }
        return losses.float().sum(), x.matched.count, metrics
