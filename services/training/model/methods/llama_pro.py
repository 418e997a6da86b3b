"""LLaMA-Pro block expansion: interleave identity copies of decoder blocks into a model.

With ``L`` layers and ``n`` new blocks (``n`` divides ``L``), after every ``L / n`` original
layers a copy of the layer just before is inserted, with the output projections of its attention
(``o_proj``) and MLP (``down_proj``) set to zero. A pre-norm decoder block adds its attention and
MLP outputs to the residual stream, so a block whose output projections are zero is the identity:
the expanded model computes exactly what the original did. Training then updates the new blocks
only: with FREEZE every parameter of them (``freeze.apply_freeze`` with their indices), with LoRA
adapters on their linear layers only (``new_blocks`` tells ``lora.lora_config`` which), as
LLaMA-Factory's ``find_expanded_modules`` does.

The expanded model is an ordinary model with ``num_hidden_layers = L + n``; ``save_pretrained``
writes a normal Hugging Face folder. Supports decoders laid out as ``model.layers[i]`` with
``self_attn.o_proj`` and ``mlp.down_proj`` (Llama, Qwen2/3, Mistral, Phi-3, Gemma 3: Gemma's
post-attention and post-MLP norms of a zero vector are zero) or, for a mixture of experts, an
``mlp.experts`` module whose ``down_proj`` holds every expert's output projection (Qwen3-MoE,
Mixtral in transformers 5) plus, where present, a shared expert's ``down_proj``: zero experts
give a zero MLP output whatever the router picks. Any other layout is refused by name.
"""

from __future__ import annotations

import copy
import logging

import torch

logger = logging.getLogger(__name__)

ATTENTION_OUT = "self_attn.o_proj"
MLP_OUT = ("mlp.down_proj", "mlp.experts.down_proj", "mlp.shared_expert.down_proj")
NEW_BLOCKS_ATTR = "llama_pro_new_blocks"  # set on an expanded model (not saved in its config)


def new_block_indices(num_layers: int, num_expand: int) -> list[int]:
    """Indices, in the expanded model, of the inserted blocks."""
    check(num_layers, num_expand)
    group = num_layers // num_expand
    return [(i + 1) * (group + 1) - 1 for i in range(num_expand)]


def check(num_layers: int, num_expand: int) -> None:
    if num_expand <= 0 or num_layers % num_expand:
        raise ValueError(
            f"llama_pro.num_expand={num_expand} must be > 0 and divide the model's "
            f"{num_layers} layers"
        )


def output_projections(block: torch.nn.Module) -> list[torch.Tensor]:
    """The weights (and biases) whose zeroing makes ``block`` the identity; raises ``ValueError``
    for a block laid out otherwise."""
    found = []
    for path in (ATTENTION_OUT, *MLP_OUT):
        parent, _, name = path.rpartition(".")
        try:
            owner = block.get_submodule(parent)
        except AttributeError:
            continue
        target = getattr(owner, name, None)
        if isinstance(target, torch.nn.Parameter):  # fused experts: (E, hidden, inner)
            found.append(target)
        elif target is not None and hasattr(target, "weight"):
            found.append(target.weight)
            if getattr(target, "bias", None) is not None:
                found.append(target.bias)
    names = {n for n, _ in block.named_modules()} | {n for n, _ in block.named_parameters()}
    has_attention = any(n == ATTENTION_OUT or n.startswith(ATTENTION_OUT + ".") for n in names)
    has_mlp = any(n.startswith(MLP_OUT[:2]) for n in names)
    if not (has_attention and has_mlp):
        raise ValueError(
            f"LLaMA-Pro needs decoder blocks with {ATTENTION_OUT} and mlp.down_proj (or MoE "
            f"experts' down_proj); {type(block).__name__} has neither layout"
        )
    return found


def expand(model: torch.nn.Module, num_expand: int) -> list[int]:
    """Insert ``num_expand`` identity blocks into ``model`` in place; returns their indices."""
    layers = model.model.layers
    output_projections(layers[0])  # refuse an unknown layout before copying anything
    total = len(layers)
    new_ids = new_block_indices(total, num_expand)
    group = total // num_expand
    expanded: list[torch.nn.Module] = []
    for i, layer in enumerate(layers):
        expanded.append(layer)
        if (i + 1) % group == 0:
            block = copy.deepcopy(layer)
            with torch.no_grad():
                for tensor in output_projections(block):
                    tensor.zero_()
            expanded.append(block)
    for index, layer in enumerate(expanded):
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = index
    model.model.layers = torch.nn.ModuleList(expanded)
    config = model.config
    if getattr(config, "layer_types", None):
        types = list(config.layer_types)
        for index in new_ids:  # a copy keeps its source's attention type
            types.insert(index, types[index - 1])
        config.layer_types = types
    config.num_hidden_layers = len(expanded)
    setattr(model, NEW_BLOCKS_ATTR, tuple(new_ids))
    logger.info("LLaMA-Pro: %d -> %d layers, new blocks %s", total, len(expanded), new_ids)
    return new_ids


def mark_expanded(model: torch.nn.Module, num_expand: int) -> list[int]:
    """A base already expanded by ``num_expand`` blocks (LLaMA-Factory's ``scripts/llama_pro.py``
    output, trained with ``use_llama_pro``): mark the last block of each of the ``num_expand``
    equal groups as new, as LLaMA-Factory's trainable layer ids
    ``range(stride - 1, L, stride)`` with ``stride = L / num_expand``."""
    total = len(model.model.layers)
    if total % num_expand or total <= num_expand:
        raise ValueError(
            f"use_llama_pro: {num_expand} new blocks must divide the model's {total} layers"
        )
    stride = total // num_expand
    ids = list(range(stride - 1, total, stride))
    setattr(model, NEW_BLOCKS_ATTR, tuple(ids))
    logger.info("LLaMA-Pro: the base is already expanded; training blocks %s", ids)
    return ids


def new_blocks(model: torch.nn.Module) -> tuple[int, ...]:
    """Indices of the blocks ``expand`` inserted into ``model``; () when it was not expanded."""
    return tuple(getattr(model, NEW_BLOCKS_ATTR, ()))
