"""The reference model a loss compares the policy with (DPO's, PPO's KL penalty).

``Reference`` runs without gradients, in eval mode: either the trained model with its adapters
disabled (LoRA: the frozen base is the reference, no second copy in memory), or, for a LoRA job
that continues a starting adapter (an SFT job's), the same backbone under a second, frozen copy of
that adapter (``lora.REFERENCE_ADAPTER``: the reference is base + the starting adapter, as TRL's
``DPOTrainer`` does for a PeftModel with a pretrained adapter), or a frozen copy of the base
loaded once (full and freeze fine-tuning, whose base weights move). With ``create_new_adapter``
the starting adapter is merged into the base, so the adapter-disabled model is already base + it. A loss that needs one
holds it as an object and calls ``logits``; it never asks how the reference is made.
"""

from __future__ import annotations

import torch

from services.training.model import lora
from services.training.model.load import load_base
from services.training.spec.settings import Settings


class Reference:
    def __init__(
        self, model: torch.nn.Module, copy: torch.nn.Module | None = None, adapter: str = ""
    ) -> None:
        self.model = model  # the trained model (peft): used with its adapters disabled
        self.copy = copy  # a frozen copy of the base, or None
        self.adapter = adapter  # a frozen adapter of ``model`` that is the reference, or ""

    @torch.no_grad()
    def logits(self, **model_kwargs) -> torch.Tensor:
        """The reference's logits ``(B, T, V)`` for ``model(**model_kwargs)``."""
        if self.copy is not None:
            return self.copy(**model_kwargs).logits
        was_training = self.model.training
        self.model.eval()
        try:
            if self.adapter:
                return self._with_adapter(model_kwargs)
            with self.model.disable_adapter():
                return self.model(**model_kwargs).logits
        finally:
            self.model.train(was_training)

    def _with_adapter(self, model_kwargs: dict) -> torch.Tensor:
        peft_model = self.model
        active = peft_model.active_adapter
        peft_model.set_adapter(self.adapter)  # peft marks the active adapter trainable:
        try:
            return peft_model(**model_kwargs).logits
        finally:
            peft_model.set_adapter(active)  # back: the trained one trainable, the copy frozen


def build_reference(settings: Settings, model: torch.nn.Module, device: torch.device) -> Reference:
    """The adapter-disabled ``model`` for LoRA, else a frozen copy of the base on ``device``."""
    if settings.method == "lora":
        return lora_reference(settings, model)
    copy = load_base(settings, device)
    copy.eval().requires_grad_(False)
    return Reference(model, copy)


def lora_reference(settings: Settings, model: torch.nn.Module) -> Reference:
    """The reference of a LoRA ``model`` (a ``PeftModel``): base + the starting adapter as a
    frozen second adapter when the job continues one, else the adapter-disabled base."""
    if settings.init_adapter and not settings.create_new_adapter:
        lora.add_reference_adapter(model, settings.init_adapter)
        return Reference(model, adapter=lora.REFERENCE_ADAPTER)
    return Reference(model)
