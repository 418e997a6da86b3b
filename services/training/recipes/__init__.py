"""Recipes, and what a ``TrainingJobSpec`` means to them: defaults resolved, invalid specs refused.

``validate(spec)`` is what the service calls before it launches a job: it checks the whole spec up
front and raises one ``InvalidArgument`` listing every bad field (``spec.compute_dtype``,
``spec.finetuning.lora.rank``, ...), or ``Unimplemented`` for a stage or method this version does
not train yet. ``settings(spec, device)`` turns a valid spec into ``Settings``, a frozen record with
every proto default of ``training.proto`` filled in, which is all the recipes read.

The recipes themselves (``pt``, ``sft``, ``rm``, ``dpo``, ``ppo``) live in their own modules; ``RECIPES`` maps a stage to one.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

from llamafleet.training.v1 import training_pb2 as tpb

from services.common.errors import FieldViolation, InvalidArgument, Unimplemented
from services.training.job_specs import pickle_only

SCHEDULERS = {
    tpb.LR_SCHEDULER_TYPE_UNSPECIFIED: "linear",
    tpb.LR_SCHEDULER_TYPE_LINEAR: "linear",
    tpb.LR_SCHEDULER_TYPE_COSINE: "cosine",
    tpb.LR_SCHEDULER_TYPE_COSINE_WITH_RESTARTS: "cosine_with_restarts",
    tpb.LR_SCHEDULER_TYPE_POLYNOMIAL: "polynomial",
    tpb.LR_SCHEDULER_TYPE_CONSTANT: "constant",
    tpb.LR_SCHEDULER_TYPE_CONSTANT_WITH_WARMUP: "constant_with_warmup",
    tpb.LR_SCHEDULER_TYPE_INVERSE_SQRT: "inverse_sqrt",
}
DTYPES = {
    tpb.COMPUTE_DTYPE_FLOAT32: "float32",
    tpb.COMPUTE_DTYPE_FLOAT16: "float16",
    tpb.COMPUTE_DTYPE_BFLOAT16: "bfloat16",
}
ATTENTION = {
    tpb.ATTENTION_IMPLEMENTATION_EAGER: "eager",
    tpb.ATTENTION_IMPLEMENTATION_SDPA: "sdpa",
    tpb.ATTENTION_IMPLEMENTATION_FLASH_ATTENTION_2: "flash_attention_2",
}
RECIPES = {
    tpb.STAGE_PT: "pt",
    tpb.STAGE_SFT: "sft",
    tpb.STAGE_RM: "rm",
    tpb.STAGE_DPO: "dpo",
    tpb.STAGE_PPO: "ppo",
}
PREFERENCE_LOSSES = {
    tpb.PREFERENCE_LOSS_UNSPECIFIED: "sigmoid",
    tpb.PREFERENCE_LOSS_SIGMOID: "sigmoid",
    tpb.PREFERENCE_LOSS_IPO: "ipo",
    tpb.PREFERENCE_LOSS_HINGE: "hinge",
    tpb.PREFERENCE_LOSS_ORPO: "orpo",
    tpb.PREFERENCE_LOSS_SIMPO: "simpo",
}
REFERENCED = ("sigmoid", "ipo", "hinge")  # DPO losses that compare with a reference model
METHODS = {tpb.FINETUNING_TYPE_FULL: "full", tpb.FINETUNING_TYPE_FREEZE: "freeze"}
ROPE_SCALING = {
    tpb.ROPE_SCALING_TYPE_LINEAR: "linear",
    tpb.ROPE_SCALING_TYPE_DYNAMIC: "dynamic",
    tpb.ROPE_SCALING_TYPE_YARN: "yarn",
    tpb.ROPE_SCALING_TYPE_LLAMA3: "llama3",
}
QUANTIZATION_TYPES = {
    tpb.QUANTIZATION_TYPE_UNSPECIFIED: "nf4",
    tpb.QUANTIZATION_TYPE_NF4: "nf4",
    tpb.QUANTIZATION_TYPE_FP4: "fp4",
}


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ()  # empty = every linear layer but the head
    additional_target_modules: tuple[str, ...] = ()
    use_rslora: bool = False
    use_dora: bool = False
    pissa_init: bool = False
    pissa_iters: int = 16
    loraplus_lr_ratio: float | None = None
    loraplus_lr_embedding: float = 1e-6


@dataclass(frozen=True)
class FreezeSettings:
    trainable_layers: int = 2  # > 0: the last n decoder layers; < 0: the first n
    trainable_modules: tuple[str, ...] = ()  # inside those layers; empty = all
    extra_modules: tuple[str, ...] = ()  # outside the decoder layers (e.g. "embed_tokens")


@dataclass(frozen=True)
class PreferenceSettings:
    """``PreferenceConfig`` of the ``dpo`` stage."""

    beta: float = 0.1
    loss_type: str = "sigmoid"  # sigmoid | ipo | hinge | orpo | simpo
    label_smoothing: float = 0.0
    pref_ftx: float = 0.0
    simpo_gamma: float = 0.5


@dataclass(frozen=True)
class PpoSettings:
    """``PpoConfig`` of the ``ppo`` stage. Messages stay serialized (``sampling``,
    ``reward_settings``: the task fields they are copied into)."""

    sampling: bytes = b""  # rollout.v1.SamplingParams
    samples_per_prompt: int = 1
    reward_scorer: str = ""
    reward_adapter: tuple[str, int] | None = None  # (id, version)
    reward_settings: bytes = b""  # common.v1.RewardSettings; empty = the reward service's own
    rollout_batch_size: int = 8  # prompts per PPO step
    ppo_epochs: int = 4
    kl_coef: float = 0.2
    adaptive_kl: bool = False
    kl_target: float = 6.0
    kl_horizon: int = 10_000
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    value_clip_range: float = 0.2
    value_loss_coef: float = 0.1
    max_staleness: int = 1
    whiten_rewards: bool = False


@dataclass(frozen=True)
class GaloreSettings:
    target_modules: tuple[str, ...] = ()  # empty = every linear layer but the head
    rank: int = 16
    update_interval: int = 200
    scale: float = 2.0
    projection: str = "std"  # "std" | "reverse_std" | "right" | "left" | "full"
    layerwise: bool = False  # one optimizer per parameter, stepped as its gradient arrives


@dataclass(frozen=True)
class Settings:
    """A spec with every default resolved: the recipes' only input besides the data."""

    recipe: str
    base_model: str
    method: str  # "full" | "lora" | "freeze"
    lora: LoraSettings
    learning_rate: float = 5e-5
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    num_epochs: float = 3.0
    max_steps: int | None = None
    batch_rows: int | None = 8
    batch_tokens: int | None = None
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0  # 0 = no clipping
    seed: int = 42
    weight_decay: float = 0.0
    eval_steps: int = 0
    logging_steps: int = 10
    save_steps: int = 0
    save_total_limit: int | None = None
    gradient_checkpointing: bool = False
    compute_dtype: str = "float32"
    attention: str = "sdpa"
    world_size: int = 1
    backend: str = "ddp"  # "ddp" | "deepspeed"
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    resume: bool = False
    trust_remote_code: bool = False
    preference: PreferenceSettings = field(default_factory=PreferenceSettings)
    ppo: PpoSettings = field(default_factory=PpoSettings)
    freeze: FreezeSettings = field(default_factory=FreezeSettings)
    llama_pro_expand: int = 0  # LLaMA-Pro blocks inserted (trained alone: freeze or LoRA on them)
    quantization_bits: int | None = None  # QLoRA: 4 or 8
    quantization_type: str = "nf4"  # QLoRA 4-bit data type: "nf4" | "fp4"
    double_quantization: bool = True  # QLoRA 4-bit: quantise the absmax constants too
    rope_scaling: str | None = None  # "linear" | "dynamic" | "yarn" | "llama3"
    max_context_length: int | None = None  # the context RoPE scaling is for
    galore: GaloreSettings | None = None  # GaLore optimizer (full fine-tuning)
    extra: dict = field(default_factory=dict)


def base_model_dtype(base_model: str) -> str | None:
    """The dtype the base model was saved in (``config.json`` ``dtype``/``torch_dtype``)."""
    try:
        config = json.loads((Path(base_model) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    dtype = config.get("dtype") or config.get("torch_dtype")
    return str(dtype) if dtype else None


def _cuda() -> tuple[bool, bool, int]:
    import torch

    if not torch.cuda.is_available():
        return False, False, 0
    return True, torch.cuda.is_bf16_supported(), torch.cuda.device_count()


def settings(spec: tpb.TrainingJobSpec, device: str = "cpu") -> Settings:
    """Resolve the defaults of a (valid) spec for ``device`` ("cpu" or "cuda")."""
    hp, ft, dist = spec.hyperparameters, spec.finetuning, spec.distributed
    lo, pref = ft.lora, spec.preference
    rank = lo.rank or 8
    lora = LoraSettings(
        rank=rank,
        alpha=lo.alpha if lo.HasField("alpha") else 2.0 * rank,
        dropout=lo.dropout,
        target_modules=tuple(t for t in lo.target_modules if t != "all"),
        additional_target_modules=tuple(lo.additional_target_modules),
        use_rslora=lo.use_rslora,
        use_dora=lo.use_dora,
        pissa_init=lo.pissa_init,
        pissa_iters=lo.pissa_iters if lo.HasField("pissa_iters") else 16,
        loraplus_lr_ratio=lo.loraplus_lr_ratio if lo.HasField("loraplus_lr_ratio") else None,
        loraplus_lr_embedding=(
            lo.loraplus_lr_embedding if lo.HasField("loraplus_lr_embedding") else 1e-6
        ),
    )
    which = hp.WhichOneof("batch_size")
    if spec.compute_dtype == tpb.COMPUTE_DTYPE_UNSPECIFIED:
        dtype = "bfloat16" if device == "cuda" and _cuda()[1] else "float32"
    else:
        dtype = DTYPES[spec.compute_dtype]
    if spec.attention_implementation == tpb.ATTENTION_IMPLEMENTATION_UNSPECIFIED:
        flash = device == "cuda" and importlib.util.find_spec("flash_attn") is not None
        attention = "flash_attention_2" if flash and dtype != "float32" else "sdpa"
    else:
        attention = ATTENTION[spec.attention_implementation]
    return Settings(
        recipe=RECIPES[spec.stage],
        base_model=spec.base_model,
        method=METHODS.get(ft.type, "lora"),
        lora=lora,
        learning_rate=hp.learning_rate or 5e-5,
        lr_scheduler=SCHEDULERS[hp.lr_scheduler],
        warmup_ratio=hp.warmup_ratio,
        warmup_steps=hp.warmup_steps,
        num_epochs=hp.num_epochs or 3.0,
        max_steps=hp.max_steps if hp.HasField("max_steps") else None,
        batch_rows=(hp.per_device_batch_size or 8) if which != "per_device_batch_tokens" else None,
        batch_tokens=hp.per_device_batch_tokens if which == "per_device_batch_tokens" else None,
        gradient_accumulation_steps=hp.gradient_accumulation_steps or 1,
        max_grad_norm=_max_grad_norm(hp, ft),
        seed=hp.seed if hp.HasField("seed") else 42,
        weight_decay=hp.weight_decay,
        eval_steps=hp.eval_steps,
        logging_steps=hp.logging_steps or 10,
        save_steps=hp.save_steps,
        save_total_limit=hp.save_total_limit if hp.HasField("save_total_limit") else None,
        gradient_checkpointing=hp.gradient_checkpointing,
        compute_dtype=dtype,
        attention=attention,
        world_size=max(1, dist.world_size),
        backend="deepspeed" if dist.backend == tpb.DISTRIBUTED_BACKEND_DEEPSPEED else "ddp",
        zero_stage=dist.deepspeed_zero_stage if dist.HasField("deepspeed_zero_stage") else 2,
        offload_optimizer=dist.offload_optimizer,
        offload_params=dist.offload_params,
        resume=spec.resume,
        trust_remote_code=spec.trust_remote_code,
        preference=PreferenceSettings(
            beta=pref.beta if pref.HasField("beta") else 0.1,
            loss_type=PREFERENCE_LOSSES[pref.loss_type],
            label_smoothing=pref.label_smoothing,
            pref_ftx=pref.pref_ftx,
            simpo_gamma=pref.simpo_gamma if pref.HasField("simpo_gamma") else 0.5,
        ),
        ppo=_ppo_settings(spec.ppo, hp.per_device_batch_size or 8, hp.gradient_accumulation_steps),
        freeze=FreezeSettings(
            trainable_layers=ft.freeze.trainable_layers or 2,
            trainable_modules=tuple(ft.freeze.trainable_modules),
            extra_modules=tuple(ft.freeze.extra_modules),
        ),
        llama_pro_expand=ft.llama_pro.num_expand,
        quantization_bits=ft.quantization_bits if ft.HasField("quantization_bits") else None,
        quantization_type=QUANTIZATION_TYPES[ft.quantization_type],
        double_quantization=(
            ft.double_quantization if ft.HasField("double_quantization") else True
        ),
        rope_scaling=ROPE_SCALING.get(spec.rope_scaling),
        max_context_length=(
            spec.max_context_length
            if spec.rope_scaling and spec.HasField("max_context_length")
            else None
        ),
        galore=_galore_settings(ft.galore) if ft.HasField("galore") else None,
    )


def _ppo_settings(p: tpb.PpoConfig, batch_rows: int, accumulation: int) -> PpoSettings:
    def opt(name: str, default: float) -> float:
        return getattr(p, name) if p.HasField(name) else default

    ref = p.reward_adapter
    return PpoSettings(
        sampling=p.sampling.SerializeToString(),
        samples_per_prompt=p.sampling.n if p.sampling.HasField("n") else 1,
        reward_scorer=p.reward_scorer,
        reward_adapter=(ref.id, ref.version) if ref.id else None,
        reward_settings=(
            p.reward_settings.SerializeToString() if p.HasField("reward_settings") else b""
        ),
        rollout_batch_size=p.rollout_batch_size or batch_rows * max(1, accumulation),
        ppo_epochs=p.ppo_epochs or 4,
        kl_coef=opt("kl_coef", 0.2),
        adaptive_kl=p.adaptive_kl,
        kl_target=opt("kl_target", 6.0),
        kl_horizon=int(opt("kl_horizon", 10_000)),
        gamma=opt("gae_gamma", 1.0),
        lam=opt("gae_lambda", 0.95),
        clip_range=opt("clip_range", 0.2),
        value_clip_range=opt("value_clip_range", 0.2),
        value_loss_coef=opt("value_loss_coef", 0.1),
        max_staleness=int(opt("max_staleness", 1)),
        whiten_rewards=p.whiten_rewards,
    )


def _check_ppo(spec: tpb.TrainingJobSpec, check) -> None:
    """``PpoConfig`` ranges (STAGE_PPO only; other stages ignore it)."""
    if spec.stage != tpb.STAGE_PPO:
        return
    p, path = spec.ppo, "spec.ppo."
    check(bool(p.reward_scorer), path + "reward_scorer", "required: a reward service scorer name")
    check(
        not p.reward_adapter.id or p.reward_adapter.version >= 1,
        path + "reward_adapter.version",
        "must be >= 1 (an explicit version)",
    )
    check(p.rollout_batch_size >= 0, path + "rollout_batch_size", "must be >= 0")
    check(p.ppo_epochs >= 0, path + "ppo_epochs", "must be >= 0 (0 = 4)")
    check(not p.sampling.HasField("n") or p.sampling.n >= 1, path + "sampling.n", "must be >= 1")
    check(
        not p.sampling.HasField("temperature") or p.sampling.temperature > 0,
        path + "sampling.temperature",
        "must be > 0: PPO learns from sampled rollouts (0 = greedy; unset = 1.0)",
    )
    check(not p.HasField("kl_coef") or p.kl_coef >= 0, path + "kl_coef", "must be >= 0")
    check(not p.HasField("kl_target") or p.kl_target > 0, path + "kl_target", "must be > 0")
    check(not p.HasField("kl_horizon") or p.kl_horizon > 0, path + "kl_horizon", "must be > 0")
    check(not p.HasField("gae_gamma") or 0 < p.gae_gamma <= 1, path + "gae_gamma", "in (0, 1]")
    check(not p.HasField("gae_lambda") or 0 <= p.gae_lambda <= 1, path + "gae_lambda", "in [0, 1]")
    for name in ("clip_range", "value_clip_range"):
        check(not p.HasField(name) or getattr(p, name) > 0, path + name, "must be > 0")
    check(
        not p.HasField("value_loss_coef") or p.value_loss_coef >= 0,
        path + "value_loss_coef",
        "must be >= 0",
    )
    check(
        not p.HasField("max_staleness") or p.max_staleness >= 1,
        path + "max_staleness",
        "must be >= 1 (1 = on-policy)",
    )
    rows = spec.hyperparameters.per_device_batch_size or 8
    check(
        spec.hyperparameters.WhichOneof("batch_size") != "per_device_batch_tokens",
        "spec.hyperparameters.per_device_batch_tokens",
        "STAGE_PPO batches by per_device_batch_size (prompts)",
    )
    check(
        p.rollout_batch_size % rows == 0,
        path + "rollout_batch_size",
        f"must be a multiple of per_device_batch_size ({rows})",
    )


def _max_grad_norm(hp: tpb.Hyperparameters, ft: tpb.FinetuningConfig) -> float:
    """Unset: 1.0, or 0 (no clipping) with layer-wise GaLore, which has no whole-model gradient."""
    if hp.HasField("max_grad_norm"):
        return hp.max_grad_norm
    return 0.0 if ft.HasField("galore") and ft.galore.layerwise else 1.0


def _galore_settings(g: tpb.GaloreConfig) -> GaloreSettings:
    names = {
        tpb.GALORE_PROJECTION_TYPE_REVERSE_STD: "reverse_std",
        tpb.GALORE_PROJECTION_TYPE_RIGHT: "right",
        tpb.GALORE_PROJECTION_TYPE_LEFT: "left",
        tpb.GALORE_PROJECTION_TYPE_FULL: "full",
    }
    return GaloreSettings(
        target_modules=tuple(t for t in g.target_modules if t != "all"),
        rank=g.rank or 16,
        update_interval=g.update_interval or 200,
        scale=g.scale if g.HasField("scale") else 2.0,
        projection=names.get(g.projection_type, "std"),
        layerwise=g.layerwise,
    )


def validate(spec: tpb.TrainingJobSpec) -> None:
    """Check ``spec`` before launch. Raises ``InvalidArgument`` naming every bad field, or
    ``Unimplemented`` for a stage or method not trained by this version. Silent when valid."""
    _refuse_unimplemented(spec)
    bad: list[FieldViolation] = []

    def check(ok: bool, path: str, description: str) -> None:
        if not ok:
            bad.append(FieldViolation(path, description))

    check(spec.stage != tpb.STAGE_UNSPECIFIED, "spec.stage", "required: a Stage")
    base = Path(spec.base_model) if spec.base_model else None
    check(base is not None, "spec.base_model", "required: a Hugging Face model folder")
    if base is not None:
        check(
            (base / "config.json").is_file(),
            "spec.base_model",
            f"{base} is not a model folder (no config.json)",
        )
        pickled = pickle_only(base) if base.is_dir() else None
        check(pickled is None, "spec.base_model", pickled or "")
    check(spec.dataset.WhichOneof("dataset") is not None, "spec.dataset", "required")

    lo = spec.finetuning.lora
    check(lo.rank >= 0, "spec.finetuning.lora.rank", "must be >= 0 (0 = 8)")
    check(not lo.HasField("alpha") or lo.alpha > 0, "spec.finetuning.lora.alpha", "must be > 0")
    check(0 <= lo.dropout < 1, "spec.finetuning.lora.dropout", "must be in [0, 1)")
    check(
        not lo.HasField("loraplus_lr_ratio") or lo.loraplus_lr_ratio > 0,
        "spec.finetuning.lora.loraplus_lr_ratio",
        "must be > 0",
    )
    check(not (lo.use_dora and lo.pissa_init), "spec.finetuning.lora", "DoRA and PiSSA exclude")
    _check_freeze(spec, base, check)
    _check_quantization(spec, check)
    _check_ppo(spec, check)
    _check_rope(spec, check)
    if spec.finetuning.HasField("galore"):
        _check_galore(spec, check)
    pref, path = spec.preference, "spec.preference."
    check(not pref.HasField("beta") or pref.beta > 0, path + "beta", "must be > 0 (unset = 0.1)")
    check(0 <= pref.label_smoothing < 0.5, path + "label_smoothing", "must be in [0, 0.5)")
    check(
        pref.label_smoothing == 0 or PREFERENCE_LOSSES[pref.loss_type] == "sigmoid",
        path + "label_smoothing",
        "applies to PREFERENCE_LOSS_SIGMOID only",
    )
    check(pref.pref_ftx >= 0, path + "pref_ftx", "must be >= 0")
    check(pref.simpo_gamma >= 0, path + "simpo_gamma", "must be >= 0 (unset = 0.5)")

    hp = spec.hyperparameters
    path = "spec.hyperparameters."
    check(hp.learning_rate >= 0, path + "learning_rate", "must be >= 0 (0 = 5e-5)")
    check(0 <= hp.warmup_ratio < 1, path + "warmup_ratio", "must be in [0, 1)")
    check(hp.warmup_steps >= 0, path + "warmup_steps", "must be >= 0")
    check(hp.num_epochs >= 0, path + "num_epochs", "must be >= 0 (0 = 3)")
    check(not hp.HasField("max_steps") or hp.max_steps > 0, path + "max_steps", "must be > 0")
    which = hp.WhichOneof("batch_size")
    check(
        which != "per_device_batch_size" or hp.per_device_batch_size > 0,
        path + "per_device_batch_size",
        "must be > 0",
    )
    check(
        which != "per_device_batch_tokens" or hp.per_device_batch_tokens > 0,
        path + "per_device_batch_tokens",
        "must be > 0",
    )
    check(hp.gradient_accumulation_steps >= 0, path + "gradient_accumulation_steps", "must be >= 0")
    check(
        not hp.HasField("max_grad_norm") or hp.max_grad_norm >= 0,
        path + "max_grad_norm",
        "must be >= 0 (0 = no clipping)",
    )
    check(hp.weight_decay >= 0, path + "weight_decay", "must be >= 0")
    for name in ("eval_steps", "logging_steps", "save_steps"):
        check(getattr(hp, name) >= 0, path + name, "must be >= 0")
    check(
        not hp.HasField("save_total_limit") or hp.save_total_limit >= 1,
        path + "save_total_limit",
        "must be >= 1 (resume needs a checkpoint)",
    )

    has_cuda, has_bf16, gpus = _cuda()
    base_dtype = base_model_dtype(spec.base_model) if base is not None else None
    if spec.compute_dtype == tpb.COMPUTE_DTYPE_FLOAT16 and base_dtype == "bfloat16":
        bad.append(
            FieldViolation(
                "spec.compute_dtype",
                "the base model was pre-trained in bfloat16; its activations overflow float16. "
                "Use COMPUTE_DTYPE_BFLOAT16 (or FLOAT32)",
            )
        )
    if spec.compute_dtype == tpb.COMPUTE_DTYPE_BFLOAT16 and has_cuda and not has_bf16:
        bad.append(
            FieldViolation("spec.compute_dtype", "this GPU has no bfloat16; use FLOAT16 or FLOAT32")
        )
    if spec.attention_implementation == tpb.ATTENTION_IMPLEMENTATION_FLASH_ATTENTION_2:
        if not has_cuda:
            bad.append(
                FieldViolation("spec.attention_implementation", "flash_attention_2 needs a GPU")
            )
        elif importlib.util.find_spec("flash_attn") is None:
            bad.append(
                FieldViolation(
                    "spec.attention_implementation",
                    "flash-attn is not installed (pip install flash-attn); use SDPA",
                )
            )
        if spec.compute_dtype == tpb.COMPUTE_DTYPE_FLOAT32:
            bad.append(
                FieldViolation(
                    "spec.attention_implementation",
                    "flash_attention_2 runs in float16/bfloat16 only; set compute_dtype",
                )
            )

    dist = spec.distributed
    deepspeed = dist.backend == tpb.DISTRIBUTED_BACKEND_DEEPSPEED
    check(dist.world_size >= 0, "spec.distributed.world_size", "must be >= 0")
    if has_cuda and dist.world_size > max(gpus, 1):
        bad.append(
            FieldViolation("spec.distributed.world_size", f"only {gpus} GPU(s) on this machine")
        )
    stage = dist.deepspeed_zero_stage if dist.HasField("deepspeed_zero_stage") else 2
    check(0 <= stage <= 3, "spec.distributed.deepspeed_zero_stage", "must be 0, 1, 2 or 3")
    check(
        not dist.HasField("deepspeed_zero_stage") or deepspeed,
        "spec.distributed.deepspeed_zero_stage",
        "only with backend DISTRIBUTED_BACKEND_DEEPSPEED",
    )
    check(
        not dist.offload_optimizer or (deepspeed and stage >= 2),
        "spec.distributed.offload_optimizer",
        "needs backend DEEPSPEED with ZeRO stage 2 or 3",
    )
    check(
        not dist.offload_params or (deepspeed and stage == 3),
        "spec.distributed.offload_params",
        "needs backend DEEPSPEED with ZeRO stage 3",
    )
    if deepspeed and importlib.util.find_spec("deepspeed") is None:
        bad.append(
            FieldViolation(
                "spec.distributed.backend",
                "deepspeed is not installed (pip install llamafleet[train])",
            )
        )
    if bad:
        raise InvalidArgument("invalid training job spec", reason="INVALID_SPEC", violations=bad)


def _check_freeze(spec: tpb.TrainingJobSpec, base: Path | None, check) -> None:
    """FREEZE and LLaMA-Pro fields against the base model's layer count (``config.json``)."""
    ft = spec.finetuning
    try:
        layers = int(json.loads((base / "config.json").read_text())["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        layers = None  # no readable config: spec.base_model is reported on its own
    expand = ft.llama_pro.num_expand
    check(expand >= 0, "spec.finetuning.llama_pro.num_expand", "must be >= 0")
    if layers and expand > 0:
        check(
            layers % expand == 0,
            "spec.finetuning.llama_pro.num_expand",
            f"must divide the base model's {layers} layers",
        )
    if ft.type == tpb.FINETUNING_TYPE_FREEZE and layers and not expand:
        n = ft.freeze.trainable_layers
        check(
            abs(n) <= layers,
            "spec.finetuning.freeze.trainable_layers",
            f"the base model has only {layers} layers",
        )
    dist = spec.distributed
    check(
        not (
            ft.type == tpb.FINETUNING_TYPE_FREEZE
            and dist.backend == tpb.DISTRIBUTED_BACKEND_DEEPSPEED
            and dist.deepspeed_zero_stage == 3
        ),
        "spec.distributed.deepspeed_zero_stage",
        "FINETUNING_TYPE_FREEZE with ZeRO stage 3 is not supported; use stage 2 or DDP",
    )


def _check_rope(spec: tpb.TrainingJobSpec, check) -> None:
    """RoPE scaling: a known type, and the context length it is for (> 0)."""
    path = "spec.max_context_length"
    check(
        spec.rope_scaling == tpb.ROPE_SCALING_TYPE_UNSPECIFIED or spec.rope_scaling in ROPE_SCALING,
        "spec.rope_scaling",
        f"unknown RopeScalingType {spec.rope_scaling}",
    )
    if spec.HasField("max_context_length"):
        check(spec.max_context_length > 0, path, "must be > 0 (tokens)")
    check(
        not spec.rope_scaling or spec.HasField("max_context_length"),
        path,
        "required with rope_scaling: the context length (tokens) the RoPE scaling is for",
    )


def _check_galore(spec: tpb.TrainingJobSpec, check) -> None:
    """GaLore ranges; layer-wise GaLore steps each parameter inside the backward pass, so it
    needs one micro-batch per step, one process, unscaled gradients and no global clipping."""
    g, path = spec.finetuning.galore, "spec.finetuning.galore."
    check(g.rank >= 0, path + "rank", "must be >= 0 (0 = 16)")
    check(g.update_interval >= 0, path + "update_interval", "must be >= 0 (0 = 200)")
    check(not g.HasField("scale") or g.scale > 0, path + "scale", "must be > 0")
    check(
        g.projection_type in tpb.GaloreProjectionType.values(),
        path + "projection_type",
        f"unknown GaloreProjectionType {g.projection_type}",
    )
    check(
        spec.distributed.backend != tpb.DISTRIBUTED_BACKEND_DEEPSPEED,
        "spec.distributed.backend",
        "GaLore with DeepSpeed is not supported; use DDP",
    )
    if not g.layerwise:
        return
    why = "layer-wise GaLore (galore.layerwise) steps each parameter as its gradient arrives"
    hp = spec.hyperparameters
    check(
        hp.gradient_accumulation_steps <= 1,
        "spec.hyperparameters.gradient_accumulation_steps",
        f"{why}: must be 1 (or 0 = 1)",
    )
    check(spec.distributed.world_size <= 1, "spec.distributed.world_size", f"{why}: one process")
    check(
        spec.compute_dtype != tpb.COMPUTE_DTYPE_FLOAT16,
        "spec.compute_dtype",
        f"{why}, before a float16 loss scale could be undone: use BFLOAT16 or FLOAT32",
    )
    check(
        not hp.HasField("max_grad_norm") or hp.max_grad_norm == 0,
        "spec.hyperparameters.max_grad_norm",
        f"{why}: there is no whole-model gradient to clip; set 0 or leave it unset",
    )


def _check_quantization(spec: tpb.TrainingJobSpec, check) -> None:
    """QLoRA: 4 or 8 bits, bitsandbytes installed, one process (no DeepSpeed); the 4-bit data
    type and double quantisation only with 4 bits."""
    ft = spec.finetuning
    four = ft.HasField("quantization_bits") and ft.quantization_bits == 4
    check(
        ft.quantization_type in QUANTIZATION_TYPES,
        "spec.finetuning.quantization_type",
        f"unknown QuantizationType {ft.quantization_type}",
    )
    check(
        ft.quantization_type == tpb.QUANTIZATION_TYPE_UNSPECIFIED or four,
        "spec.finetuning.quantization_type",
        "applies to quantization_bits 4 only",
    )
    check(
        not ft.HasField("double_quantization") or four,
        "spec.finetuning.double_quantization",
        "applies to quantization_bits 4 only",
    )
    if not ft.HasField("quantization_bits"):
        return
    path = "spec.finetuning.quantization_bits"
    check(ft.quantization_bits in (4, 8), path, "must be 4 or 8")
    check(
        importlib.util.find_spec("bitsandbytes") is not None,
        path,
        "bitsandbytes is not installed (pip install 'llamafleet[methods]')",
    )
    check(
        spec.distributed.backend != tpb.DISTRIBUTED_BACKEND_DEEPSPEED,
        "spec.distributed.backend",
        "QLoRA (quantization_bits) with DeepSpeed is not supported; use DDP",
    )


def _refuse_unimplemented(spec: tpb.TrainingJobSpec) -> None:
    def refuse(path: str, what: str) -> None:
        raise Unimplemented(
            f"{path}: {what} is not implemented yet",
            reason="NOT_IMPLEMENTED",
            violations=[FieldViolation(path, f"{what} is not implemented yet")],
        )

    if spec.stage == tpb.STAGE_PPO:
        if spec.finetuning.type not in (tpb.FINETUNING_TYPE_UNSPECIFIED, tpb.FINETUNING_TYPE_LORA):
            refuse(
                "spec.finetuning.type",
                f"STAGE_PPO with {tpb.FinetuningType.Name(spec.finetuning.type)} (the policy is a "
                "LoRA adapter on a frozen base; use LORA)",
            )
        if spec.distributed.world_size > 1:
            refuse("spec.distributed.world_size", "STAGE_PPO on several ranks")
        if spec.distributed.backend == tpb.DISTRIBUTED_BACKEND_DEEPSPEED:
            refuse("spec.distributed.backend", "STAGE_PPO with DeepSpeed")
        if spec.finetuning.llama_pro.num_expand:
            refuse("spec.finetuning.llama_pro", "STAGE_PPO with LLaMA-Pro")
        if spec.rope_scaling:
            refuse(
                "spec.rope_scaling",
                "STAGE_PPO with RoPE scaling (the rollout workers serve the base model as saved; "
                "export a RoPE-scaled model and use it as the base instead)",
            )
        if spec.finetuning.lora.pissa_init:
            refuse(
                "spec.finetuning.lora.pissa_init",
                "STAGE_PPO with PiSSA (it rewrites the trainer's base weights: the reference would "
                "be PiSSA's residual and the rollout workers' base would differ from the trainer's)",
            )
    if spec.stage in (tpb.STAGE_RM, tpb.STAGE_DPO):
        if spec.stage == tpb.STAGE_RM and spec.finetuning.type == tpb.FINETUNING_TYPE_FREEZE:
            refuse("spec.finetuning.type", "STAGE_RM with FREEZE")
        loss = PREFERENCE_LOSSES.get(spec.preference.loss_type)
        if spec.stage == tpb.STAGE_DPO and spec.finetuning.lora.pissa_init and loss in REFERENCED:
            refuse(
                "spec.finetuning.lora.pissa_init",
                f"PiSSA with {tpb.PreferenceLoss.Name(spec.preference.loss_type or 1)} (the "
                "adapter-disabled reference would be PiSSA's residual, not the base; use ORPO or "
                "SIMPO)",
            )
        multi_rank = spec.distributed.world_size > 1
        if multi_rank and spec.distributed.backend == tpb.DISTRIBUTED_BACKEND_DEEPSPEED:
            stage = tpb.Stage.Name(spec.stage)
            refuse("spec.distributed.backend", f"{stage} with DeepSpeed (use DDP)")
        if spec.stage == tpb.STAGE_RM and spec.finetuning.HasField("quantization_bits"):
            refuse("spec.finetuning.quantization_bits", "QLoRA in STAGE_RM")
        if spec.stage == tpb.STAGE_RM and spec.finetuning.llama_pro.num_expand:
            refuse("spec.finetuning.llama_pro", "LLaMA-Pro block expansion in STAGE_RM")
        if spec.stage == tpb.STAGE_RM and spec.rope_scaling:
            refuse("spec.rope_scaling", "RoPE scaling in STAGE_RM")
    ft = spec.finetuning
    if ft.llama_pro.num_expand and ft.type == tpb.FINETUNING_TYPE_FULL:
        refuse(
            "spec.finetuning.llama_pro",
            "LLaMA-Pro block expansion with FINETUNING_TYPE_FULL (use FREEZE or LORA)",
        )
    if ft.llama_pro.num_expand and ft.HasField("quantization_bits"):
        refuse(
            "spec.finetuning.llama_pro",
            "LLaMA-Pro block expansion with QLoRA (quantization_bits): a quantised block "
            "cannot be copied with zeroed output projections",
        )
    if ft.llama_pro.num_expand and ft.lora.use_dora and ft.type != tpb.FINETUNING_TYPE_FREEZE:
        refuse(
            "spec.finetuning.llama_pro",
            "LLaMA-Pro block expansion with DoRA (lora.use_dora): the new blocks' zeroed "
            "output projections have no weight norm to decompose",
        )
    if ft.HasField("galore") and ft.type != tpb.FINETUNING_TYPE_FULL:
        refuse(
            "spec.finetuning.galore",
            f"GaLore with {tpb.FinetuningType.Name(ft.type)} (use FULL)",
        )
    if ft.HasField("quantization_bits") and ft.type != tpb.FINETUNING_TYPE_LORA:
        refuse(
            "spec.finetuning.quantization_bits",
            f"QLoRA quantization with {tpb.FinetuningType.Name(ft.type)} (use LORA)",
        )
    if spec.HasField("init_adapter"):
        refuse("spec.init_adapter", "starting from an adapter version")
