"""LoRA+, PiSSA and DoRA (through peft): the properties a user relies on.

LoRA+: with AdamW, the first update of every element is ``lr * g / (|g| + eps)`` ~ ``lr`` in size,
so B (initialised to zero, hence the only adapter with a gradient at step 1) moves by
``lr * loraplus_lr_ratio`` and A not at all. PiSSA and DoRA start from the base model: their
first forward equals the base's (PiSSA moves the principal part of W into A B and keeps the
residual, W = W_res + s A B; DoRA's magnitude starts at the column norms of W).
"""

from __future__ import annotations

import pytest
import torch
from synthetic import make_settings
from transformers import AutoModelForCausalLM

from services.training.model.lora import apply_lora
from services.training.model.optim import build_optimizer
from services.training.spec.settings import LoraSettings

IDS = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def forward(model) -> torch.Tensor:
    model.eval()
    return model(input_ids=IDS).logits


def test_loraplus_moves_b_by_ratio_times_lr(tiny_random):
    lr, ratio = 1e-3, 16.0
    cfg = LoraSettings(rank=4, alpha=8, loraplus_lr_ratio=ratio)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_random), cfg, seed=0)
    settings = make_settings(tiny_random, method="lora", lora=cfg, learning_rate=lr)
    optimizer = build_optimizer(model, settings)
    rates = {
        name: group["lr"]
        for group in optimizer.param_groups
        for name, p in model.named_parameters()
        if any(p is q for q in group["params"])
    }
    assert {rates[n] for n in rates if "lora_B" in n} == {lr * ratio}
    assert {rates[n] for n in rates if "lora_A" in n} == {lr}

    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    optimizer.step()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        step = (p.detach() - before[name]).abs().max().item()
        if "lora_B" in name:
            assert step == pytest.approx(lr * ratio, rel=1e-3), name
        else:  # A's gradient is zero while B is zero
            assert step == 0.0, name


@pytest.mark.parametrize(
    "cfg",
    [LoraSettings(rank=8, alpha=16, pissa_init=True, pissa_iters=16),
     LoraSettings(rank=8, alpha=16, pissa_init=True, pissa_iters=-1),
     LoraSettings(rank=8, alpha=16, use_dora=True)],
    ids=["pissa-fast-svd", "pissa-svd", "dora"],
)  # fmt: skip
def test_first_forward_equals_the_base(tiny_random, cfg):
    base = AutoModelForCausalLM.from_pretrained(tiny_random)
    reference = forward(base)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_random), cfg, seed=0)
    if cfg.pissa_init:  # the adapters are not zero: the equality is W_res + s A B = W
        b = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
        assert b.abs().max() > 0
    torch.testing.assert_close(forward(model), reference, rtol=0, atol=1e-4)
