"""A LoRA linear layer with one fused autograd function and the cheap backward order.

``z = x W^T + b + s (x A^T) B^T`` for ``x`` (m, d), frozen ``W`` (h, d), ``A`` (r, d), ``B`` (h, r).
With ``g = s dZ B`` (m, r), the backward computes

- ``dA = g^T x``: the transpose of ``X^T (dZ B)``; never forms the (d, h) product ``X^T dZ``,
- ``dB = s dZ^T (x A^T)``, from the (m, r) ``x A^T`` saved by the forward,
- ``dx = dZ W + g A``, accumulated into one buffer.

The forward adds the low-rank term into the base output in place (``addmm_``) instead of
allocating the (m, h) ``lora_B`` output, its scaled copy and their sum, and the backward needs no
(m, h) temporary either. The thin products are computed with the rank as the *rows* of the
result (``A x^T``, ``B^T dZ^T``, ``(x A^T)^T dZ``: (r, m) and (r, h)) and used transposed: MKL's
single-thread GEMM runs them 2-5x faster than the (m, r) / (h, r) forms at m ~ 2,000, r = 8
(measured for issue 4, BENCHMARKS.md "## SFT training"). Saved for backward: ``x``, ``x A^T``
and the weights (peft's layer saves the same). ``fused_lora_linear`` is numerically peft's
vanilla LoRA (no dropout, no DoRA), to float32 rounding.

``fuse_lora_layers(peft_model)`` switches peft's eligible ``lora.Linear`` layers to this function
(one active adapter, dropout 0, no DoRA / variant, float32 weights); the others are left as they
are. Measured in ``bench/bench_lora_backward.py`` (BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import types
from collections import Counter

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


class FusedLoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (m, d)
        xa_t = lora_a @ x2.t()  # (r, m): (x A^T)^T
        out = F.linear(x2, weight, bias)  # (m, h)
        out.addmm_(xa_t.t(), lora_b.t(), alpha=scaling)
        ctx.save_for_backward(x2, weight, lora_a, lora_b, xa_t)
        ctx.scaling, ctx.shape, ctx.has_bias = scaling, shape, bias is not None
        return out.reshape(*shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        x2, weight, lora_a, lora_b, xa_t = ctx.saved_tensors
        s = ctx.scaling
        dz = grad_out.reshape(-1, grad_out.shape[-1])  # (m, h)
        g_t = (lora_b.t() @ dz.t()).mul_(s)  # (r, m): (s dZ B)^T
        grad_a = g_t @ x2 if ctx.needs_input_grad[3] else None  # (r, d)
        grad_b = None
        if ctx.needs_input_grad[4]:
            grad_b = (xa_t @ dz).mul_(s).t().contiguous()  # (h, r): s dZ^T (x A^T)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (dz @ weight).addmm_(g_t.t(), lora_a).reshape(ctx.shape)  # (m, d)
        grad_w = dz.t() @ x2 if ctx.needs_input_grad[1] else None
        grad_bias = dz.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_bias, grad_a, grad_b, None


def fused_lora_linear(x, weight, bias, lora_a, lora_b, scaling: float) -> torch.Tensor:
    """``x W^T + b + scaling (x A^T) B^T`` with the fused backward."""
    return FusedLoraLinear.apply(x, weight, bias, lora_a, lora_b, scaling)


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    adapter = self.active_adapters[0]
    autocast = torch.is_autocast_enabled(x.device.type)
    if self.disable_adapters or self.merged or args or kwargs or autocast:
        return self._unfused_forward(x, *args, **kwargs)
    base = self.get_base_layer()
    return fused_lora_linear(
        x,
        base.weight,
        base.bias,
        self.lora_A[adapter].weight,
        self.lora_B[adapter].weight,
        self.scaling[adapter],
    )


def eligible(layer) -> bool:
    """A peft ``lora.Linear`` this function computes exactly."""
    from peft.tuners.lora import Linear

    if not isinstance(layer, Linear) or len(layer.active_adapters) != 1:
        return False
    adapter = layer.active_adapters[0]
    dropout = layer.lora_dropout[adapter]
    return (
        adapter in layer.lora_A
        and adapter not in getattr(layer, "lora_variant", {})
        and not getattr(layer, "fan_in_fan_out", False)
        and isinstance(dropout, torch.nn.Identity)
        and layer.lora_A[adapter].weight.dtype == torch.float32
        and layer.get_base_layer().weight.dtype == torch.float32
    )


def fuse_lora_layers(model: torch.nn.Module) -> int:
    """Route the eligible LoRA layers of ``model`` through the fused function; returns how many.
    The others (peft's parameter wrappers on MoE experts, DoRA, dropout, half weights, ...) run
    as peft runs them, logged by type."""
    from peft.tuners.lora import LoraLayer

    count = 0
    left: Counter[str] = Counter()
    for module in model.modules():
        if eligible(module) and not hasattr(module, "_unfused_forward"):
            module._unfused_forward = module.forward
            module.forward = types.MethodType(_fused_forward, module)
            count += 1
        elif isinstance(module, LoraLayer) and not hasattr(module, "_unfused_forward"):
            left[type(module).__name__] += 1
    logger.info("fused LoRA backward on %d layers", count)
    if left:
        logger.info(
            "fused LoRA off for %s: run as peft runs them",
            ", ".join(f"{n} x{c}" for n, c in sorted(left.items())),
        )
    return count
