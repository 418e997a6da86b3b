"""The Train form -> LLaMA-Factory flat YAML -> ``TrainingJobSpec``.

The browser sends the form as a mapping of LLaMA-Factory keys. ``to_yaml`` keeps the keys that
apply to the chosen stage and method, drops empty fields, and writes the flat YAML the user sees
and downloads; ``to_spec`` reads that same text with ``lf_config`` (the reader of
``llamafleet train``), so what is shown is exactly what is submitted.
"""

from __future__ import annotations

from typing import Any

import yaml

from llamafleet.lf_config import FLAT_KEYS, ConfigFileError, from_flat, from_native, is_native
from llamafleet.training.v1 import training_pb2 as pb

STAGES = ("pt", "sft", "rm", "dpo", "ppo", "grpo")
METHODS = ("lora", "freeze", "full")

# The rollout and reward keys both online RL stages read (sampling and scoring by the fleets).
RL_KEYS = ("reward_scorer", "reward_model", "max_new_tokens", "temperature", "top_p")
# Keys that only mean something for some stages or one method; the rest always apply.
STAGE_KEYS = {
    "dpo": ("pref_beta", "pref_loss", "pref_ftx", "dpo_label_smoothing", "simpo_gamma"),
    "ppo": (*RL_KEYS, "ppo_epochs", "ppo_target"),
    # TRL GRPOConfig spellings (lf_keys): num_iterations is GRPO's ppo_epochs
    "grpo": (*RL_KEYS, "num_generations", "num_iterations", "loss_type", "epsilon",
             "epsilon_high", "beta", "scale_rewards", "mask_truncated_completions"),
}  # fmt: skip
METHOD_KEYS = {
    "lora": ("lora_rank", "lora_alpha", "lora_dropout", "lora_target", "use_rslora", "use_dora",
             "pissa_init", "loraplus_lr_ratio", "quantization_bit"),
    "freeze": ("freeze_trainable_layers", "freeze_trainable_modules"),
    "full": ("use_galore", "galore_rank"),
}  # fmt: skip

# What the form starts with (LLaMA-Factory's web UI defaults, scaled for a first run).
DEFAULTS: dict[str, Any] = {
    "stage": "sft",
    "finetuning_type": "lora",
    "template": "",
    "cutoff_len": 1024,
    "learning_rate": 1.0e-4,
    "num_train_epochs": 3.0,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 4,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.0,
    "max_grad_norm": 1.0,
    "logging_steps": 5,
    "save_steps": 0,
    "val_size": 0.0,
    "lora_rank": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "lora_target": "all",
    "freeze_trainable_layers": 2,
    "freeze_trainable_modules": "all",
    "pref_beta": 0.1,
    "pref_loss": "sigmoid",
    "reward_scorer": "",
    "ppo_epochs": 4,
    "max_new_tokens": 64,
    # grpo: TRL's GRPOConfig defaults, with llamafleet's loss aggregation default (token-mean)
    "num_generations": 8,
    "num_iterations": 1,
    "loss_type": "token-mean",
    "epsilon": 0.2,
    "beta": 0.0,
    "scale_rewards": "group",
}


class FormError(ValueError):
    """A form value is wrong; the message names the field."""


def to_flat(form: dict[str, Any]) -> dict[str, Any]:
    """The flat LLaMA-Factory mapping of a form: only keys that apply, no empty values."""
    stage = str(form.get("stage") or "sft")
    method = str(form.get("finetuning_type") or "lora")
    if stage not in STAGES:
        raise FormError(f"stage: {stage!r} is not one of {', '.join(STAGES)}")
    if method not in METHODS:
        raise FormError(f"finetuning_type: {method!r} is not one of {', '.join(METHODS)}")
    skip = {k for s, keys in STAGE_KEYS.items() if s != stage for k in keys}
    skip -= set(STAGE_KEYS.get(stage, ()))  # a key shared with another stage stays
    skip |= {k for m, keys in METHOD_KEYS.items() if m != method for k in keys}
    flat: dict[str, Any] = {}
    for key, value in form.items():
        if key in skip or value is None or (isinstance(value, str) and not value.strip()):
            continue
        if key not in FLAT_KEYS:
            raise FormError(f"{key}: not a LLaMA-Factory key llamafleet reads")
        if value is False:
            continue  # an unchecked box: the default, which keeps the YAML short
        flat[key] = value.strip() if isinstance(value, str) else value
    for key in ("model_name_or_path", "dataset"):
        if key not in flat:
            raise FormError(f"{key}: required")
    flat["stage"], flat["finetuning_type"] = stage, method
    order = [k for k in FLAT_KEYS if k in flat]  # lf_keys' order: model, method, data, training
    return {k: flat[k] for k in order}


def to_yaml(form: dict[str, Any]) -> str:
    return yaml.safe_dump(to_flat(form), sort_keys=False, allow_unicode=True)


def to_spec(text: str) -> tuple[pb.TrainingJobSpec, list[str]]:
    """The spec of a YAML job file (flat or native), as ``llamafleet train`` reads it."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FormError(f"not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise FormError("expected a mapping of key: value")
    try:
        if is_native(data):
            return from_native(data), []
        return from_flat(data)
    except ConfigFileError as exc:
        raise FormError(str(exc)) from None
