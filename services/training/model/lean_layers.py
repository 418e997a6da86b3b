"""RMSNorm and the SwiGLU product as autograd functions that keep less for the backward pass.

Plain autograd through a Llama-family MLP keeps, per token, the gate projection, its SiLU, the up
projection and their product (the product again as the down projection's input); through an
RMSNorm whose weight trains, the input *and* its normalised copy. The dropped tensors are one
cheap elementwise pass away from the kept ones, so the functions here recompute them instead:

- ``silu_mul(gate, up)`` = ``silu(gate) * up`` keeps ``gate`` and ``up`` (not ``silu(gate)``):
  on the benchmark model (MLP width 1,408) 1,408 of the ~10,500 floats a layer keeps per token;
- ``rms_norm(x, weight, eps)`` keeps ``x`` and the per-row ``1 / rms`` (not ``x / rms``, which
  autograd keeps only when the weight trains: under LoRA it saves nothing), and its backward is
  fewer passes over the activations than autograd's chain of pow / mean / rsqrt / mul.

The forwards run transformers' own operations in the same order (``LlamaRMSNorm.forward``,
``act_fn(gate) * up``), so outputs are bit-identical; the gradients are the same formulas as
autograd's, to rounding.

Why hand-written: Liger-Kernel's fused RMSNorm and SwiGLU do this with Triton kernels, on GPUs
only; PyTorch's ``F.rms_norm`` on the CPU is the composite of the same elementwise ops and keeps
the same tensors as transformers' module.

``use_lean_layers(model)`` routes the model's RMSNorm and SwiGLU MLP modules through these
functions, but only modules whose ``forward`` is, bytecode for bytecode, transformers'
``LlamaRMSNorm.forward`` / ``LlamaMLP.forward`` (Mistral, Qwen2/3 and Phi-3's norms are copies of
them) with a SiLU activation; any other module (Gemma's ``1 + weight`` norm, a GELU MLP, remote
code) is left as it is. It knows nothing about LoRA: the projections are called as modules.
"""

from __future__ import annotations

import logging
import types
from collections import Counter

import torch
import torch.nn.functional as F
from transformers.activations import SiLUActivation
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

logger = logging.getLogger(__name__)


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float):
        dtype = x.dtype
        x32 = x.to(torch.float32)
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
        out = weight * (x32 * rstd).to(dtype)
        ctx.save_for_backward(x, weight, rstd)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, rstd = ctx.saved_tensors
        xhat = x.to(torch.float32) * rstd  # (..., d): recomputed, not kept
        grad_weight = None
        if ctx.needs_input_grad[1]:
            rows = grad_out * xhat.to(x.dtype)
            grad_weight = rows.reshape(-1, rows.shape[-1]).sum(0)  # (d,)
        grad_x = None
        if ctx.needs_input_grad[0]:
            g = (grad_out * weight).to(torch.float32)  # dL/dxhat
            # d(x * rstd)/dx: rstd * (g - xhat * mean(g * xhat))
            dot = (g * xhat).mean(-1, keepdim=True)
            grad_x = g.sub_(xhat.mul_(dot)).mul_(rstd).to(x.dtype)
        return grad_x, grad_weight, None


class SiluMulFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad_out):
        gate, up = ctx.saved_tensors
        grad_up = F.silu(gate).mul_(grad_out) if ctx.needs_input_grad[1] else None
        grad_gate = None
        if ctx.needs_input_grad[0]:
            grad_gate = torch.ops.aten.silu_backward(grad_out * up, gate)
        return grad_gate, grad_up


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * x / sqrt(mean(x^2) + eps)`` over the last dim (float32 statistics)."""
    return RMSNormFunction.apply(x, weight, eps)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` (the SwiGLU product)."""
    return SiluMulFunction.apply(gate, up)


def _norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


def _same_code(module: torch.nn.Module, reference) -> bool:
    code = getattr(type(module).forward, "__code__", None)
    ref = reference.forward.__code__
    return code is not None and (code.co_code, code.co_names, code.co_consts) == (
        ref.co_code,
        ref.co_names,
        ref.co_consts,
    )


def is_llama_rms_norm(module: torch.nn.Module) -> bool:
    return _same_code(module, LlamaRMSNorm) and hasattr(module, "variance_epsilon")


def is_swiglu_mlp(module: torch.nn.Module) -> bool:
    act = getattr(module, "act_fn", None)
    return _same_code(module, LlamaMLP) and isinstance(act, (SiLUActivation, torch.nn.SiLU))


def use_lean_layers(model: torch.nn.Module) -> tuple[int, int]:
    """Route eligible RMSNorm and SwiGLU MLP modules through the lean functions (idempotent);
    returns how many of each."""
    norms = mlps = 0
    left: Counter[str] = Counter()  # norms and MLPs run as transformers runs them
    for module in model.modules():
        if hasattr(module, "_plain_forward"):
            continue
        if is_llama_rms_norm(module):
            module._plain_forward = module.forward
            module.forward = types.MethodType(_norm_forward, module)
            norms += 1
        elif is_swiglu_mlp(module):
            module._plain_forward = module.forward
            module.forward = types.MethodType(_mlp_forward, module)
            mlps += 1
        elif type(module).__name__.endswith(("RMSNorm", "MLP", "Experts", "MoeBlock")):
            left[type(module).__name__] += 1
    logger.info("lean backward on %d RMSNorm and %d SwiGLU modules", norms, mlps)
    if left:
        logger.info(
            "lean backward off for %s: not transformers' Llama RMSNorm / SiLU-MLP code, run as "
            "transformers runs them",
            ", ".join(f"{n} x{c}" for n, c in sorted(left.items())),
        )
    return norms, mlps
