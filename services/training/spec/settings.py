"""What a ``TrainingJobSpec`` means to the recipes: ``settings(spec, device)`` turns a valid spec
into ``Settings``, a frozen record with every proto default of ``training.proto`` filled in, which
is all the recipes read; and the enum-to-name tables both it and ``validation`` use."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

from llamafleet.training.v1 import training_pb2 as tpb

from services.training.spec import devices

# Transformers ``optim`` names a job may pick (tested here), and whether bitsandbytes is needed.
OPTIMIZERS = {
    "adamw_torch": False, "adamw_torch_fused": False, "sgd": False, "adafactor": False,
    "adagrad": False, "rmsprop": False, "adamw_8bit": True, "adamw_bnb_8bit": True,
    "paged_adamw_8bit": True, "lion_8bit": True, "paged_lion_8bit": True,
}  # fmt: skip
INIT_ADAPTER_DIR = "init_adapter"  # a job folder's copy of its starting adapter (and .json)

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
STAGES = {
    tpb.STAGE_PT: "pt",
    tpb.STAGE_SFT: "sft",
    tpb.STAGE_RM: "rm",
    tpb.STAGE_DPO: "dpo",
    tpb.STAGE_PPO: "ppo",
    tpb.STAGE_GRPO: "grpo",
    tpb.STAGE_KTO: "kto",
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
    kto_chosen_weight: float = 1.0  # kto: weight of the desirable responses' losses
    kto_rejected_weight: float = 1.0  # kto: weight of the undesirable responses' losses


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
class GrpoSettings:
    """``GrpoConfig`` of the ``grpo`` stage (names as in TRL's ``GRPOConfig`` where it has them)."""

    advantage_estimator: str = "grpo"  # "grpo" | "dr_grpo" | "rloo" | "reinforce_pp"
    loss_type: str = "token-mean"  # | "seq-mean-token-mean" | "seq-mean-token-sum-norm"
    scale_rewards: str = "group"  # "group" | "batch" | "none" (the grpo estimator)
    epsilon: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0  # 0 = no KL term, no reference forward
    kl_estimator: str = "k3"  # "k1" | "k2" | "k3"
    mask_truncated_completions: bool = False
    dynamic_sampling: bool = False
    max_refill_rounds: int = 8
    overlong_buffer_length: int = 0
    overlong_penalty_factor: float = 1.0
    reinforce_pp_baseline: str = "batch"  # "batch" | "group"


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
    grpo: GrpoSettings = field(default_factory=GrpoSettings)
    freeze: FreezeSettings = field(default_factory=FreezeSettings)
    llama_pro_expand: int = 0  # LLaMA-Pro blocks inserted (trained alone: freeze or LoRA on them)
    llama_pro_expanded: bool = False  # the base already holds them (LLaMA-Factory's use_llama_pro)
    quantization_bits: int | None = None  # QLoRA: 4 or 8
    quantization_type: str = "nf4"  # QLoRA 4-bit data type: "nf4" | "fp4"
    double_quantization: bool = True  # QLoRA 4-bit: quantise the absmax constants too
    rope_scaling: str | None = None  # "linear" | "dynamic" | "yarn" | "llama3"
    max_context_length: int | None = None  # the context RoPE scaling is for
    galore: GaloreSettings | None = None  # GaLore optimizer (full fine-tuning)
    moe_aux_loss_coef: float = 0.0  # router load-balancing loss weight (MoE base models)
    init_adapter: str | None = None  # a PEFT LoRA folder the adapter starts from
    create_new_adapter: bool = False  # merge init_adapter into the base, train a fresh adapter
    resume_from: str | None = None  # a checkpoint folder to resume from instead of the latest
    neftune_alpha: float = 0.0  # NEFTune noise on the input embeddings (0 = off)
    optim: str = "adamw_torch"  # Transformers' optim name
    report_to: tuple[str, ...] = ()  # experiment trackers beside the job's own files
    # the benchmark scored at each evaluation: evaluation.__main__.run_benchmark's request
    # (task_dir, task, split, n_shot, lang, template, max_questions) plus save_dir; None = none
    eval_benchmark: dict | None = None
    extra: dict = field(default_factory=dict)


def base_model_dtype(base_model: str) -> str | None:
    """The dtype the base model was saved in (``config.json`` ``dtype``/``torch_dtype``)."""
    try:
        config = json.loads((Path(base_model) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    dtype = config.get("dtype") or config.get("torch_dtype")
    return str(dtype) if dtype else None


def _eval_benchmark(spec: tpb.TrainingJobSpec) -> dict | None:
    if not spec.HasField("eval_benchmark"):
        return None
    bench = spec.eval_benchmark
    return {
        "task_dir": bench.task_dir,
        "task": bench.task,
        "split": bench.split or "validation",
        "n_shot": bench.n_shot if bench.HasField("n_shot") else 5,
        "lang": bench.lang or "en",
        "template": bench.template,
        "max_questions": bench.max_questions if bench.HasField("max_questions") else None,
        "save_dir": bench.save_dir,
    }


def settings(spec: tpb.TrainingJobSpec, device: str = "cpu") -> Settings:
    """Resolve the defaults of a (valid) spec for ``device`` ("cpu" or "cuda")."""
    hp, ft, dist = spec.hyperparameters, spec.finetuning, spec.distributed
    lo, pref = ft.lora, spec.preference
    rank = lo.rank or 8
    lora = LoraSettings(
        rank=rank,
        alpha=lo.alpha if lo.HasField("alpha") else 2.0 * rank,
        dropout=lo.dropout,
        # "all" alone = the default (empty); "all" beside names (all,experts) is kept
        target_modules=() if set(lo.target_modules) <= {"all"} else tuple(lo.target_modules),
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
        dtype = "bfloat16" if device == "cuda" and devices.probe().bf16 else "float32"
    else:
        dtype = DTYPES[spec.compute_dtype]
    if spec.attention_implementation == tpb.ATTENTION_IMPLEMENTATION_UNSPECIFIED:
        flash = device == "cuda" and importlib.util.find_spec("flash_attn") is not None
        attention = "flash_attention_2" if flash and dtype != "float32" else "sdpa"
    else:
        attention = ATTENTION[spec.attention_implementation]
    return Settings(
        recipe=STAGES[spec.stage],
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
        trust_remote_code=spec.trust_remote_code,
        preference=PreferenceSettings(
            beta=pref.beta if pref.HasField("beta") else 0.1,
            loss_type=PREFERENCE_LOSSES[pref.loss_type],
            label_smoothing=pref.label_smoothing,
            pref_ftx=pref.pref_ftx,
            simpo_gamma=pref.simpo_gamma if pref.HasField("simpo_gamma") else 0.5,
            kto_chosen_weight=(
                pref.kto_chosen_weight if pref.HasField("kto_chosen_weight") else 1.0
            ),
            kto_rejected_weight=(
                pref.kto_rejected_weight if pref.HasField("kto_rejected_weight") else 1.0
            ),
        ),
        ppo=_ppo_settings(
            spec.ppo,
            hp.per_device_batch_size or 8,
            hp.gradient_accumulation_steps,
            epochs=1 if spec.stage == tpb.STAGE_GRPO else 4,  # TRL num_iterations = 1
        ),
        freeze=FreezeSettings(
            trainable_layers=ft.freeze.trainable_layers or 2,
            trainable_modules=tuple(ft.freeze.trainable_modules),
            extra_modules=tuple(ft.freeze.extra_modules),
        ),
        llama_pro_expand=ft.llama_pro.num_expand,
        llama_pro_expanded=ft.llama_pro.expanded,
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
        moe_aux_loss_coef=ft.moe_aux_loss_coef if ft.HasField("moe_aux_loss_coef") else 0.0,
        grpo=grpo_settings(spec.grpo),
        init_adapter=spec.adapter_path or None,  # the runner points JOB@VERSION at its copy
        create_new_adapter=spec.create_new_adapter,
        resume_from=spec.resume_from_checkpoint or None,
        resume=spec.resume or bool(spec.resume_from_checkpoint),
        neftune_alpha=hp.neftune_noise_alpha if hp.HasField("neftune_noise_alpha") else 0.0,
        optim=hp.optim or "adamw_torch",
        report_to=tuple(r for r in spec.report_to if r != "none"),
        eval_benchmark=_eval_benchmark(spec),
    )


def _ppo_settings(
    p: tpb.PpoConfig, batch_rows: int, accumulation: int, epochs: int = 4
) -> PpoSettings:
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
        ppo_epochs=p.ppo_epochs or epochs,
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


ADVANTAGE_ESTIMATORS = {
    tpb.ADVANTAGE_ESTIMATOR_UNSPECIFIED: "grpo",
    tpb.ADVANTAGE_ESTIMATOR_GRPO: "grpo",
    tpb.ADVANTAGE_ESTIMATOR_DR_GRPO: "dr_grpo",
    tpb.ADVANTAGE_ESTIMATOR_RLOO: "rloo",
    tpb.ADVANTAGE_ESTIMATOR_REINFORCE_PP: "reinforce_pp",
}
GRPO_LOSS_TYPES = {
    tpb.GRPO_LOSS_TYPE_UNSPECIFIED: "token-mean",
    tpb.GRPO_LOSS_TYPE_TOKEN_MEAN: "token-mean",
    tpb.GRPO_LOSS_TYPE_SEQ_MEAN_TOKEN_MEAN: "seq-mean-token-mean",
    tpb.GRPO_LOSS_TYPE_SEQ_MEAN_TOKEN_SUM_NORM: "seq-mean-token-sum-norm",
}
REWARD_SCALINGS = {
    tpb.REWARD_SCALING_UNSPECIFIED: "group",
    tpb.REWARD_SCALING_GROUP: "group",
    tpb.REWARD_SCALING_BATCH: "batch",
    tpb.REWARD_SCALING_NONE: "none",
}
KL_ESTIMATORS = {
    tpb.KL_ESTIMATOR_UNSPECIFIED: "k3",
    tpb.KL_ESTIMATOR_K1: "k1",
    tpb.KL_ESTIMATOR_K2: "k2",
    tpb.KL_ESTIMATOR_K3: "k3",
}
REINFORCE_BASELINES = {
    tpb.REINFORCE_BASELINE_UNSPECIFIED: "batch",
    tpb.REINFORCE_BASELINE_BATCH: "batch",
    tpb.REINFORCE_BASELINE_GROUP: "group",
}


def grpo_settings(g: tpb.GrpoConfig) -> GrpoSettings:
    epsilon = g.epsilon if g.HasField("epsilon") else 0.2
    return GrpoSettings(
        advantage_estimator=ADVANTAGE_ESTIMATORS[g.advantage_estimator],
        loss_type=GRPO_LOSS_TYPES[g.loss_type],
        scale_rewards=REWARD_SCALINGS[g.scale_rewards],
        epsilon=epsilon,
        epsilon_high=g.epsilon_high if g.HasField("epsilon_high") else epsilon,
        beta=g.beta if g.HasField("beta") else 0.0,
        kl_estimator=KL_ESTIMATORS[g.kl_estimator],
        mask_truncated_completions=g.mask_truncated_completions,
        dynamic_sampling=g.dynamic_sampling,
        max_refill_rounds=g.max_refill_rounds if g.HasField("max_refill_rounds") else 8,
        overlong_buffer_length=g.overlong_buffer_length,
        overlong_penalty_factor=(
            g.overlong_penalty_factor if g.HasField("overlong_penalty_factor") else 1.0
        ),
        reinforce_pp_baseline=REINFORCE_BASELINES[g.reinforce_pp_baseline],
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
