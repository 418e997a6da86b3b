"""The reference model a loss compares the policy with (DPO's, PPO's KL penalty).

``Reference`` runs without gradients, in eval mode: either the trained model with its adapters
disabled (LoRA: the frozen base is the reference, no second copy in memory), or a frozen copy of
the base loaded once (full and freeze fine-tuning, whose base weights move). A loss that needs one
holds it as an object and calls ``logits``; it never asks how the reference is made.
"""

from __future__ import annotations

import torch

from services.training.model.load import load_base
from services.training.spec.settings import Settings


class Reference:
    def __init__(self, model: torch.nn.Module, copy: torch.nn.Module | None = None) -> None:
        self.model = model  # the trained model (peft): used with its adapters disabled
        self.copy = copy  # a frozen copy of the base, or None

    @torch.no_grad()
    def logits(self, **model_kwargs) -> torch.Tensor:
        """The reference's logits ``(B, T, V)`` for ``model(**model_kwargs)``."""
        if self.copy is not None:
            return self.copy(**model_kwargs).logits
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                return self.model(**model_kwargs).logits
        finally:
            self.model.train(was_training)


def build_reference(settings: Settings, model: torch.nn.Module, device: torch.device) -> Reference:
    """The adapter-disabled ``model`` for LoRA, else a frozen copy of the base on ``device``."""
    if settings.method == "lora":
        return Reference(model)
    copy = load_base(settings, device)
    copy.eval().requires_grad_(False)
    return Reference(model, copy)
