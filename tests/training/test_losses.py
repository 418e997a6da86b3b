"""The recipes' loss: hand-derived values, and the sft recipe's loss against plain transformers."""

from __future__ import annotations

import math

import pytest
import torch
from synthetic import digit_task, pack, task_rows
from transformers import AutoModelForCausalLM

from services.training.loop.collate import collate
from services.training.losses.causal_lm import causal_lm_loss_sum, token_losses, token_mean
from services.training.model.load import VARLEN_SDPA


def test_token_losses_by_hand():
    """Two positions, vocabulary 2.

    Position 0: logits (0, 0), label 1: loss = -log(e^0 / (e^0 + e^0)) = log 2.
    Position 1: logits (log 3, 0), label 0: p = 3 / 4, loss = log(4 / 3).
    Position 2: label -100: loss 0, not counted.
    Sum = log 2 + log(4/3) = log(8/3); mean over 2 trained positions = log(8/3) / 2.
    """
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])  # (1, 3, 2)
    labels = torch.tensor([[1, 0, -100]])  # (1, 3)
    per_token = token_losses(logits, labels)
    assert per_token[0].tolist() == pytest.approx([math.log(2), math.log(4 / 3), 0.0], abs=1e-6)
    total, count = causal_lm_loss_sum(logits, labels)
    assert count == 2
    assert float(total) == pytest.approx(math.log(8 / 3), abs=1e-6)
    assert float(token_mean(total, count)) == pytest.approx(math.log(8 / 3) / 2, abs=1e-6)


def test_half_precision_logits_are_upcast():
    logits = torch.tensor([[[0.0, 0.0]]], dtype=torch.bfloat16)
    assert token_losses(logits, torch.tensor([[0]])).dtype == torch.float32


def test_no_trained_token_gives_zero_not_nan():
    total, count = causal_lm_loss_sum(torch.zeros(1, 2, 3), torch.full((1, 2), -100))
    assert count == 0 and float(token_mean(total, count)) == 0.0


@pytest.mark.parametrize(
    "attention, implementation",
    [("sdpa", VARLEN_SDPA), ("sdpa_mask", "sdpa"), ("eager", "eager")],
)
def test_sft_loss_on_packed_rows_equals_transformers_on_unpacked_examples(
    tiny_random, tokenizer, attention, implementation
):
    """Packed multi-turn conversations, block-diagonal attention, response-only labels: the
    token-mean loss equals transformers' own loss (labels=..., which shifts internally) computed
    on each conversation alone, weighted by its trained tokens. Tolerance 1e-5."""
    model = AutoModelForCausalLM.from_pretrained(tiny_random, attn_implementation=implementation)
    plain = AutoModelForCausalLM.from_pretrained(tiny_random, attn_implementation="eager")
    examples = task_rows(tokenizer, digit_task(7, 9))  # some have two assistant turns
    assert any(sum(1 for t in r.labels if t == tokenizer.convert_tokens_to_ids("<|im_end|>")) == 2
               for r in examples)  # fmt: skip
    rows = pack(examples, cutoff=96)
    assert any(len(r.cu_seqlens) > 2 for r in rows)
    x = collate(rows, pad_id=tokenizer.pad_token_id, attention=attention)
    with torch.no_grad():
        total, count = causal_lm_loss_sum(model(**x.model_kwargs()).logits, x.shift_labels)
        reference_sum, reference_count = 0.0, 0
        for row in examples:
            ids, labels = torch.tensor([list(row.input_ids)]), torch.tensor([list(row.labels)])
            n = int((labels[0, 1:] != -100).sum())
            reference_sum += float(plain(input_ids=ids, labels=labels).loss) * n
            reference_count += n
    assert count == reference_count
    # every assistant token (content and <|im_end|>) is trained, nothing else
    masks = [t for r in examples for t in r.labels if t != -100]
    assert len(masks) == reference_count
    assert float(total) / count == pytest.approx(reference_sum / reference_count, abs=1e-5)
