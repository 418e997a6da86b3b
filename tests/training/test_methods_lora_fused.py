"""The fused LoRA layer against peft's LoRA layer: same outputs, same gradients (1e-5)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import Linear as PeftLoraLinear
from transformers import AutoModelForCausalLM

from services.training.model.lora import apply_lora
from services.training.model.methods.lora_fused import (
    FusedLoraLinear,
    fuse_lora_layers,
    fused_lora_linear,
)
from services.training.spec.settings import LoraSettings


def peft_layer(d: int, h: int, r: int, bias: bool, seed: int) -> PeftLoraLinear:
    torch.manual_seed(seed)
    holder = torch.nn.Module()
    holder.proj = torch.nn.Linear(d, h, bias=bias)
    wrapped = get_peft_model(holder, LoraConfig(r=r, lora_alpha=2 * r, target_modules=["proj"]))
    layer = wrapped.base_model.model.proj
    assert isinstance(layer, PeftLoraLinear)
    base = layer.base_layer
    with torch.no_grad():  # B is zero at init: give it values so every gradient path is exercised
        layer.lora_B["default"].weight.normal_(0, 0.1)
    base.weight.requires_grad_(False)
    if bias:
        base.bias.requires_grad_(False)
    return layer


@pytest.mark.parametrize("d, h, r, bias", [(64, 96, 8, False), (48, 32, 4, True)])
def test_matches_peft_outputs_and_gradients(d, h, r, bias):
    layer = peft_layer(d, h, r, bias, seed=0)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    x = torch.randn(3, 17, d, requires_grad=True)
    grad = torch.randn(3, 17, h)

    ref = layer(x)
    ref.backward(grad)
    ref_grads = [x.grad.clone(), a.grad.clone(), b.grad.clone()]
    x.grad, a.grad, b.grad = None, None, None

    out = fused_lora_linear(x, layer.base_layer.weight, layer.base_layer.bias, a, b, 2.0)
    out.backward(grad)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # float32 rounding of sums over m = 51 rows in another order: gradients of A reach ~40 here
    for got, want in zip([x.grad, a.grad, b.grad], ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    assert layer.base_layer.weight.grad is None


def test_fused_model_trains_like_peft(tiny_random):
    """Every LoRA layer of the tiny model fused: loss and all adapter gradients as peft's."""
    ids = torch.randint(0, 500, (2, 32), generator=torch.Generator().manual_seed(1))
    cfg = LoraSettings(rank=4, alpha=8)
    results = []
    for fuse in (False, True):
        model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_random), cfg, seed=0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
        if fuse:
            assert fuse_lora_layers(model) == 7 * model.config.num_hidden_layers
        with mock.patch.object(FusedLoraLinear, "apply", wraps=FusedLoraLinear.apply) as fused:
            loss = model(input_ids=ids, labels=ids).loss
        assert fused.call_count == (7 * model.config.num_hidden_layers if fuse else 0)
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
    (loss_ref, grads_ref), (loss_fused, grads_fused) = results
    torch.testing.assert_close(loss_fused, loss_ref, rtol=0, atol=1e-5)
    assert grads_ref.keys() == grads_fused.keys()
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads_fused[name], g, rtol=0, atol=1e-5, msg=name)


def test_ineligible_layers_are_left_alone(tiny_random):
    model = AutoModelForCausalLM.from_pretrained(tiny_random)
    dropout = apply_lora(model, LoraSettings(rank=4, alpha=8, dropout=0.1), seed=0)
    assert fuse_lora_layers(dropout) == 0
    model = AutoModelForCausalLM.from_pretrained(tiny_random)
    dora = apply_lora(model, LoraSettings(rank=4, alpha=8, use_dora=True), seed=0)
    assert fuse_lora_layers(dora) == 0
