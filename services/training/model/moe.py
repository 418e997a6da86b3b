"""Mixture-of-experts base models: the routers' load-balancing loss, and LoRA on the experts.

LLaMA-Factory's ``moe_aux_loss_coef`` sets a model's ``router_aux_loss_coef`` and
``output_router_logits`` so that transformers adds ``coef * aux_loss`` to the loss it computes from
``labels``. llamafleet computes its losses itself (packed rows, the LM head applied in chunks,
preference pairs), so ``RouterLoss`` takes the same quantity another way: forward hooks on the
router modules transformers itself records (``_can_record_outputs["router_logits"]``: Qwen3-MoE's
``Qwen3MoeTopKRouter``, Mixtral's router, ...) keep each router's logits of a forward that builds
a graph, and ``aux_loss`` passes them to the model's own ``load_balancing_loss_func`` (Switch
Transformer's loss: ``num_experts * sum_e f_e * P_e`` over every layer's tokens, ``f_e`` the
fraction of top-k assignments to expert ``e``, ``P_e`` its mean router probability) with the real
tokens' mask, padding excluded. The model is never asked for its own (``output_router_logits``
is switched off at load: with a 4-D packed mask its own computation would mis-shape the mask).

Forwards without a graph (a DPO reference, evaluation) are not recorded, and an evaluation loss
is the task loss alone. ``expert_parameters`` names the fused expert weights (transformers 5
keeps each MoE layer's experts as 3-D parameters, not ``nn.Linear``s) that peft's
``target_parameters`` adapts when a job's LoRA targets name ``experts``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)

EXPERTS = "experts"  # the target name that adapts the routed experts' fused weights


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "module", model)  # DDP
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT


def router_class(model: torch.nn.Module) -> tuple[type, int] | None:
    """(router module class, index of its logits in the module's output), or None."""
    recorded = getattr(_inner(model), "_can_record_outputs", None) or {}
    spec = recorded.get("router_logits")
    target = getattr(spec, "target_class", None)
    return (target, int(getattr(spec, "index", 0) or 0)) if target is not None else None


def num_experts(config) -> int:
    for key in ("num_experts", "num_local_experts", "n_routed_experts"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 1:
            return value
    return 0


def switch_off_own_router_loss(model: torch.nn.Module) -> None:
    """The model must not compute its router loss itself (see the module docstring)."""
    config = getattr(_inner(model), "config", None)
    if config is not None and getattr(config, "output_router_logits", False):
        logger.info("output_router_logits switched off: the loop computes the router loss")
        config.output_router_logits = False


class RouterLoss:
    """The router loss of ``model`` times ``coef``, over the forwards inside ``record()``."""

    def __init__(self, model: torch.nn.Module, coef: float) -> None:
        inner = _inner(model)
        found = router_class(inner)
        experts = num_experts(inner.config)
        if found is None or not experts:
            raise ValueError(
                f"moe_aux_loss_coef: {type(inner).__name__} has no routers to balance (it is "
                "not a mixture of experts)"
            )
        self.coef = coef
        self.num_experts = experts
        self.top_k = int(getattr(inner.config, "num_experts_per_tok", 2))
        self.loss_func = sys.modules[type(inner).__module__].load_balancing_loss_func
        cls, index = found
        self._logits: list[torch.Tensor] = []
        self._recording = False

        def hook(module, args, output):
            if self._recording and torch.is_grad_enabled():
                out = output[index] if isinstance(output, tuple) else output
                self._logits.append(out)

        routers = [m for m in inner.modules() if isinstance(m, cls)]
        self._handles = [m.register_forward_hook(hook) for m in routers]
        logger.info(
            "router loss: %d routers, %d experts, top-%d, coefficient %g",
            len(routers), experts, self.top_k, coef,
        )  # fmt: skip

    @contextlib.contextmanager
    def record(self) -> Iterator[None]:
        self._logits, self._recording = [], True
        try:
            yield
        finally:
            self._recording = False

    def aux_loss(self, token_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The recorded forward's load-balancing loss (unscaled), or None when none was
        recorded. ``token_mask`` (B, T) marks real tokens; None = every token is real."""
        logits, self._logits = self._logits, []
        if not logits:
            return None
        mask = None if token_mask is None else token_mask.to(torch.float32)
        return self.loss_func(tuple(logits), self.num_experts, self.top_k, mask)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def expert_parameters(model: torch.nn.Module) -> list[str]:
    """Suffixes (``experts.gate_up_proj``, ...) of the fused expert weights, for peft's
    ``target_parameters``; [] for a model without such experts."""
    names = set()
    for name, param in _inner(model).named_parameters():
        parts = name.split(".")
        if param.dim() == 3 and len(parts) >= 2 and parts[-2] == EXPERTS:
            names.add(f"{EXPERTS}.{parts[-1]}")
    return sorted(names)


def token_mask(inputs) -> torch.Tensor | None:
    """The real-token mask of a collated micro-batch (``ModelInputs`` or ``PairInputs``)."""
    inner = getattr(inputs, "inputs", inputs)
    return getattr(inner, "token_mask", None)
