"""The chunked linear cross-entropy: same loss and gradients as the full-logits path.

``chunked_causal_lm_loss_sum`` applies the LM head to the trained positions only, chunk by chunk
(each chunk checkpointed when there are several). Its references: ``causal_lm_loss_sum`` on the
full logits (loss and every gradient), and transformers' own ``labels=`` loss on each example
alone. Tolerance 1e-5 (float32; the two paths sum the same terms in a different order).
"""

from __future__ import annotations

import pytest
import torch
from synthetic import digit_task, make_settings, pack, task_rows
from transformers import AutoModelForCausalLM

from services.training.loop.batches import InMemorySource
from services.training.loop.tokens import TokenLoss
from services.training.loop.trainer import Trainer
from services.training.losses.causal_lm import causal_lm_loss_sum, chunked_causal_lm_loss_sum
from services.training.model import load as models
from services.training.spec.settings import LoraSettings


@pytest.mark.parametrize("rows_per_chunk", [1, 4, 1000])
def test_chunks_give_the_full_logits_loss_and_gradients(rows_per_chunk):
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 11, bias=False)
    hidden = torch.randn(2, 9, 6, requires_grad=True)  # (B, T, H)
    labels = torch.randint(0, 11, (2, 9))
    labels[0, :3] = -100  # a prompt
    labels[1, 7:] = -100  # padding

    total, count = chunked_causal_lm_loss_sum(hidden, head, labels, rows_per_chunk)
    total.backward()
    got = (float(total.detach()), hidden.grad.clone(), head.weight.grad.clone())
    hidden.grad, head.weight.grad = None, None
    reference, reference_count = causal_lm_loss_sum(head(hidden), labels)
    reference.backward()

    assert count == reference_count == 13
    assert got[0] == pytest.approx(float(reference), abs=1e-5)
    torch.testing.assert_close(got[1], hidden.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(got[2], head.weight.grad, rtol=0, atol=1e-6)
    assert hidden.grad[1, 7:].abs().sum() == 0  # untrained positions get no gradient


def test_no_trained_position_gives_zero_with_a_gradient_path():
    hidden = torch.randn(1, 4, 3, requires_grad=True)
    total, count = chunked_causal_lm_loss_sum(
        hidden, torch.nn.Linear(3, 5), torch.full((1, 4), -100), rows_per_chunk=2
    )
    total.backward()
    assert count == 0 and float(total) == 0.0 and hidden.grad.abs().sum() == 0


def packed_trainer(tiny_random, tokenizer, tmp_path, method: str, attention: str) -> Trainer:
    rows = pack(task_rows(tokenizer, digit_task(5, 24)), cutoff=128)
    settings = make_settings(
        tiny_random,
        method=method,
        lora=LoraSettings(rank=4, alpha=8),
        attention=attention,
        batch_rows=2,
        max_steps=1,
    )
    trainer = Trainer(
        settings, InMemorySource(rows), tmp_path, loss=TokenLoss(train_all_tokens=False)
    )
    trainer.setup()
    return trainer


def loss_and_gradients(trainer: Trainer, compute) -> tuple[float, int, dict]:
    trainer.model.zero_grad(set_to_none=True)
    total, count = compute()
    total.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return float(total), count, grads


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_trainer_loss_and_gradients_equal_the_full_logits_path(
    tiny_random, tokenizer, tmp_path, method, attention
):
    """Packed rows (varlen SDPA, or eager with the block-diagonal mask), response-only labels,
    several checkpointed chunks: the loss sum and every trained parameter's gradient (the head's
    included under full fine-tuning) match ``causal_lm_loss_sum`` on the model's full logits."""
    trainer = packed_trainer(tiny_random, tokenizer, tmp_path, method, attention)
    x = trainer._collate(next(trainer._micro_batches())[0])
    assert len(x.flash_kwargs.get("cu_seq_lens_q", [])) > 2 or attention == "eager"
    assert trainer.loss._split_head(trainer.model) is not None
    trainer.loss.chunk_rows = 7  # several chunks (and a ragged last one) at this size
    assert x.num_trained > 2 * trainer.loss.chunk_rows

    got = loss_and_gradients(trainer, lambda: trainer._forward_loss(x))
    full = loss_and_gradients(
        trainer,
        lambda: causal_lm_loss_sum(
            trainer.engine.module(**x.model_kwargs()).logits, x.shift_labels
        ),
    )

    assert got[1] == full[1] == x.num_trained
    assert got[0] == pytest.approx(full[0], rel=1e-6, abs=1e-5)
    assert got[2].keys() == full[2].keys() and got[2]
    assert any("lm_head" in n for n in got[2]) == (method == "full")
    for name in full[2]:
        torch.testing.assert_close(got[2][name], full[2][name], rtol=0, atol=1e-5, msg=name)


def test_trainer_loss_equals_transformers_on_unpacked_examples(tiny_random, tokenizer, tmp_path):
    """The token-mean of the chunked path on packed rows equals transformers' own loss
    (``labels=``, shifted internally) on each conversation alone, weighted by its trained tokens."""
    trainer = packed_trainer(tiny_random, tokenizer, tmp_path, "full", "sdpa")
    trainer.loss._split_head(trainer.model)
    trainer.loss.chunk_rows = 7
    batch = next(trainer._micro_batches())[0]
    x = trainer._collate(batch)
    plain = AutoModelForCausalLM.from_pretrained(tiny_random, attn_implementation="eager")
    with torch.no_grad():
        total, count = trainer._forward_loss(x)
        reference_sum, reference_count = 0.0, 0
        for row in batch.rows:
            for s, e in zip(row.cu_seqlens, row.cu_seqlens[1:], strict=False):
                ids = torch.tensor([list(row.input_ids[s:e])])
                labels = torch.tensor([list(row.labels[s:e])])
                n = int((labels[0, 1:] != -100).sum())
                reference_sum += float(plain(input_ids=ids, labels=labels).loss) * n
                reference_count += n
    assert count == reference_count
    assert float(total) / count == pytest.approx(reference_sum / reference_count, abs=1e-5)


@pytest.mark.parametrize("field", ["final_logit_softcapping", "logit_scale"])
def test_heads_with_logit_transforms_keep_the_full_logits_path(tiny_random, field):
    """Gemma-style soft-capping or Cohere-style scaling after the head: not split off."""
    model = AutoModelForCausalLM.from_pretrained(tiny_random)
    head, rows = models.split_lm_head(model)
    assert head is model.lm_head and rows >= 64
    setattr(model.config, field, 30.0)
    assert models.split_lm_head(model) == (None, 0)
