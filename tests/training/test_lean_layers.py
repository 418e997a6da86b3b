"""The lean RMSNorm / SwiGLU functions against transformers' modules and plain autograd.

Forwards must be bit-identical (they run the same operations); gradients agree to 1e-5 (float32
rounding of a different summation order); what autograd keeps for backward must shrink.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from services.training.model.lean_layers import (
    RMSNormFunction,
    SiluMulFunction,
    rms_norm,
    silu_mul,
    use_lean_layers,
)
from services.training.model.lora import apply_lora
from services.training.model.methods.lora_fused import fuse_lora_layers
from services.training.spec.settings import LoraSettings


def saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward of ``fn()``."""
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(kept.values())


@pytest.mark.parametrize("train_weight", [False, True])
def test_rms_norm_matches_transformers(train_weight):
    torch.manual_seed(0)
    norm = LlamaRMSNorm(48, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    norm.weight.requires_grad_(train_weight)
    x = torch.randn(3, 11, 48, requires_grad=True)
    grad = torch.randn(3, 11, 48)

    ref = norm(x)
    ref.backward(grad)
    ref_grads = [x.grad.clone(), norm.weight.grad.clone() if train_weight else None]
    x.grad, norm.weight.grad = None, None

    out = rms_norm(x, norm.weight, norm.variance_epsilon)
    out.backward(grad)
    assert torch.equal(out, ref)
    torch.testing.assert_close(x.grad, ref_grads[0], rtol=0, atol=1e-5)
    if train_weight:
        torch.testing.assert_close(norm.weight.grad, ref_grads[1], rtol=0, atol=1e-5)
    else:
        assert norm.weight.grad is None


def test_rms_norm_bfloat16_input_keeps_its_dtypes():
    torch.manual_seed(1)
    norm = LlamaRMSNorm(32)
    x = torch.randn(5, 32, dtype=torch.bfloat16, requires_grad=True)
    ref = norm(x)
    ref.float().sum().backward()
    want = x.grad.clone()
    x.grad = None
    out = rms_norm(x, norm.weight, norm.variance_epsilon)
    out.float().sum().backward()
    assert torch.equal(out, ref) and out.dtype == ref.dtype
    assert x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(x.grad, want, rtol=1e-2, atol=1e-2)


def test_silu_mul_matches_autograd():
    torch.manual_seed(2)
    gate = torch.randn(4, 9, 40, requires_grad=True)
    up = torch.randn(4, 9, 40, requires_grad=True)
    grad = torch.randn(4, 9, 40)
    ref = F.silu(gate) * up
    ref.backward(grad)
    want = [gate.grad.clone(), up.grad.clone()]
    gate.grad, up.grad = None, None
    out = silu_mul(gate, up)
    out.backward(grad)
    assert torch.equal(out, ref)
    torch.testing.assert_close(gate.grad, want[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(up.grad, want[1], rtol=0, atol=1e-5)


def test_less_is_kept_for_backward():
    """Plain, with a trained norm weight: the norm keeps x, rstd and x * rstd; the SwiGLU product
    keeps gate, silu(gate) and up. Lean: x and rstd; gate and up. (With a frozen norm weight, as
    under LoRA, autograd already keeps only x and rstd.)"""
    x = torch.randn(64, 32, requires_grad=True)
    norm = LlamaRMSNorm(32)
    row, stats = 64 * 32 * 4, 64 * 4
    assert saved_bytes(lambda: norm(x)) >= 2 * row + stats
    assert saved_bytes(lambda: rms_norm(x, norm.weight, 1e-6)) <= row + stats + 32 * 4
    gate, up = torch.randn(64, 32, requires_grad=True), torch.randn(64, 32, requires_grad=True)
    assert saved_bytes(lambda: F.silu(gate) * up) == 3 * row
    assert saved_bytes(lambda: silu_mul(gate, up)) == 2 * row


@pytest.mark.parametrize("method", ["lora", "full"])
def test_model_trains_as_transformers(tiny_random, method):
    """The tiny Llama with every norm and MLP lean (and LoRA fused, as the trainer sets it up):
    loss bit-identical, every trained parameter's gradient within 1e-5 of plain transformers +
    peft, frozen base weights without gradients."""
    ids = torch.randint(0, 500, (2, 32), generator=torch.Generator().manual_seed(1))
    results = []
    for lean in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_random)
        layers = model.config.num_hidden_layers
        if lean:
            assert use_lean_layers(model) == (2 * layers + 1, layers)
            assert use_lean_layers(model) == (0, 0)  # idempotent
        if method == "lora":
            model = apply_lora(model, LoraSettings(rank=4, alpha=8), seed=0)
            with torch.no_grad():  # B is zero at init: every gradient path exercised
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
            if lean:
                fuse_lora_layers(model)
        with (
            mock.patch.object(RMSNormFunction, "apply", wraps=RMSNormFunction.apply) as norms,
            mock.patch.object(SiluMulFunction, "apply", wraps=SiluMulFunction.apply) as mlps,
        ):
            loss = model(input_ids=ids, labels=ids).loss
        assert (norms.call_count, mlps.call_count) == ((2 * layers + 1, layers) if lean else (0, 0))
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        assert all(dict(model.named_parameters())[n].grad is None for n in frozen)
        results.append((loss.detach(), grads))
    (loss_ref, grads_ref), (loss_lean, grads_lean) = results
    assert torch.equal(loss_lean, loss_ref)
    assert grads_ref.keys() == grads_lean.keys() and grads_ref
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads_lean[name], g, rtol=0, atol=1e-5, msg=name)


def test_other_norms_and_activations_are_left_alone():
    gemma = torch.nn.Sequential(GemmaRMSNorm(16))
    assert use_lean_layers(gemma) == (0, 0)
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    gelu = LlamaMLP(
        LlamaConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, hidden_act="gelu")
    )
    assert use_lean_layers(torch.nn.Sequential(gelu)) == (0, 0)
    silu = LlamaMLP(
        LlamaConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, hidden_act="silu")
    )
    assert use_lean_layers(torch.nn.Sequential(silu)) == (0, 1)
