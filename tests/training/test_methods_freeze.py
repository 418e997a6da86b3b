"""Freeze (partial) fine-tuning: the chosen layers and modules train, everything else is frozen."""

from __future__ import annotations

import math

import pytest
import torch
from method_checks import logits, moved, repeated_batch_rows, train_on_repeated_batch
from synthetic import make_settings
from transformers import AutoModelForCausalLM

from services.training.loop.batches import InMemorySource
from services.training.loop.tokens import TokenLoss
from services.training.loop.trainer import Trainer
from services.training.model.methods.freeze import chosen_layers, trainable_names
from services.training.spec.settings import FreezeSettings


def test_layer_choice():
    assert chosen_layers(4, 2) == [2, 3]
    assert chosen_layers(4, -1) == [0]
    assert chosen_layers(4, 0) == [2, 3]  # 0 = 2, the proto default
    with pytest.raises(ValueError, match="only 4 layers"):
        chosen_layers(4, 5)


def test_trainable_names_and_unknown_module(tiny_random):
    model = AutoModelForCausalLM.from_pretrained(tiny_random)
    names = trainable_names(
        model,
        FreezeSettings(trainable_layers=1, trainable_modules=("mlp",), extra_modules=("norm",)),
    )
    last = model.config.num_hidden_layers - 1
    expected = {n for n, _ in model.named_parameters() if n.startswith(f"model.layers.{last}.mlp.")}
    assert names == expected | {"model.norm.weight"}
    with pytest.raises(ValueError, match="mlpp"):
        trainable_names(model, FreezeSettings(trainable_modules=("mlpp",)))


def test_freeze_trains_exactly_the_last_layers_and_reloads(tiny_random, tokenizer, tmp_path):
    rows = repeated_batch_rows(tokenizer)
    settings = make_settings(
        tiny_random, method="freeze", freeze=FreezeSettings(trainable_layers=2),
        max_steps=6, batch_rows=2, logging_steps=1, learning_rate=3e-3,
    )  # fmt: skip
    trainer, losses, before = train_on_repeated_batch(settings, rows, tmp_path)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] * 0.9, losses

    layers = trainer.model.config.num_hidden_layers
    expected = {
        n for n, _ in trainer.model.named_parameters()
        if any(n.startswith(f"model.layers.{i}.") for i in (layers - 2, layers - 1))
    }  # fmt: skip
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == expected
    assert moved(trainer.model, before) == expected  # every trained tensor moved, no other did

    # the checkpoint holds only the trained tensors and resumes to the same weights
    resumed = Trainer(
        make_settings(
            tiny_random, method="freeze", freeze=FreezeSettings(trainable_layers=2),
            max_steps=6, batch_rows=2, resume=True,
        ),
        InMemorySource(rows), tmp_path, loss=TokenLoss(train_all_tokens=False),
    )  # fmt: skip
    resumed.setup()
    assert set(resumed.engine.state_dict()) == expected
    ids = torch.tensor([rows[0].input_ids[:48]])
    torch.testing.assert_close(
        logits(resumed.model, ids), logits(trainer.model, ids), rtol=0, atol=0
    )

    # the exported model is a complete Hugging Face folder with the trained weights
    trainer.save_outputs()
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    torch.testing.assert_close(logits(exported, ids), logits(trainer.model, ids), rtol=0, atol=0)


def test_freeze_named_modules_and_extra_modules(tiny_random, tokenizer, tmp_path):
    rows = repeated_batch_rows(tokenizer)
    cfg = FreezeSettings(
        trainable_layers=-1, trainable_modules=("self_attn",), extra_modules=("norm",)
    )
    settings = make_settings(
        tiny_random, method="freeze", freeze=cfg, max_steps=4, batch_rows=2, logging_steps=1,
        learning_rate=3e-3,
    )  # fmt: skip
    trainer, losses, before = train_on_repeated_batch(settings, rows, tmp_path)
    assert losses[-1] < losses[0], losses
    names = {n for n, _ in trainer.model.named_parameters()}
    expected = {n for n in names if n.startswith("model.layers.0.self_attn.")} | {
        "model.norm.weight"
    }
    assert moved(trainer.model, before) == expected
