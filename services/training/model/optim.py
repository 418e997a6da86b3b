"""Optimizer and learning-rate schedule of the recipes.

AdamW over the trainable parameters, with weight decay on matrices only (biases and norm weights
are not decayed, as in Transformers' Trainer). LoRA+ gives the ``lora_B`` matrices
``lr * loraplus_lr_ratio`` and embedding adapters ``loraplus_lr_embedding``. GaLore (and its
layer-wise form) replaces AdamW when the settings ask for it; another ``optim`` name (SGD,
Adafactor, bitsandbytes' 8-bit AdamW, ...) is built by Transformers' own ``optim`` mapping. The schedule comes
from ``transformers.get_scheduler`` by name (``recipes.SCHEDULERS`` maps the proto enum).
"""

from __future__ import annotations

import math

import torch
from transformers import get_scheduler

from services.training.model.methods import galore
from services.training.spec.settings import Settings


def param_groups(model: torch.nn.Module, settings: Settings) -> list[dict]:
    """AdamW parameter groups: decay / no decay, and LoRA+ groups when asked."""
    lr, wd = settings.learning_rate, settings.weight_decay
    ratio = settings.lora.loraplus_lr_ratio if settings.method == "lora" else None
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = wd if param.ndim >= 2 and "norm" not in name.lower() else 0.0
        group_lr = lr
        if ratio is not None:
            if "lora_embedding_B" in name or "lora_embedding_A" in name:
                group_lr = settings.lora.loraplus_lr_embedding
            elif "lora_B" in name:
                group_lr = lr * ratio
        groups.setdefault((group_lr, decay), []).append(param)
    return [
        {"params": params, "lr": group_lr, "weight_decay": decay}
        for (group_lr, decay), params in groups.items()
    ]


def build_optimizer(model: torch.nn.Module, settings: Settings) -> torch.optim.Optimizer:
    """AdamW (betas 0.9/0.999, eps 1e-8: the Transformers defaults)."""
    groups = param_groups(model, settings)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if settings.galore is not None:
        return galore_optimizer(model, settings, groups)
    if settings.optim != "adamw_torch":
        return named_optimizer(model, settings, groups)
    fused = next(iter(groups[0]["params"])).is_cuda
    return torch.optim.AdamW(groups, lr=settings.learning_rate, fused=fused or None)


def named_optimizer(
    model: torch.nn.Module, settings: Settings, groups: list[dict]
) -> torch.optim.Optimizer:
    """The optimizer Transformers' Trainer builds for ``optim`` (its own mapping: class and
    defaults, e.g. Adafactor without relative steps, bitsandbytes' 8-bit AdamW), over the same
    parameter groups (weight decay, LoRA+) as AdamW."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir="unused", optim=settings.optim, learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay, report_to="none", use_cpu=True,
    )  # fmt: skip
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return cls(groups, **kwargs)


def warmup_steps(settings: Settings, total_steps: int) -> int:
    """``warmup_steps`` when > 0, else ``ceil(warmup_ratio * total_steps)``."""
    if settings.warmup_steps > 0:
        return settings.warmup_steps
    return math.ceil(settings.warmup_ratio * total_steps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, settings: Settings, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The named schedule over ``total_steps`` optimizer steps."""
    return get_scheduler(
        settings.lr_scheduler,
        optimizer,
        num_warmup_steps=warmup_steps(settings, total_steps),
        num_training_steps=total_steps,
    )


def galore_optimizer(
    model: torch.nn.Module, settings: Settings, groups: list[dict]
) -> torch.optim.Optimizer:
    """GaLore-AdamW: the target matrices projected, every other parameter plain AdamW; layer-wise,
    one such optimizer per parameter, stepped in the backward pass."""
    g = settings.galore
    targets = galore.target_parameters(model, g.target_modules)
    by_id = {id(p): n for n, p in model.named_parameters()}
    split = []
    for group in groups:
        projected = [p for p in group["params"] if by_id[id(p)] in targets]
        plain = [p for p in group["params"] if by_id[id(p)] not in targets]
        if plain:
            split.append({**group, "params": plain})
        if projected:
            split.append(
                {**group, "params": projected, "rank": g.rank, "scale": g.scale,
                 "update_interval": g.update_interval, "projection": g.projection}
            )  # fmt: skip
    if g.layerwise:
        return galore.layerwise(split, lr=settings.learning_rate)
    return galore.GaLoreAdamW(split, lr=settings.learning_rate)
