"""LoRA set-up: target expansion, scaling, trainable parameters, and the checkpoint round-trip."""

from __future__ import annotations

import math

import pytest
import torch
from peft import PeftModel
from synthetic import digit_task, make_settings, pack, task_rows
from transformers import AutoModelForCausalLM

from services.training.loop import checkpoints
from services.training.loop.batches import InMemorySource
from services.training.loop.tokens import TokenLoss
from services.training.loop.trainer import Trainer
from services.training.model.lora import apply_lora, expand_target_modules
from services.training.spec.settings import LoraSettings

ALL_LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_all_expands_to_every_linear_layer_but_the_head(tiny_random):
    model = AutoModelForCausalLM.from_pretrained(tiny_random)
    assert expand_target_modules(model, ()) == ALL_LINEAR
    assert expand_target_modules(model, ("all",)) == ALL_LINEAR
    assert expand_target_modules(model, ("q_proj", "v_proj")) == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="qkv"):
        expand_target_modules(model, ("qkv",))


@pytest.mark.parametrize("rslora, expected", [(False, 16 / 4), (True, 16 / math.sqrt(4))])
def test_scaling(tiny_random, rslora, expected):
    model = AutoModelForCausalLM.from_pretrained(tiny_random)
    peft_model = apply_lora(model, LoraSettings(rank=4, alpha=16, use_rslora=rslora), seed=0)
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(expected)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_checkpoint_round_trips(tiny_random, tokenizer, tmp_path):
    rows = pack(task_rows(tokenizer, digit_task(3, 40)), cutoff=128)
    settings = make_settings(
        tiny_random, method="lora", lora=LoraSettings(rank=4, alpha=8), max_steps=3, batch_rows=2
    )
    trainer = Trainer(
        settings, InMemorySource(rows), tmp_path, loss=TokenLoss(train_all_tokens=False)
    )
    trainer.setup()
    trainer.train()
    folder = checkpoints.latest_checkpoint(tmp_path)
    assert folder.name == "step-3"
    trained = {k: v.clone() for k, v in trainer.engine.state_dict().items()}

    resumed = Trainer(
        make_settings(
            tiny_random, method="lora", lora=LoraSettings(rank=4, alpha=8), max_steps=3,
            batch_rows=2, resume=True,
        ),
        InMemorySource(rows),
        tmp_path,
        loss=TokenLoss(train_all_tokens=False),
    )  # fmt: skip
    resumed.setup()
    assert resumed.step == 3 and resumed.cursor == trainer.cursor
    for name, tensor in resumed.engine.state_dict().items():
        assert torch.equal(tensor, trained[name]), name
    assert resumed.engine.optimizer.state_dict()["state"].keys() == (
        trainer.engine.optimizer.state_dict()["state"].keys()
    )
    # the published adapter loads with peft and holds the same weights
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_random), tmp_path / "adapters" / "v1"
    )
    state = tuned.state_dict()
    for name, tensor in trained.items():
        assert torch.equal(state[name], tensor), name


@pytest.mark.parametrize(
    "dtype, attention",
    [("bfloat16", "sdpa"), ("float16", "eager"), ("float16", "sdpa")],
)
def test_mixed_precision_trains_with_float32_adapters(
    tiny_random, tokenizer, tmp_path, dtype, attention
):
    """Under autocast the frozen base sits in the compute dtype, adapters stay float32, and
    float16 gets a loss scaler; a few steps give finite, falling loss (CPU autocast)."""
    rows = pack(task_rows(tokenizer, digit_task(4, 60)), cutoff=128)
    settings = make_settings(
        tiny_random, method="lora", lora=LoraSettings(rank=4, alpha=8), compute_dtype=dtype,
        attention=attention, max_steps=6, batch_rows=2, logging_steps=1, learning_rate=5e-3,
    )  # fmt: skip
    trainer = Trainer(
        settings, InMemorySource(rows), tmp_path, loss=TokenLoss(train_all_tokens=False)
    )
    trainer.setup()
    assert (trainer.engine.scaler is not None) == (dtype == "float16")
    trained = [p for p in trainer.model.parameters() if p.requires_grad]
    frozen = [p for p in trainer.model.parameters() if not p.requires_grad]
    assert all(p.dtype == torch.float32 for p in trained)
    assert all(p.dtype == getattr(torch, dtype) for p in frozen)
    trainer.train()
    losses = [loss for _, loss in trainer.history]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
