"""RoPE scaling: stretch a model's rotary position embeddings to a longer context.

``rope_scaling(config, rope_type, max_length)`` sets ``config.rope_parameters`` (transformers 5's
home of what older configs called ``rope_scaling``) for the requested context length:

- ``linear``: positions divided by ``factor`` (position interpolation); ``max_position_embeddings``
  becomes ``max_length``.
- ``dynamic``: NTK-aware base change, recomputed when a sequence grows past the original length;
  ``max_position_embeddings`` stays the original length, which is the threshold it scales from.
- ``yarn`` and ``llama3``: frequency-band interpolation with ``original_max_position_embeddings``
  kept in the parameters and ``max_position_embeddings`` set to ``max_length``.

``factor = ceil(max_length / original)`` (as LLaMA-Factory does), at least 1. Asking for a length
the model already covers leaves the config untouched. The config's own ``rope_theta`` is kept.

A model with RoPE parameters per layer type (Gemma 3: ``{"full_attention": ...,
"sliding_attention": ...}``) has its global layers' RoPE scaled and its sliding-window layers'
left as they are, as Google's long-context Gemma 3 configs do: a local layer never sees a key
further than its window, so its positions need no stretching.
"""

from __future__ import annotations

import logging
import math

logger = logging.getLogger(__name__)

ROPE_TYPES = ("linear", "dynamic", "yarn", "llama3")
GLOBAL = "full_attention"  # the layer type scaled when RoPE parameters are per layer type


def scaling_factor(original: int, max_length: int) -> float:
    return float(max(1, math.ceil(max_length / original)))


def rope_scaling(config, rope_type: str, max_length: int) -> bool:
    """Scale ``config`` (in place) for ``max_length`` tokens; False when no scaling is needed."""
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"unknown RoPE scaling type {rope_type!r}; one of {', '.join(ROPE_TYPES)}")
    stored = dict(getattr(config, "rope_parameters", None) or {})
    per_type = bool(stored) and all(isinstance(v, dict) for v in stored.values())
    if per_type and GLOBAL not in stored:
        raise ValueError(
            f"RoPE parameters per layer type without {GLOBAL!r} ({sorted(stored)}): which layers "
            "to scale is unknown"
        )
    params = dict(stored[GLOBAL]) if per_type else stored
    if params.get("rope_type", "default") != "default":
        raise ValueError(
            f"the model already uses {params['rope_type']!r} RoPE scaling; it is not stacked"
        )
    original = int(config.max_position_embeddings)
    if max_length <= original:
        logger.info("RoPE scaling: %d tokens fit the model's %d; unchanged", max_length, original)
        return False
    factor = scaling_factor(original, max_length)
    params.update(rope_type=rope_type, factor=factor)
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10_000.0))
    if rope_type in ("yarn", "llama3"):
        params["original_max_position_embeddings"] = original
    if rope_type == "llama3":  # Meta's Llama 3.1 band limits
        params.update(low_freq_factor=1.0, high_freq_factor=4.0)
    config.rope_parameters = {**stored, GLOBAL: params} if per_type else params
    if rope_type != "dynamic":
        config.max_position_embeddings = original * int(factor)
    logger.info("RoPE scaling: %s, factor %g, %d -> %d tokens", rope_type, factor, original,
                original * int(factor))  # fmt: skip
    return True
