"""The LLaMA-Factory flat-YAML vocabulary llamafleet reads: each key, how its value is read, and
where in a ``TrainingJobSpec`` it goes (``FLAT_KEYS``); keys accepted but without effect here
(``NO_EFFECT_KEYS``); keys refused with the reason (``REFUSED_KEYS``), and each key's status as
the README's "LLaMA-Factory keys" table states it (``key_status``). ``lf_config`` reads files and
assembles the spec with these tables.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from llamafleet.common.v1 import common_pb2
from llamafleet.data.v1 import data_pb2
from llamafleet.training.v1 import training_pb2 as pb


class ConfigFileError(ValueError):
    """The config file is wrong; the message says which key and what to do."""


# --- value readers -------------------------------------------------------------------------


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigFileError(f"{key}: expected true or false, got {value!r}")


def _int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigFileError(f"{key}: expected an integer, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigFileError(f"{key}: expected an integer, got {value!r}") from None
    if not number.is_integer():
        raise ConfigFileError(f"{key}: expected an integer, got {value!r}")
    return int(number)


def _float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigFileError(f"{key}: expected a number, got {value!r}")
    try:  # YAML reads 1e-4 (no dot) as a string; LLaMA-Factory accepts it, so do we
        return float(value)
    except (TypeError, ValueError):
        raise ConfigFileError(f"{key}: expected a number, got {value!r}") from None


def _str(key: str, value: Any) -> str:
    if isinstance(value, dict | list) or value is None:
        raise ConfigFileError(f"{key}: expected a string, got {value!r}")
    return str(value)


def _names(key: str, value: Any) -> list[str]:
    """A comma-separated string or a list of names."""
    items = value if isinstance(value, list) else _str(key, value).split(",")
    names = [str(item).strip() for item in items if str(item).strip()]
    if not names:
        raise ConfigFileError(f"{key}: expected one or more names")
    return names


def _choice(key: str, value: Any, table: dict[str, int]) -> int:
    text = _str(key, value).lower()
    if text not in table:
        raise ConfigFileError(
            f"{key}: {value!r} is not supported; use one of {', '.join(table)}"
            + hint(text, list(table))
        )
    return table[text]


def _path(key: str, value: Any) -> str:
    return str(Path(_str(key, value)).expanduser().absolute())


def _local_dir(key: str, value: Any) -> str:
    if _str(key, value).upper().startswith("REMOTE:"):
        raise ConfigFileError(
            f"{key}: {value!r} names a hub dataset folder; llamafleet reads no model or dataset "
            "hub: download it and give the local folder"
        )
    return _path(key, value)


def _adapter(key: str, value: Any) -> common_pb2.AdapterRef:
    adapter_id, sep, version = _str(key, value).partition("@")
    if not sep or not version.isdigit() or int(version) < 1:
        raise ConfigFileError(
            f"{key}: expected a training job's adapter as JOB_ID@VERSION (e.g. sft-1@3), "
            f"got {value!r}; adapters come from the training service, not from a folder"
        )
    return common_pb2.AdapterRef(id=adapter_id, version=int(version))


def _reward_functions(key: str, value: Any) -> list[common_pb2.RewardFunctionRef]:
    """``reward_functions``: a list of ``{name, weight?, args?, label?}`` (or bare names)."""
    items = value if isinstance(value, list) else None
    if not items:
        raise ConfigFileError(
            f"{key}: expected a list of reward functions, e.g. "
            "[{name: math_verify, weight: 1.0, args: {extractor: boxed}}]"
        )
    refs = []
    for i, item in enumerate(items):
        at = f"{key}[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ConfigFileError(f"{at}: expected a name or a mapping with a name")
        unknown = sorted(set(item) - {"name", "weight", "args", "label"})
        if unknown:
            raise ConfigFileError(f"{at}: unknown key {unknown[0]!r} (name, weight, args, label)")
        ref = common_pb2.RewardFunctionRef(name=item["name"], label=str(item.get("label", "")))
        if "weight" in item:
            ref.weight = _float(f"{at}.weight", item["weight"])
        args = item.get("args") or {}
        if not isinstance(args, dict):
            raise ConfigFileError(f"{at}.args: expected a mapping of argument: value")
        try:
            ref.args.update(args)
        except (ValueError, TypeError) as exc:
            raise ConfigFileError(f"{at}.args: {exc}") from None
        refs.append(ref)
    return refs


def hint(key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- the flat form -------------------------------------------------------------------------

STAGES = {"pt": pb.STAGE_PT, "sft": pb.STAGE_SFT, "rm": pb.STAGE_RM, "dpo": pb.STAGE_DPO}
STAGES["ppo"] = pb.STAGE_PPO
STAGES["kto"] = pb.STAGE_KTO
FINETUNING = {
    "lora": pb.FINETUNING_TYPE_LORA,
    "freeze": pb.FINETUNING_TYPE_FREEZE,
    "full": pb.FINETUNING_TYPE_FULL,
}
FLASH_ATTN = {
    "auto": pb.ATTENTION_IMPLEMENTATION_UNSPECIFIED,
    "disabled": pb.ATTENTION_IMPLEMENTATION_EAGER,
    "sdpa": pb.ATTENTION_IMPLEMENTATION_SDPA,
    "fa2": pb.ATTENTION_IMPLEMENTATION_FLASH_ATTENTION_2,
}
SCHEDULERS = {
    name: pb.LrSchedulerType.Value(f"LR_SCHEDULER_TYPE_{name.upper()}")
    for name in (
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
        "constant_with_warmup", "inverse_sqrt",
    )
}  # fmt: skip
PREF_LOSSES = {
    name: pb.PreferenceLoss.Value(f"PREFERENCE_LOSS_{name.upper()}")
    for name in ("sigmoid", "ipo", "hinge", "orpo", "simpo")
}
GALORE_PROJ = {
    name: pb.GaloreProjectionType.Value(f"GALORE_PROJECTION_TYPE_{name.upper()}")
    for name in ("std", "reverse_std", "right", "left", "full")
}
ROPE_SCALING = {
    name: pb.RopeScalingType.Value(f"ROPE_SCALING_TYPE_{name.upper()}")
    for name in ("linear", "dynamic", "yarn", "llama3")
}
QUANTIZATION_TYPES = {
    name: pb.QuantizationType.Value(f"QUANTIZATION_TYPE_{name.upper()}") for name in ("nf4", "fp4")
}
EXAMPLE_KINDS = {
    pb.STAGE_PT: data_pb2.EXAMPLE_KIND_PRETRAIN,
    pb.STAGE_SFT: data_pb2.EXAMPLE_KIND_SFT,
    pb.STAGE_RM: data_pb2.EXAMPLE_KIND_PREFERENCE,
    pb.STAGE_DPO: data_pb2.EXAMPLE_KIND_PREFERENCE,
    pb.STAGE_PPO: data_pb2.EXAMPLE_KIND_PROMPT,
    pb.STAGE_KTO: data_pb2.EXAMPLE_KIND_FEEDBACK,
}

# Accepted for compatibility with LLaMA-Factory files; they change nothing in llamafleet.
NO_EFFECT_KEYS = {
    "overwrite_cache": "the data service caches prepared datasets by content",
    "preprocessing_num_workers": "the data service sizes its own workers",
    "dataloader_num_workers": "batches stream from the data service",
    "plot_loss": "every job writes loss_curve.png",
    "overwrite_output_dir": "a job's folder belongs to its job_id",
    "ddp_timeout": "the launcher sets process-group timeouts",
    "per_device_eval_batch_size": "evaluation uses the training batch size",
    "eval_strategy": "eval_steps (0 = each epoch) decides when to evaluate",
    "do_eval": "jobs evaluate whenever they have eval data",
    "save_only_model": "checkpoints always keep what resume needs",
    "run_name": "trackers (report_to) name their run after the job id",
}


MEGATRON = "Megatron-Core training (LLaMA-Factory's mcore_adapter) is not implemented"
MULTIMODAL = "multimodal training (images, videos, audio) is not implemented yet"
KTRANSFORMERS = "KTransformers CPU/GPU hybrid MoE training is not implemented"
# LLaMA-Factory keys llamafleet refuses, with the reason, and the values that mean "off" (which are
# accepted: LLaMA-Factory's own default, so nothing is asked for).
REFUSED_KEYS: dict[str, tuple[str, tuple]] = {
    "do_predict": ("predictions run as evaluation jobs (llamafleet eval), not in train", (False,)),
    "predict_with_generate": ("predictions run as evaluation jobs, not in train", (False,)),
    "tokenized_path": ("the data service prepares and caches datasets: llamafleet data prepare",
                       (None,)),
    "pure_bf16": ("trained weights stay float32 with bf16 autocast (no pure-bf16 weights)",
                  (False,)),
    "fsdp": ("FSDP is not implemented: use deepspeed (ZeRO 0-3) or DDP (world_size)", ("", None)),
    "fsdp_transformer_layer_cls_to_wrap": ("FSDP is not implemented", (None,)),
    "ray_num_workers": ("Ray launching is not implemented: world_size starts processes", (None,)),
    "gradient_checkpointing_kwargs": (
        "gradient checkpointing always runs with use_reentrant: false", ({"use_reentrant": False},)),
    "use_reentrant_gc": ("gradient checkpointing always runs with use_reentrant: false",
                         (False,)),
    "adam_beta1": ("the optimizers run with Transformers' beta1 0.9", (0.9,)),
    "adam_beta2": ("the optimizers run with Transformers' beta2 0.999", (0.999,)),
    "quantization_method": ("only bitsandbytes quantisation (bnb) is implemented", ("bnb",)),
    "pissa_convert": ("PiSSA adapters are saved as trained (peft PiSSA folders), not converted",
                      (False,)),
    "use_v1_kernels": ("LLaMA-Factory's v1 kernels are not used here", (False,)),
    "use_adam_mini": ("the Adam-mini optimizer is not implemented", (False,)),
    "use_apollo": ("the APOLLO optimizer is not implemented", (False,)),
    "apollo_target": ("the APOLLO optimizer is not implemented", ()),
    "apollo_rank": ("the APOLLO optimizer is not implemented", ()),
    "apollo_scale": ("the APOLLO optimizer is not implemented", ()),
    "apollo_scale_type": ("the APOLLO optimizer is not implemented", ()),
    "apollo_layerwise": ("the APOLLO optimizer is not implemented", ()),
    "use_badam": ("the BAdam optimizer is not implemented", (False,)),
    "badam_mode": ("the BAdam optimizer is not implemented", ()),
    "badam_switch_interval": ("the BAdam optimizer is not implemented", ()),
    "badam_switch_mode": ("the BAdam optimizer is not implemented", ()),
    "badam_verbose": ("the BAdam optimizer is not implemented", ()),
    "use_muon": ("the Muon optimizer is not implemented", (False,)),
    "use_asft_loss": ("LLaMA-Factory's ASFT loss is not implemented", (False,)),
    "asft_alpha": ("LLaMA-Factory's ASFT loss is not implemented", ()),
    "use_dft_loss": ("LLaMA-Factory's DFT loss is not implemented", (False,)),
    "use_eaft_loss": ("LLaMA-Factory's EAFT loss is not implemented", (False,)),
    "mixture_of_depths": ("mixture-of-depths conversion is not implemented", (None,)),
    "oft_block_size": ("OFT (orthogonal fine-tuning) is not implemented", ()),
    "oft_target": ("OFT (orthogonal fine-tuning) is not implemented", ()),
    "fp8": ("FP8 training (torchao) is not implemented", (False,)),
    "fp8_backend": ("FP8 training (torchao) is not implemented", ()),
    "fp8_enable_fsdp_float8_all_gather": ("FP8 training is not implemented", (False,)),
    "image_max_pixels": (MULTIMODAL, ()),
    "video_max_pixels": (MULTIMODAL, ()),
    "video_fps": (MULTIMODAL, ()),
    "video_maxlen": (MULTIMODAL, ()),
    "freeze_vision_tower": (MULTIMODAL, ()),
    "freeze_multi_modal_projector": (MULTIMODAL, ()),
    "freeze_language_model": (MULTIMODAL, (False,)),
    "use_kt": (KTRANSFORMERS, (False,)),
    "kt_config": (KTRANSFORMERS, ()),
    "kt_cpu_activation": (KTRANSFORMERS, ()),
    "kt_weight_path": (KTRANSFORMERS, ()),
    "kt_non_expert_weight_path": (KTRANSFORMERS, ()),
    **{
        key: (MEGATRON, off)
        for key, off in (
            ("tensor_model_parallel_size", (1,)), ("pipeline_model_parallel_size", (1,)),
            ("context_parallel_size", (1,)), ("expert_model_parallel_size", (1,)),
            ("sequence_parallel", (False,)), ("use_distributed_optimizer", (False,)),
            ("overlap_grad_reduce", (False,)), ("overlap_param_gather", (False,)),
            ("bias_activation_fusion", (False,)), ("apply_rope_fusion", (False,)),
            ("moe_grouped_gemm", (False,)), ("moe_token_dispatcher_type", ()),
            ("recompute_granularity", ()), ("mixed_precision", ()),
            ("use_packed_sequences", (False,)), ("export_hf_on_finish", (False,)),
        )
    },
}  # fmt: skip


def refused(key: str, value: Any) -> str | None:
    """Why ``key: value`` is refused, or None when the value means "off" (accepted)."""
    reason, off = REFUSED_KEYS[key]
    if any(value == o and type(value) is type(o) for o in off) or (value is None and None in off):
        return None
    return reason


def _flat_keys() -> dict[str, Any]:
    """key -> setter(spec, ctx, key, value). ``ctx`` collects the dataset keys."""
    top = lambda s: s  # noqa: E731
    ft = lambda s: s.finetuning  # noqa: E731
    hp = lambda s: s.hyperparameters  # noqa: E731
    lora = lambda s: s.finetuning.lora  # noqa: E731
    freeze = lambda s: s.finetuning.freeze  # noqa: E731
    galore_cfg = lambda s: s.finetuning.galore  # noqa: E731
    pref = lambda s: s.preference  # noqa: E731
    ppo = lambda s: s.ppo  # noqa: E731

    def put(target, field, reader):
        return lambda s, c, k, v: setattr(target(s), field, reader(k, v))

    def choice(table):
        return lambda k, v: _choice(k, v, table)

    def data(field, reader):
        return lambda s, c, k, v: c.__setitem__(field, reader(k, v))

    def listed(target, field, all_means_empty=False):
        def setter(s, c, k, v):
            names = _names(k, v)
            if all_means_empty and names == ["all"]:
                names = []
            getattr(target(s), field)[:] = names

        return setter

    def reward_functions(s, c, k, v):
        s.ppo.reward_settings.functions.extend(_reward_functions(k, v))
        if not s.ppo.reward_scorer:
            s.ppo.reward_scorer = "functions"

    def max_steps(s, c, k, v):
        if _int(k, v) > 0:  # LLaMA-Factory's -1 means "use num_train_epochs"
            s.hyperparameters.max_steps = _int(k, v)

    def do_train(s, c, k, v):
        if not _bool(k, v):
            raise ConfigFileError("do_train: llamafleet jobs train; remove do_train: false")

    def resume(s, c, k, v):
        """null: start afresh; true: the latest checkpoint in output_dir (or of job_id); a path:
        that checkpoint folder (<job folder>/checkpoints/step-N)."""
        if v is None:
            return
        if isinstance(v, bool) or str(v).lower() in ("true", "false"):
            s.resume = _bool(k, v)
            return
        s.resume_from_checkpoint = _path(k, v)
        s.resume = True

    def report_to(s, c, k, v):
        """none, all (LLaMA-Factory: every installed integration; refused here as ambiguous),
        or names. Checked against what the training machine has by the service."""
        names = ["none"] if v is None else _names(k, v)
        if "all" in names:
            raise ConfigFileError(
                f"{k}: 'all' depends on what happens to be installed; name the trackers "
                "(tensorboard, wandb, mlflow) or none"
            )
        s.report_to[:] = [n.lower() for n in names if n.lower() != "none"]

    def adapter_name_or_path(s, c, k, v):
        """A PEFT folder (LLaMA-Factory's meaning), or JOB_ID@VERSION of the adapter store."""
        text = _str(k, v)
        if "," in text:
            raise ConfigFileError(
                f"{k}: one adapter only, got {text!r}; merge the others first "
                "(llamafleet export --merged) and use that as model_name_or_path"
            )
        looks_like_ref = "@" in text and "/" not in text and not Path(text).exists()
        if looks_like_ref:
            s.init_adapter.CopyFrom(_adapter(k, text))
        else:
            s.adapter_path = _path(k, text)

    def seed(s, c, k, v):
        s.hyperparameters.seed = _int(k, v)
        c["seed"] = _int(k, v)

    def dtype(value):
        def setter(s, c, k, v):
            if _bool(k, v):
                s.compute_dtype = value

        return setter

    def gc_disabled(s, c, k, v):
        s.hyperparameters.gradient_checkpointing = not _bool(k, v)

    def galore(s, c, k, v):
        if _bool(k, v):
            s.finetuning.galore.SetInParent()

    def deepspeed(s, c, k, v):
        apply_deepspeed(s, _path(k, v))

    def ppo_target(s, c, k, v):
        s.ppo.kl_target = _float(k, v)
        s.ppo.adaptive_kl = True

    sampling = lambda s: s.ppo.sampling  # noqa: E731
    return {
        # model
        "model_name_or_path": put(top, "base_model", _path),
        "trust_remote_code": put(top, "trust_remote_code", _bool),
        "flash_attn": put(top, "attention_implementation", choice(FLASH_ATTN)),
        "quantization_bit": put(ft, "quantization_bits", _int),
        "quantization_type": put(ft, "quantization_type", choice(QUANTIZATION_TYPES)),
        "double_quantization": put(ft, "double_quantization", _bool),
        "moe_aux_loss_coef": put(ft, "moe_aux_loss_coef", _float),
        # the context length comes from cutoff_len, as in LLaMA-Factory (lf_config.from_flat)
        "rope_scaling": put(top, "rope_scaling", choice(ROPE_SCALING)),
        "adapter_name_or_path": adapter_name_or_path,
        "init_adapter": lambda s, c, k, v: s.init_adapter.CopyFrom(_adapter(k, v)),  # ours
        "create_new_adapter": put(top, "create_new_adapter", _bool),
        "report_to": report_to,
        "disable_gradient_checkpointing": gc_disabled,
        # method
        "stage": put(top, "stage", choice(STAGES)),
        "do_train": do_train,
        "finetuning_type": put(ft, "type", choice(FINETUNING)),
        "lora_rank": put(lora, "rank", _int),
        "lora_alpha": put(lora, "alpha", _float),
        "lora_dropout": put(lora, "dropout", _float),
        "lora_target": listed(lora, "target_modules"),
        "additional_target": listed(lora, "additional_target_modules"),
        "use_rslora": put(lora, "use_rslora", _bool),
        "use_dora": put(lora, "use_dora", _bool),
        "pissa_init": put(lora, "pissa_init", _bool),
        "pissa_iter": put(lora, "pissa_iters", _int),
        "loraplus_lr_ratio": put(lora, "loraplus_lr_ratio", _float),
        "loraplus_lr_embedding": put(lora, "loraplus_lr_embedding", _float),
        "freeze_trainable_layers": put(freeze, "trainable_layers", _int),
        "use_llama_pro": data("use_llama_pro", _bool),  # lf_config.from_flat: needs the layers
        "freeze_trainable_modules": listed(freeze, "trainable_modules", True),
        "freeze_extra_modules": listed(freeze, "extra_modules"),
        "use_galore": galore,
        "galore_target": listed(galore_cfg, "target_modules", True),
        "galore_rank": put(galore_cfg, "rank", _int),
        "galore_update_interval": put(galore_cfg, "update_interval", _int),
        "galore_scale": put(galore_cfg, "scale", _float),
        "galore_proj_type": put(galore_cfg, "projection_type", choice(GALORE_PROJ)),
        "galore_layerwise": put(galore_cfg, "layerwise", _bool),
        "pref_beta": put(pref, "beta", _float),
        "pref_ftx": put(pref, "pref_ftx", _float),
        "pref_loss": put(pref, "loss_type", choice(PREF_LOSSES)),
        "dpo_label_smoothing": put(pref, "label_smoothing", _float),
        "simpo_gamma": put(pref, "simpo_gamma", _float),
        "kto_chosen_weight": put(pref, "kto_chosen_weight", _float),
        "kto_rejected_weight": put(pref, "kto_rejected_weight", _float),
        "ppo_epochs": put(ppo, "ppo_epochs", _int),
        "ppo_target": ppo_target,
        "ppo_whiten_rewards": put(ppo, "whiten_rewards", _bool),
        "reward_model": lambda s, c, k, v: s.ppo.reward_adapter.CopyFrom(_adapter(k, v)),
        "reward_scorer": put(ppo, "reward_scorer", _str),  # llamafleet's own
        "reward_functions": reward_functions,  # llamafleet's own: scorer "functions"
        "temperature": put(sampling, "temperature", _float),
        "top_p": put(sampling, "top_p", _float),
        "top_k": put(sampling, "top_k", _int),
        "max_new_tokens": put(sampling, "max_tokens", _int),
        # dataset
        "dataset": data("dataset", _names),
        "eval_dataset": data("eval_dataset", _names),
        "dataset_dir": data("dataset_dir", _local_dir),
        "template": data("template", _str),
        "default_system": data("default_system", _str),
        "tool_format": data("tool_format", _str),
        "cutoff_len": data("cutoff_len", _int),
        "train_on_prompt": data("train_on_prompt", _bool),
        "mask_history": data("mask_history", _bool),
        "enable_thinking": data("enable_thinking", _bool),
        "preserve_thinking": data("preserve_thinking", _bool),
        "packing": data("packing", _bool),
        "streaming": data("streaming", _bool),
        "val_size": data("val_size", _float),
        "max_samples": data("max_samples", _int),
        # output and training
        "job_id": put(top, "job_id", _str),  # llamafleet's own
        "output_dir": put(top, "output_dir", _path),
        "resume_from_checkpoint": resume,
        "learning_rate": put(hp, "learning_rate", _float),
        "num_train_epochs": put(hp, "num_epochs", _float),
        "max_steps": max_steps,
        "per_device_train_batch_size": put(hp, "per_device_batch_size", _int),
        "gradient_accumulation_steps": put(hp, "gradient_accumulation_steps", _int),
        "lr_scheduler_type": put(hp, "lr_scheduler", choice(SCHEDULERS)),
        "warmup_ratio": put(hp, "warmup_ratio", _float),
        "warmup_steps": put(hp, "warmup_steps", _int),
        "weight_decay": put(hp, "weight_decay", _float),
        "max_grad_norm": put(hp, "max_grad_norm", _float),
        "neftune_noise_alpha": put(hp, "neftune_noise_alpha", _float),
        "optim": put(hp, "optim", lambda k, v: _str(k, v).lower()),
        "seed": seed,
        "logging_steps": put(hp, "logging_steps", _int),
        "save_steps": put(hp, "save_steps", _int),
        "save_total_limit": put(hp, "save_total_limit", _int),
        "eval_steps": put(hp, "eval_steps", _int),
        "gradient_checkpointing": put(hp, "gradient_checkpointing", _bool),
        "bf16": dtype(pb.COMPUTE_DTYPE_BFLOAT16),
        "fp16": dtype(pb.COMPUTE_DTYPE_FLOAT16),
        "deepspeed": deepspeed,
        "world_size": put(lambda s: s.distributed, "world_size", _int),  # llamafleet's own
    }


FLAT_KEYS = _flat_keys()


def apply_deepspeed(spec: pb.TrainingJobSpec, path: str) -> None:
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigFileError(f"deepspeed: cannot read the JSON config {path}: {exc}") from None
    zero = config.get("zero_optimization", {}) if isinstance(config, dict) else {}
    stage = zero.get("stage", 0)
    if not isinstance(stage, int) or not 0 <= stage <= 3:
        raise ConfigFileError(
            f"deepspeed: {path}: zero_optimization.stage must be 0-3, got {stage!r}"
        )
    spec.distributed.backend = pb.DISTRIBUTED_BACKEND_DEEPSPEED
    spec.distributed.deepspeed_zero_stage = stage
    spec.distributed.offload_optimizer = _offloaded(zero.get("offload_optimizer"))
    spec.distributed.offload_params = _offloaded(zero.get("offload_param"))


def _offloaded(section: Any) -> bool:
    return isinstance(section, dict) and section.get("device") in ("cpu", "nvme")


# --- STAGE_GRPO: TRL GRPOConfig spellings (kept in one block, after the others) ----------------

STAGES["grpo"] = pb.STAGE_GRPO
EXAMPLE_KINDS[pb.STAGE_GRPO] = data_pb2.EXAMPLE_KIND_PROMPT
GRPO_LOSS_TYPES = {
    # TRL's names -> the aggregation they compute
    "grpo": pb.GRPO_LOSS_TYPE_SEQ_MEAN_TOKEN_MEAN,
    "bnpo": pb.GRPO_LOSS_TYPE_TOKEN_MEAN,
    "dapo": pb.GRPO_LOSS_TYPE_TOKEN_MEAN,
    "dr_grpo": pb.GRPO_LOSS_TYPE_SEQ_MEAN_TOKEN_SUM_NORM,
    # veRL's names
    "token-mean": pb.GRPO_LOSS_TYPE_TOKEN_MEAN,
    "seq-mean-token-mean": pb.GRPO_LOSS_TYPE_SEQ_MEAN_TOKEN_MEAN,
    "seq-mean-token-sum-norm": pb.GRPO_LOSS_TYPE_SEQ_MEAN_TOKEN_SUM_NORM,
}
SCALE_REWARDS = {
    "group": pb.REWARD_SCALING_GROUP,
    "batch": pb.REWARD_SCALING_BATCH,
    "none": pb.REWARD_SCALING_NONE,
    "true": pb.REWARD_SCALING_GROUP,  # TRL before 0.22: a bool
    "false": pb.REWARD_SCALING_NONE,
}
ADVANTAGE_ESTIMATORS = {
    "grpo": pb.ADVANTAGE_ESTIMATOR_GRPO,
    "dr_grpo": pb.ADVANTAGE_ESTIMATOR_DR_GRPO,
    "rloo": pb.ADVANTAGE_ESTIMATOR_RLOO,
    "reinforce_pp": pb.ADVANTAGE_ESTIMATOR_REINFORCE_PP,
    "reinforce++": pb.ADVANTAGE_ESTIMATOR_REINFORCE_PP,
}
KL_ESTIMATORS = {"k1": pb.KL_ESTIMATOR_K1, "k2": pb.KL_ESTIMATOR_K2, "k3": pb.KL_ESTIMATOR_K3}
REINFORCE_BASELINES = {"batch": pb.REINFORCE_BASELINE_BATCH, "group": pb.REINFORCE_BASELINE_GROUP}


def _grpo_keys() -> dict[str, Any]:
    def put(field, reader):
        return lambda s, c, k, v: setattr(s.grpo, field, reader(k, v))

    def choice(table):
        return lambda k, v: _choice(k, v, table)

    def num_generations(s, c, k, v):
        s.ppo.sampling.n = _int(k, v)

    def num_iterations(s, c, k, v):
        s.ppo.ppo_epochs = _int(k, v)

    def scale_rewards(s, c, k, v):
        text = str(v).lower() if isinstance(v, bool) else v
        s.grpo.scale_rewards = _choice(k, text, SCALE_REWARDS)

    return {
        "num_generations": num_generations,  # TRL: the group size (sampling.n)
        "num_iterations": num_iterations,  # TRL: optimisation passes per batch (ppo_epochs)
        "loss_type": put("loss_type", choice(GRPO_LOSS_TYPES)),
        "epsilon": put("epsilon", _float),
        "epsilon_high": put("epsilon_high", _float),
        "beta": put("beta", _float),
        "scale_rewards": scale_rewards,
        "mask_truncated_completions": put("mask_truncated_completions", _bool),
        # llamafleet's own
        "advantage_estimator": put("advantage_estimator", choice(ADVANTAGE_ESTIMATORS)),
        "kl_estimator": put("kl_estimator", choice(KL_ESTIMATORS)),
        "dynamic_sampling": put("dynamic_sampling", _bool),
        "max_refill_rounds": put("max_refill_rounds", _int),
        "overlong_buffer_length": put("overlong_buffer_length", _int),
        "overlong_penalty_factor": put("overlong_penalty_factor", _float),
        "reinforce_pp_baseline": put("reinforce_pp_baseline", choice(REINFORCE_BASELINES)),
    }


FLAT_KEYS.update(_grpo_keys())


# What an honoured key's values may be, where some are refused (the README's key table).
KEY_NOTES = {
    "stage": "pt, sft, rm, dpo, ppo, kto, grpo",
    "finetuning_type": "lora, freeze, full; oft is refused (not implemented)",
    "dataset_dir": "a local folder; REMOTE: hub folders are refused (no hub)",
    "model_name_or_path": "a local model folder (no hub: a hub id is not found)",
    "adapter_name_or_path": "one PEFT folder (copied into the job with its sha256) or JOB@VERSION",
    "resume_from_checkpoint": "null, true (latest in output_dir) or a checkpoint folder",
    "report_to": "none, tensorboard, wandb (offline), mlflow (local files); swanlab and all "
    "refused",
    "optim": "adamw_torch(_fused), sgd, adafactor, adagrad, rmsprop, adamw_8bit, "
    "paged_adamw_8bit, lion_8bit (bitsandbytes)",
    "flash_attn": "auto, disabled, sdpa, fa2",
    "deepspeed": "a ZeRO 0-3 JSON config (stage and offload read from it)",
    "template": "the data service's templates (LLaMA-Factory 0.9.5's names)",
    "use_llama_pro": "the base folder is already expanded (LLaMA-Factory's llama_pro.py)",
    "trust_remote_code": "only where the service's owner allows remote code",
    "quantization_bit": "4 or 8 (bitsandbytes, LoRA only)",
}


def key_status(key: str) -> str:
    """One row's status column: honoured / accepted, no effect / refused, with the reason."""
    if key in FLAT_KEYS:
        note = KEY_NOTES.get(key)
        return f"honoured ({note})" if note else "honoured"
    if key in NO_EFFECT_KEYS:
        return f"accepted, no effect: {NO_EFFECT_KEYS[key]}"
    if key in REFUSED_KEYS:
        reason, off = REFUSED_KEYS[key]
        accepted = f" ({', '.join(repr(o) for o in off)} accepted: off)" if off else ""
        return f"refused: {reason}{accepted}"
    return "refused: unknown key"
