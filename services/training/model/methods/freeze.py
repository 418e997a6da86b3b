"""Freeze (partial) fine-tuning: train the last (or first) N decoder layers, the rest frozen.

``trainable_layers`` > 0 picks the last N decoder layers, < 0 the first N. Inside those layers,
``trainable_modules`` narrows training to parameters under modules of those names (``mlp``,
``self_attn``, ``q_proj``, ...); empty means the whole layer. ``extra_modules`` names modules
outside the decoder layers trained as well (``embed_tokens``, ``norm``, ``lm_head``). LLaMA-Pro
passes its new block indices as ``layers`` instead of a count.

Names are matched against whole dotted components of parameter names; a name that matches no
module is an error listing the names that exist, like LoRA's target modules.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import torch

from services.training.spec.settings import FreezeSettings

logger = logging.getLogger(__name__)

LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")


def num_layers(model: torch.nn.Module) -> int:
    """Number of decoder layers (``config.num_hidden_layers``)."""
    return int(model.config.num_hidden_layers)


def chosen_layers(total: int, trainable_layers: int) -> list[int]:
    """Indices of the trained layers: the last ``n`` for ``n > 0``, the first ``-n`` for ``n < 0``."""
    n = trainable_layers or 2
    if abs(n) > total:
        raise ValueError(
            f"freeze.trainable_layers={trainable_layers}: the model has only {total} layers"
        )
    return list(range(total - n, total)) if n > 0 else list(range(-n))


def _components(name: str) -> set[str]:
    return set(name.split("."))


def trainable_names(
    model: torch.nn.Module, cfg: FreezeSettings, layers: Iterable[int] | None = None
) -> set[str]:
    """Names of the parameters that ``cfg`` trains (``layers`` overrides the layer count)."""
    chosen = set(
        chosen_layers(num_layers(model), cfg.trainable_layers) if layers is None else layers
    )
    names = [n for n, _ in model.named_parameters()]
    inner = {c for n in names if (m := LAYER.search(n)) for c in _components(m.group(2))}
    outer = {c for n in names if not LAYER.search(n) for c in _components(n)}
    missing = [m for m in cfg.trainable_modules if m not in inner]
    missing += [m for m in cfg.extra_modules if m not in outer]
    if missing:
        raise ValueError(
            f"freeze modules {missing} are not in the model; inside the layers: "
            f"{sorted(c for c in inner if not c.isdigit() and c != 'weight')}, outside: "
            f"{sorted(c for c in outer if not c.isdigit() and c != 'weight')}"
        )
    chosen_names = set()
    for name in names:
        match = LAYER.search(name)
        if match:
            if int(match.group(1)) in chosen and (
                not cfg.trainable_modules
                or _components(match.group(2)) & set(cfg.trainable_modules)
            ):
                chosen_names.add(name)
        elif _components(name) & set(cfg.extra_modules):
            chosen_names.add(name)
    return chosen_names


def apply_freeze(
    model: torch.nn.Module, cfg: FreezeSettings, layers: Iterable[int] | None = None
) -> torch.nn.Module:
    """Set ``requires_grad`` on exactly the parameters ``cfg`` trains; returns ``model``."""
    names = trainable_names(model, cfg, layers)
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    if not names:
        raise ValueError("freeze: no parameter is trained; widen trainable_modules")
    logger.info(
        "freeze: training %d parameter tensors (%d parameters)",
        len(names),
        sum(p.numel() for n, p in model.named_parameters() if n in names),
    )
    return model
