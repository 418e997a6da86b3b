"""The whole-spec check the training service runs before it launches a job.

``validate(spec)`` raises one ``InvalidArgument`` listing every bad field (``spec.compute_dtype``,
``spec.finetuning.lora.rank``, ...), or ``Unimplemented`` for a stage or method this version does
not train yet, naming the field. ``settings.settings`` assumes a spec that passed it.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

from llamafleet.training.v1 import training_pb2 as tpb

from services.common.errors import FieldViolation, InvalidArgument, Unimplemented
from services.training.spec import devices
from services.training.spec.architecture import check_architecture
from services.training.spec.benchmark import option_violations
from services.training.spec.normalize import pickle_only
from services.training.spec.settings import (
    OPTIMIZERS,
    PREFERENCE_LOSSES,
    QUANTIZATION_TYPES,
    REFERENCED,
    ROPE_SCALING,
    base_model_dtype,
)

TRACKER_MODULES = {"wandb": "wandb", "mlflow": "mlflow"}  # report_to -> the package it needs
REFUSED_TRACKERS = {
    "swanlab": "swanlab's releases need protobuf<7 and llamafleet's contract stubs need protobuf 7, "
    "so it cannot be installed beside llamafleet; use wandb (offline) or mlflow (local files)",
}


def _check_report_to(spec: tpb.TrainingJobSpec, check) -> None:
    """Every named tracker is known and installed here: never a silent no-op."""
    for i, name in enumerate(spec.report_to):
        path = f"spec.report_to[{i}]"
        if name in ("none", "tensorboard"):
            continue
        if name in REFUSED_TRACKERS:
            check(False, path, f"{name} is not supported: {REFUSED_TRACKERS[name]}")
        elif name not in TRACKER_MODULES:
            known = ", ".join(["none", "tensorboard", *TRACKER_MODULES])
            check(False, path, f"unknown tracker {name!r}; use {known}")
        elif importlib.util.find_spec(TRACKER_MODULES[name]) is None:
            check(False, path, f"{name} is not installed on the training machine "
                               "(pip install 'llamafleet[trackers]')")  # fmt: skip


BENCHMARK_STAGES = (tpb.STAGE_PT, tpb.STAGE_SFT, tpb.STAGE_DPO, tpb.STAGE_KTO)


def _check_eval_benchmark(spec: tpb.TrainingJobSpec, check) -> None:
    """The options of the benchmark scored at each evaluation (RunBenchmark's checks)."""
    if not spec.HasField("eval_benchmark"):
        return
    bench, path = spec.eval_benchmark, "spec.eval_benchmark."
    check(bool(bench.task_dir), path + "task_dir", "required: the folder holding the benchmark")
    n_shot = bench.n_shot if bench.HasField("n_shot") else 5
    for field, message in option_violations(
        bench.task, bench.split or "validation", n_shot, bench.lang or "en"
    ):
        check(False, path + field, message)
    check(not bench.HasField("max_questions") or bench.max_questions > 0,
          path + "max_questions", "must be > 0 (unset = every question)")  # fmt: skip
    check(
        spec.stage in BENCHMARK_STAGES,
        "spec.eval_benchmark",
        f"{tpb.Stage.Name(spec.stage)} has no evaluation points to score a benchmark at; "
        "stages STAGE_PT, STAGE_SFT, STAGE_DPO and STAGE_KTO can",
    )
    dist = spec.distributed
    zero3 = dist.backend == tpb.DISTRIBUTED_BACKEND_DEEPSPEED and dist.deepspeed_zero_stage == 3
    check(
        not (zero3 and dist.world_size > 1),
        "spec.eval_benchmark",
        "the benchmark is scored on rank 0 alone, and under ZeRO-3 rank 0 holds a shard of the "
        "weights; use ZeRO-2 or DDP, or RunBenchmark on the job's adapter versions",
    )


def _check_chain(spec: tpb.TrainingJobSpec, check) -> None:
    """The starting adapter (init_adapter, adapter_path) and the checkpoint to resume from."""
    starts = spec.HasField("init_adapter") or bool(spec.adapter_path)
    check(
        not (spec.HasField("init_adapter") and spec.adapter_path),
        "spec.adapter_path",
        "set at most one of init_adapter (JOB@VERSION) and adapter_path (a folder)",
    )
    if starts:
        method = spec.finetuning.type
        check(
            method in (tpb.FINETUNING_TYPE_UNSPECIFIED, tpb.FINETUNING_TYPE_LORA),
            "spec.finetuning.type",
            "a starting adapter (init_adapter, adapter_path) needs LORA, as in LLaMA-Factory; "
            "to train all weights from an adapter, export it merged and use that as base_model",
        )
    if spec.adapter_path:
        folder = Path(spec.adapter_path)
        check(
            (folder / "adapter_config.json").is_file()
            and (folder / "adapter_model.safetensors").is_file(),
            "spec.adapter_path",
            f"{folder} is not a PEFT adapter folder (adapter_config.json and "
            "adapter_model.safetensors)",
        )
    check(
        not spec.create_new_adapter or starts,
        "spec.create_new_adapter",
        "needs a starting adapter (init_adapter or adapter_path) to merge",
    )
    if spec.resume_from_checkpoint:
        folder = Path(spec.resume_from_checkpoint)
        check(
            (folder / "state.json").is_file(),
            "spec.resume_from_checkpoint",
            f"{folder} is not a checkpoint folder (<job folder>/checkpoints/step-N with "
            "state.json)",
        )


def _check_ppo(spec: tpb.TrainingJobSpec, check) -> None:
    """``PpoConfig`` ranges (STAGE_PPO and STAGE_GRPO only; other stages ignore it)."""
    if spec.stage not in (tpb.STAGE_PPO, tpb.STAGE_GRPO):
        return
    p, path = spec.ppo, "spec.ppo."
    check(bool(p.reward_scorer), path + "reward_scorer", "required: a reward service scorer name")
    check(
        not p.reward_adapter.id or p.reward_adapter.version >= 1,
        path + "reward_adapter.version",
        "must be >= 1 (an explicit version)",
    )
    check(p.rollout_batch_size >= 0, path + "rollout_batch_size", "must be >= 0")
    check(p.ppo_epochs >= 0, path + "ppo_epochs", "must be >= 0 (0 = 4; STAGE_GRPO: 1)")
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
        f"{tpb.Stage.Name(spec.stage)} batches by per_device_batch_size (prompts)",
    )
    check(
        p.rollout_batch_size % rows == 0,
        path + "rollout_batch_size",
        f"must be a multiple of per_device_batch_size ({rows})",
    )


def _check_grpo(spec: tpb.TrainingJobSpec, check) -> None:
    """``GrpoConfig`` ranges (STAGE_GRPO only)."""
    if spec.stage != tpb.STAGE_GRPO:
        return
    g, path, sampling = spec.grpo, "spec.grpo.", spec.ppo.sampling
    n = sampling.n if sampling.HasField("n") else 1
    check(
        n >= 2,
        "spec.ppo.sampling.n",
        "must be >= 2 for STAGE_GRPO (num_generations: the group a sample is compared with)",
    )
    check(not g.HasField("epsilon") or g.epsilon > 0, path + "epsilon", "must be > 0")
    check(
        not g.HasField("epsilon_high") or g.epsilon_high > 0, path + "epsilon_high", "must be > 0"
    )
    check(not g.HasField("beta") or g.beta >= 0, path + "beta", "must be >= 0 (0 = no KL term)")
    max_tokens = sampling.max_tokens if sampling.HasField("max_tokens") else 0
    check(
        g.loss_type != tpb.GRPO_LOSS_TYPE_SEQ_MEAN_TOKEN_SUM_NORM or max_tokens > 0,
        "spec.ppo.sampling.max_tokens",
        "required with GRPO_LOSS_TYPE_SEQ_MEAN_TOKEN_SUM_NORM (its normaliser)",
    )
    check(g.overlong_buffer_length >= 0, path + "overlong_buffer_length", "must be >= 0")
    check(
        not g.overlong_buffer_length or 0 < g.overlong_buffer_length < max_tokens,
        path + "overlong_buffer_length",
        "must be below spec.ppo.sampling.max_tokens (which must be set)",
    )
    check(
        not g.HasField("overlong_penalty_factor") or g.overlong_penalty_factor >= 0,
        path + "overlong_penalty_factor",
        "must be >= 0",
    )
    check(
        not g.HasField("max_refill_rounds") or g.max_refill_rounds >= 1,
        path + "max_refill_rounds",
        "must be >= 1",
    )
    check(
        not g.dynamic_sampling or spec.ppo.max_staleness <= 1,
        path + "dynamic_sampling",
        "needs spec.ppo.max_staleness 1 (refill prompts come from the prompt stream after the "
        "step's, which later steps in flight would already hold)",
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
    _check_chain(spec, check)
    _check_quantization(spec, check)
    _check_ppo(spec, check)
    _check_grpo(spec, check)
    _check_rope(spec, check)
    check_architecture(spec, base, check)
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
    _check_report_to(spec, check)
    _check_eval_benchmark(spec, check)
    hp_ = spec.hyperparameters
    if hp_.HasField("neftune_noise_alpha"):
        alpha = hp_.neftune_noise_alpha
        check(math.isfinite(alpha) and alpha >= 0, "spec.hyperparameters.neftune_noise_alpha",
              "must be a finite number >= 0 (0 = off)")  # fmt: skip
    if hp_.optim:
        if hp_.optim not in OPTIMIZERS:
            check(False, "spec.hyperparameters.optim",
                  f"{hp_.optim!r} is not offered; use one of {', '.join(OPTIMIZERS)}")  # fmt: skip
        elif OPTIMIZERS[hp_.optim] and importlib.util.find_spec("bitsandbytes") is None:
            check(False, "spec.hyperparameters.optim",
                  f"{hp_.optim} needs bitsandbytes (pip install 'llamafleet[methods]')")  # fmt: skip
    check(pref.pref_ftx >= 0, path + "pref_ftx", "must be >= 0")
    for name in ("kto_chosen_weight", "kto_rejected_weight"):
        check(not pref.HasField(name) or getattr(pref, name) > 0, path + name, "must be > 0")
    if spec.stage == tpb.STAGE_KTO:
        check(
            PREFERENCE_LOSSES[pref.loss_type] == "sigmoid" and not pref.label_smoothing,
            path + "loss_type",
            "STAGE_KTO has its own loss: leave loss_type and label_smoothing unset",
        )
        check(pref.pref_ftx == 0, path + "pref_ftx", "not used by STAGE_KTO: leave it unset")
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

    found = devices.probe()  # torch's view of this machine, never loaded into the service
    has_cuda, has_bf16, gpus = found.cuda, found.bf16, found.gpus
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
    if layers and expand > 0 and not ft.llama_pro.expanded:
        check(
            layers % expand == 0,
            "spec.finetuning.llama_pro.num_expand",
            f"must divide the base model's {layers} layers",
        )
    if layers and expand > 0 and ft.llama_pro.expanded:  # LLaMA-Factory's use_llama_pro
        check(
            layers % expand == 0 and layers > expand,
            "spec.finetuning.llama_pro.num_expand",
            f"must divide the expanded base model's {layers} layers (the trained blocks are "
            "the last of each of num_expand equal groups)",
        )
    check(
        not ft.llama_pro.expanded or expand > 0,
        "spec.finetuning.llama_pro.expanded",
        "needs num_expand (LLaMA-Factory: freeze_trainable_layers with use_llama_pro)",
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

    if spec.stage in (tpb.STAGE_PPO, tpb.STAGE_GRPO):
        stage = tpb.Stage.Name(spec.stage)
        lora_only = (tpb.FINETUNING_TYPE_UNSPECIFIED, tpb.FINETUNING_TYPE_LORA)
        if spec.stage == tpb.STAGE_PPO and spec.finetuning.type not in lora_only:
            refuse(
                "spec.finetuning.type",
                f"{stage} with {tpb.FinetuningType.Name(spec.finetuning.type)} (the policy is a "
                "LoRA adapter on a frozen base, the value head beside it; use LORA, or "
                "STAGE_GRPO, which trains full and freeze policies)",
            )
        if spec.distributed.world_size > 1:
            refuse("spec.distributed.world_size", f"{stage} on several ranks")
        if spec.distributed.backend == tpb.DISTRIBUTED_BACKEND_DEEPSPEED:
            refuse("spec.distributed.backend", f"{stage} with DeepSpeed")
        if spec.finetuning.llama_pro.num_expand:
            refuse("spec.finetuning.llama_pro", f"{stage} with LLaMA-Pro")
        if spec.rope_scaling:
            refuse(
                "spec.rope_scaling",
                f"{stage} with RoPE scaling (the rollout workers serve the base model as saved; "
                "export a RoPE-scaled model and use it as the base instead)",
            )
        if spec.finetuning.lora.pissa_init:
            refuse(
                "spec.finetuning.lora.pissa_init",
                f"{stage} with PiSSA (it rewrites the trainer's base weights: the reference would "
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
    if spec.stage == tpb.STAGE_KTO:
        if spec.distributed.world_size > 1:
            refuse(
                "spec.distributed.world_size",
                "STAGE_KTO on several ranks (the KL baseline is estimated from one micro-batch; "
                "TRL gathers it over ranks, this version does not yet)",
            )
        if spec.finetuning.llama_pro.num_expand:
            refuse("spec.finetuning.llama_pro", "LLaMA-Pro block expansion in STAGE_KTO")
    if spec.hyperparameters.neftune_noise_alpha and spec.stage in (tpb.STAGE_PPO, tpb.STAGE_GRPO):
        stage = tpb.Stage.Name(spec.stage)
        refuse("spec.hyperparameters.neftune_noise_alpha", f"NEFTune in {stage}")
    optim = spec.hyperparameters.optim
    if optim not in ("", "adamw_torch") and spec.stage == tpb.STAGE_PPO:
        refuse("spec.hyperparameters.optim", f"optim {optim!r} in STAGE_PPO (AdamW only)")
    if (
        optim not in ("", "adamw_torch")
        and spec.distributed.backend == tpb.DISTRIBUTED_BACKEND_DEEPSPEED
    ):
        refuse("spec.hyperparameters.optim", f"optim {optim!r} with DeepSpeed (AdamW only)")
    if optim not in ("", "adamw_torch") and spec.finetuning.HasField("galore"):
        refuse("spec.hyperparameters.optim", f"optim {optim!r} with GaLore (GaLore-AdamW only)")
    try:
        base_config = json.loads((Path(spec.base_model) / "config.json").read_text())
    except (OSError, ValueError):
        base_config = {}
    method = (base_config.get("quantization_config") or {}).get("quant_method")
    if method and method != "bitsandbytes":
        refuse(
            "spec.base_model",
            f"training a base saved pre-quantized with {method} (AWQ, GPTQ, AQLM, ... need their "
            "own kernels; give the unquantized model, with quantization_bits for QLoRA)",
        )
    starts = spec.HasField("init_adapter") or bool(spec.adapter_path)
    if starts and ft.llama_pro.num_expand:
        refuse(
            "spec.finetuning.llama_pro",
            "LLaMA-Pro block expansion from an adapter (the adapter was trained on the base "
            "without the new blocks)",
        )
    if starts and ft.HasField("quantization_bits") and spec.create_new_adapter:
        refuse(
            "spec.create_new_adapter",
            "create_new_adapter with QLoRA (an adapter cannot be merged into a quantized base; "
            "leave create_new_adapter unset to continue training the adapter)",
        )
    if spec.resume_from_checkpoint and spec.stage in (tpb.STAGE_PPO, tpb.STAGE_GRPO):
        refuse(
            "spec.resume_from_checkpoint",
            f"{tpb.Stage.Name(spec.stage)} from a named checkpoint folder (its rollout streams "
            "belong to the job: "
            "use resume: true with the same job_id)",
        )
