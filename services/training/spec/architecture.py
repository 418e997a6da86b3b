"""What a job asks of its base model's architecture, checked from ``config.json`` (no torch).

- ``moe_aux_loss_coef`` needs a base model with routers (``num_experts`` or ``num_local_experts``
  in its config: Qwen2/3-MoE, Mixtral, ...), a finite value >= 0, and a stage whose loss the
  shared loop computes (pt, sft, rm, dpo); ``ppo`` does not add it (``Unimplemented``).
- Packed and padded rows (pt, sft, rm, dpo) need attention that is causal within each example:
  bidirectional attention (``use_bidirectional_attention``) and chunked attention
  (``attention_chunk_size``, Llama 4) are refused, as ``model.attention.mask_plan`` refuses them
  at load. Sliding windows and soft-capping are handled there, exactly.

It reads the config only; the per-family decisions that need the model (which layers are lean,
fused, split) are the model package's, logged at load.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from llamafleet.training.v1 import training_pb2 as tpb

from services.common.errors import FieldViolation, Unimplemented

ROUTER_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")


def read_config(base: Path | None) -> dict | None:
    """The base model's ``config.json`` (its text part for a multimodal one), or None."""
    if base is None:
        return None
    try:
        config = json.loads((base / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    text = config.get("text_config")
    return text if isinstance(text, dict) else config


def has_routers(config: dict) -> bool:
    return any(isinstance(config.get(k), int) and config[k] > 1 for k in ROUTER_KEYS)


def check_architecture(spec: tpb.TrainingJobSpec, base: Path | None, check) -> None:
    """Add a violation through ``check(ok, path, description)`` for each bad field; raise
    ``Unimplemented`` for what this version does not train."""
    config = read_config(base)
    ft = spec.finetuning
    if ft.HasField("moe_aux_loss_coef"):
        coef = ft.moe_aux_loss_coef
        path = "spec.finetuning.moe_aux_loss_coef"
        check(math.isfinite(coef) and coef >= 0, path, "must be a finite number >= 0")
        if coef and spec.stage in (tpb.STAGE_PPO, tpb.STAGE_GRPO, tpb.STAGE_KTO):
            stage = tpb.Stage.Name(spec.stage)
            raise Unimplemented(
                f"{path}: the router loss in {stage} is not implemented yet (pt, sft, rm and "
                "dpo add it)",
                reason="NOT_IMPLEMENTED",
                violations=[FieldViolation(path, f"not implemented in {stage}")],
            )
        if coef and config is not None:
            check(
                has_routers(config),
                path,
                f"the base model ({config.get('model_type', 'unknown type')}) has no routers "
                "(no num_experts / num_local_experts in its config.json): it is not a "
                "mixture of experts",
            )
    if config is None or spec.stage in (tpb.STAGE_PPO, tpb.STAGE_GRPO):
        return
    name = config.get("model_type", "the base model")
    check(
        not config.get("use_bidirectional_attention"),
        "spec.base_model",
        f"{name} uses bidirectional attention: packed and padded training rows need attention "
        "that is causal within each example",
    )
    check(
        not config.get("attention_chunk_size"),
        "spec.base_model",
        f"{name} uses chunked attention (attention_chunk_size), which llamafleet's packed rows "
        "do not reproduce",
    )
