"""Attention over packed rows, as each model family computes it on one example alone.

A packed row holds several examples; attention must never cross them and must, inside each, be
exactly what the family's own attention computes on that example alone:

- ``varlen_sdpa_attention`` (registered as ``llamafleet_varlen``, what ``sdpa`` loads as):
  every row of a micro-batch concatenated, and per example (``cu_seq_lens_q``) causal SDPA; on a
  sliding-window layer (the ``sliding_window`` transformers passes for Mistral, Phi-3, Qwen2 and
  Gemma 3's local layers) a key is seen only when ``query - key < window``, as transformers'
  ``sliding_window_overlay`` says; with attention-logit soft-capping (``softcap``, which Gemma 2
  passes: SDPA has no soft-capping) the segment's scores are computed as transformers' eager
  attention does (``tanh(s / cap) * cap``, masked, float32 softmax).
- ``mask_plan(config)`` says which masks the *eager* path (an explicit 4-D block-diagonal mask
  over padded rows, ``loop.collate``) must build: one causal mask; one windowed mask for a model
  whose every layer slides (Mistral, Phi-3, Mixtral); or one per layer type, ``{"full_attention":
  ..., "sliding_attention": ...}``, for a model with ``config.layer_types`` (Gemma 3, Qwen2 with
  ``use_sliding_window``), whose forward takes such a mapping as it is.

Refused (``PackingUnsupported``): bidirectional attention (Gemma 3 used as an encoder) and
chunked attention (Llama 4's ``attention_chunk_size``), whose masks are not block-causal. Final
logit soft-capping is applied by the model's head, after attention, and needs nothing here.
FlashAttention-2's varlen kernel takes windows and soft-capping itself (untested here: no GPU).

This module knows nothing about data or recipes; ``loop.collate`` builds the masks it plans.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

logger = logging.getLogger(__name__)

# No "sdpa" in the name: transformers would check it as SDPA and refuse the models it keeps off
# SDPA for their soft-capping (Gemma 2), which this kernel computes itself.
VARLEN_SDPA = "llamafleet_varlen"
FULL, SLIDING = "full_attention", "sliding_attention"


class PackingUnsupported(ValueError):
    """The model's attention is not block-causal per example; packed rows cannot reproduce it."""


def window_causal(n: int, window: int | None, device: torch.device) -> torch.Tensor:
    """(n, n) bool: query q sees key k iff k <= q and (no window or q - k < window)."""
    q = torch.arange(n, device=device)[:, None]
    k = torch.arange(n, device=device)[None, :]
    allowed = k <= q
    return allowed if window is None else allowed & (q - k < window)


def _capped_attention(query, key, value, scaling, dropout, window, softcap, training):
    """Soft-capped attention of one segment, as transformers' ``eager_attention_forward``."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (1, H, n, n)
    scores = torch.tanh(scores / softcap) * softcap
    allowed = window_causal(query.shape[2], window, query.device)
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=training)
    return torch.matmul(probs, value)  # (1, H, n, D)


def varlen_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (1, H, N, D): every example of the micro-batch, concatenated
    key: torch.Tensor,  # (1, Hkv, N, D)
    value: torch.Tensor,  # (1, Hkv, N, D)
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal SDPA inside each ``[cu[i], cu[i+1])`` segment; returns (1, N, H, D) contiguous.

    On the CPU grouped-query attention goes to the kernel as it is (``enable_gqa``): keys and
    values are not repeated per query head, so neither the copies nor the backward's sum over them
    exist, and autograd keeps the (Hkv)-head tensors. (On CUDA they are still repeated: there the
    memory-efficient kernel, the one float32 gets, has no GQA and SDPA would fall back to the
    math kernel's T x T scores.) The kernels write each segment's output in its query's
    memory layout, which in the model is (1, n, H, D) (a transposed projection), so concatenating
    the transposed outputs is the one copy into the (1, N, H, D) the output projection reads.
    A segment no longer than the window is plain causal attention (the window hides nothing)."""
    if cu_seq_lens_q is None:  # not packed (generation, plain calls): ordinary causal attention
        bounds = [0, query.shape[2]]
    else:
        bounds = cu_seq_lens_q.tolist()
    groups = query.shape[1] // key.shape[1]
    gqa = groups > 1 and query.device.type == "cpu"
    if groups > 1 and not gqa and softcap is None:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    p = dropout if module.training else 0.0
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    outputs = []
    for s, e in zip(bounds, bounds[1:], strict=False):
        q, k, v = query[:, :, s:e], key[:, :, s:e], value[:, :, s:e]
        window = sliding_window if sliding_window is not None and e - s > sliding_window else None
        if softcap is not None:
            out = _capped_attention(q, k, v, scale, p, window, softcap, module.training)
        elif window is None:
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=scaling, dropout_p=p, enable_gqa=gqa
            )
        else:
            mask = window_causal(e - s, window, q.device)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=scaling, dropout_p=p, enable_gqa=gqa
            )
        outputs.append(out.transpose(1, 2))  # (1, n, H, D)
    return torch.cat(outputs, dim=1).contiguous(), None  # (1, N, H, D)


AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_attention)


def model_attention(attention: str) -> str:
    """The ``attn_implementation`` a setting loads with (sdpa -> varlen SDPA on packed rows)."""
    return VARLEN_SDPA if attention == "sdpa" else attention


@dataclass(frozen=True)
class MaskPlan:
    """The masks of a padded (eager) micro-batch: ``window`` (None: no layer slides) and whether
    the model takes one mask per layer type (``{"full_attention", "sliding_attention"}``)."""

    window: int | None = None
    by_layer_type: bool = False


def mask_plan(config) -> MaskPlan:
    """What ``config``'s layers attend to, as ``loop.collate`` must mask it on packed rows; raises
    ``PackingUnsupported`` for attention that is not causal per example."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    name = getattr(config, "model_type", "model")
    if getattr(config, "use_bidirectional_attention", False):
        raise PackingUnsupported(
            f"{name}: bidirectional attention (use_bidirectional_attention) is not causal; "
            "packed rows cannot reproduce it"
        )
    if getattr(config, "attention_chunk_size", None):
        raise PackingUnsupported(
            f"{name}: chunked attention (attention_chunk_size) is not supported on packed rows"
        )
    window = getattr(config, "sliding_window", None)
    if not window:
        return MaskPlan()
    types = getattr(config, "layer_types", None)
    if types:
        if SLIDING not in types:
            return MaskPlan()
        return MaskPlan(int(window), by_layer_type=True)
    return MaskPlan(int(window))  # every layer slides
