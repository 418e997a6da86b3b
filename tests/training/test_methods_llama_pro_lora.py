"""LLaMA-Pro with LoRA: blocks expanded, then adapters on the new blocks' linear layers only (as
LLaMA-Factory's ``find_expanded_modules``); the original blocks and every base weight unchanged."""

from __future__ import annotations

import math

import pytest
import torch
from llamafleet.training.v1 import training_pb2 as tpb
from method_checks import logits, moved, repeated_batch_rows, train_on_repeated_batch
from peft import PeftModel
from synthetic import make_settings
from transformers import AutoModelForCausalLM

from services.common.errors import Unimplemented
from services.training.loop.batches import InMemorySource
from services.training.loop.tokens import TokenLoss
from services.training.loop.trainer import Trainer
from services.training.model.methods import llama_pro
from services.training.spec.settings import LoraSettings, settings
from services.training.spec.validation import validate

NEW = (2, 5)  # 4 layers, 2 new blocks: [0 1 new 2 3 new]


def lora_pro_settings(base, **kw):
    return make_settings(
        base, method="lora", lora=LoraSettings(rank=8, alpha=16), llama_pro_expand=2,
        batch_rows=2, max_steps=6, **kw,
    )  # fmt: skip


def test_lora_on_new_blocks_only_trains_and_reloads(tiny_random, tokenizer, tmp_path):
    rows = repeated_batch_rows(tokenizer)
    trainer, losses, before = train_on_repeated_batch(
        lora_pro_settings(tiny_random, logging_steps=1, learning_rate=5e-3), rows, tmp_path
    )
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
    model = trainer.model
    assert model.config.num_hidden_layers == 6
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    layer_of = {n: int(n.split(".layers.")[1].split(".")[0]) for n in trainable}
    assert trainable and all("lora_" in n for n in trainable)
    assert set(layer_of.values()) == set(NEW)
    # every linear layer of each new block is adapted (target "all"), nothing else is
    linear = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    for index in NEW:
        adapted = {n.split(".")[-4] for n in trainable if layer_of[n] == index}
        assert adapted == linear, adapted
    changed = moved(model, before)
    assert changed and changed <= trainable  # base weights, original blocks: bit-identical
    assert any("lora_B" in n for n in changed)

    # the adapter applies to the base expanded the same way, and reproduces the trained model
    ids = torch.tensor([rows[0].input_ids[:48]])
    base = AutoModelForCausalLM.from_pretrained(tiny_random)
    assert llama_pro.expand(base, 2) == list(NEW)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapters" / "v1")
    torch.testing.assert_close(logits(reloaded, ids), logits(model, ids), rtol=0, atol=1e-5)

    resumed = Trainer(
        lora_pro_settings(tiny_random, resume=True), InMemorySource(rows), tmp_path,
        loss=TokenLoss(train_all_tokens=False),
    )  # fmt: skip
    resumed.setup()
    torch.testing.assert_close(logits(resumed.model, ids), logits(model, ids), rtol=0, atol=0)


def test_untrained_expanded_lora_model_computes_what_the_base_did(tiny_random):
    from services.training.model.lora import apply_lora

    base = AutoModelForCausalLM.from_pretrained(tiny_random)
    ids = torch.randint(
        0, base.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(1)
    )
    reference = logits(base, ids)
    llama_pro.expand(base, 2)
    model = apply_lora(base, LoraSettings(rank=4, target_modules=("q_proj", "v_proj")), seed=0)
    adapted = {n.rsplit(".lora_", 1)[0] for n, _ in model.named_parameters() if ".lora_" in n}
    assert adapted == {
        f"base_model.model.model.layers.{i}.self_attn.{m}"
        for i in NEW
        for m in ("q_proj", "v_proj")
    }
    torch.testing.assert_close(logits(model, ids), reference, rtol=0, atol=1e-5)


def _spec(base, **lora):
    spec = tpb.TrainingJobSpec(job_id="j", base_model=str(base), stage=tpb.STAGE_SFT)
    spec.dataset.dataset_id = "rows"
    spec.finetuning.type = tpb.FINETUNING_TYPE_LORA
    spec.finetuning.llama_pro.num_expand = 2
    for key, value in lora.items():
        setattr(spec.finetuning.lora, key, value)
    return spec


def test_validate(tiny_random):
    validate(_spec(tiny_random))
    assert settings(_spec(tiny_random)).llama_pro_expand == 2
    with pytest.raises(Unimplemented, match="LLaMA-Pro.*DoRA"):
        validate(_spec(tiny_random, use_dora=True))
    qlora = _spec(tiny_random)
    qlora.finetuning.quantization_bits = 4
    with pytest.raises(Unimplemented, match="LLaMA-Pro.*QLoRA"):
        validate(qlora)
    full = _spec(tiny_random)
    full.finetuning.type = tpb.FINETUNING_TYPE_FULL
    with pytest.raises(Unimplemented, match="LLaMA-Pro.*FINETUNING_TYPE_FULL"):
        validate(full)
    rm = _spec(tiny_random)
    rm.stage = tpb.STAGE_RM
    with pytest.raises(Unimplemented, match="LLaMA-Pro.*STAGE_RM"):
        validate(rm)
