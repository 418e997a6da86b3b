"""What the service checks and fills in a ``TrainingJobSpec`` before it accepts a job.

``normalize`` gives the spec a job id, absolute paths and the defaults the contract documents
(the stored spec is what ``TrainingJob.spec`` shows and what "identical spec" compares).
``validate`` rejects what the service sees in a request on its own: missing required fields, values
out of range, a base model folder that is not there or whose only weights are a pickle. The whole
spec, recipe by recipe, is ``validation.validate``'s, which the job manager runs after it. This
module knows nothing about processes or files other than the base model folder.
"""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path

from llamafleet.training.v1 import training_pb2 as pb

from services.common.errors import FieldViolation, InvalidArgument
from services.common.weight_files import pickle_files

JOB_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
TERMINAL_STATES = frozenset({pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED})


def new_job_id() -> str:
    """A service-assigned id: ``job-<utc time>-<random>``, valid under ``JOB_ID``."""
    return f"job-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def normalize(spec: pb.TrainingJobSpec) -> pb.TrainingJobSpec:
    """A copy with job_id set, paths absolute and documented defaults filled in."""
    out = pb.TrainingJobSpec()
    out.CopyFrom(spec)
    if not out.job_id:
        out.job_id = new_job_id()
    if out.base_model:
        out.base_model = str(Path(out.base_model).expanduser().absolute())
    if out.output_dir:
        out.output_dir = str(Path(out.output_dir).expanduser().resolve())
    ft = out.finetuning
    if ft.type == pb.FINETUNING_TYPE_UNSPECIFIED:
        ft.type = pb.FINETUNING_TYPE_LORA
    if ft.type == pb.FINETUNING_TYPE_LORA:
        ft.lora.rank = ft.lora.rank or 8
        if not ft.lora.HasField("alpha"):
            ft.lora.alpha = 2.0 * ft.lora.rank
        if ft.lora.pissa_init and not ft.lora.HasField("pissa_iters"):
            ft.lora.pissa_iters = 16
    hp = out.hyperparameters
    hp.learning_rate = hp.learning_rate or 5e-5
    if hp.lr_scheduler == pb.LR_SCHEDULER_TYPE_UNSPECIFIED:
        hp.lr_scheduler = pb.LR_SCHEDULER_TYPE_LINEAR
    hp.num_epochs = hp.num_epochs or 3.0
    if hp.WhichOneof("batch_size") is None:
        hp.per_device_batch_size = 8
    hp.gradient_accumulation_steps = hp.gradient_accumulation_steps or 1
    if not hp.HasField("max_grad_norm"):
        hp.max_grad_norm = 1.0
    if not hp.HasField("seed"):
        hp.seed = 42
    hp.logging_steps = hp.logging_steps or 10
    dist = out.distributed
    dist.world_size = dist.world_size or 1
    if dist.backend == pb.DISTRIBUTED_BACKEND_UNSPECIFIED:
        dist.backend = pb.DISTRIBUTED_BACKEND_DDP
    if dist.backend == pb.DISTRIBUTED_BACKEND_DEEPSPEED and not dist.HasField(
        "deepspeed_zero_stage"
    ):
        dist.deepspeed_zero_stage = 2
    if out.stage == pb.STAGE_DPO:
        _preference_defaults(out.preference)
    if out.stage == pb.STAGE_PPO:
        _ppo_defaults(out.ppo)
    if out.stage == pb.STAGE_GRPO:
        _grpo_defaults(out)
    return out


def _preference_defaults(pref: pb.PreferenceConfig) -> None:
    if not pref.HasField("beta"):
        pref.beta = 0.1
    if pref.loss_type == pb.PREFERENCE_LOSS_UNSPECIFIED:
        pref.loss_type = pb.PREFERENCE_LOSS_SIGMOID
    if pref.loss_type == pb.PREFERENCE_LOSS_SIMPO and not pref.HasField("simpo_gamma"):
        pref.simpo_gamma = 0.5


def _ppo_defaults(ppo: pb.PpoConfig) -> None:
    ppo.ppo_epochs = ppo.ppo_epochs or 4
    if not ppo.sampling.HasField("n"):
        ppo.sampling.n = 1
    for name, value in (
        ("kl_coef", 0.2),
        ("gae_gamma", 1.0),
        ("gae_lambda", 0.95),
        ("clip_range", 0.2),
        ("value_clip_range", 0.2),
        ("value_loss_coef", 0.1),
        ("max_staleness", 1),
    ):
        if not ppo.HasField(name):
            setattr(ppo, name, value)
    if ppo.adaptive_kl:
        if not ppo.HasField("kl_target"):
            ppo.kl_target = 6.0
        if not ppo.HasField("kl_horizon"):
            ppo.kl_horizon = 10000


def _grpo_defaults(spec: pb.TrainingJobSpec) -> None:
    """STAGE_GRPO: PpoConfig's sampling/batch/staleness defaults (one optimisation epoch, TRL's
    num_iterations) and GrpoConfig's."""
    ppo, g = spec.ppo, spec.grpo
    ppo.ppo_epochs = ppo.ppo_epochs or 1
    if not ppo.HasField("max_staleness"):
        ppo.max_staleness = 1
    if g.advantage_estimator == pb.ADVANTAGE_ESTIMATOR_UNSPECIFIED:
        g.advantage_estimator = pb.ADVANTAGE_ESTIMATOR_GRPO
    if g.loss_type == pb.GRPO_LOSS_TYPE_UNSPECIFIED:
        g.loss_type = pb.GRPO_LOSS_TYPE_TOKEN_MEAN
    if g.scale_rewards == pb.REWARD_SCALING_UNSPECIFIED:
        g.scale_rewards = pb.REWARD_SCALING_GROUP
    if not g.HasField("epsilon"):
        g.epsilon = 0.2
    if not g.HasField("epsilon_high"):
        g.epsilon_high = g.epsilon
    if not g.HasField("beta"):
        g.beta = 0.0
    if g.kl_estimator == pb.KL_ESTIMATOR_UNSPECIFIED:
        g.kl_estimator = pb.KL_ESTIMATOR_K3


def same_spec(a: pb.TrainingJobSpec, b: pb.TrainingJobSpec) -> bool:
    """Equal apart from ``resume`` (which asks for an action, not a different job)."""
    a2, b2 = pb.TrainingJobSpec(), pb.TrainingJobSpec()
    a2.CopyFrom(a)
    b2.CopyFrom(b)
    a2.resume = b2.resume = False
    return a2 == b2


def validate(spec: pb.TrainingJobSpec) -> None:
    """Raise InvalidArgument listing every violation (field paths start with ``spec.``)."""
    bad: list[FieldViolation] = []

    def check(ok: bool, path: str, why: str) -> None:
        if not ok:
            bad.append(FieldViolation(f"spec.{path}", why))

    check(bool(JOB_ID.match(spec.job_id)), "job_id", "must match [a-z0-9][a-z0-9._-]{0,62}")
    check(
        spec.stage != pb.STAGE_UNSPECIFIED,
        "stage",
        "required: STAGE_PT, STAGE_SFT, STAGE_RM, STAGE_DPO, STAGE_PPO, STAGE_GRPO or STAGE_KTO",
    )
    if not spec.base_model:
        check(False, "base_model", "required: a Hugging Face model folder on the training machine")
    else:
        folder = Path(spec.base_model)
        check(folder.is_dir(), "base_model", f"no such folder: {folder}")
        if folder.is_dir():
            check(
                (folder / "config.json").is_file(),
                "base_model",
                f"{folder} has no config.json (not a Hugging Face model folder)",
            )
            why = pickle_only(folder)
            check(why is None, "base_model", why or "")
    _check_dataset(spec.dataset, "dataset", check, required=True)
    if spec.HasField("eval_dataset"):
        _check_dataset(spec.eval_dataset, "eval_dataset", check, required=False)
    _check_hyperparameters(spec.hyperparameters, check)
    _check_finetuning(spec.finetuning, check)
    dist = spec.distributed
    check(dist.world_size >= 0, "distributed.world_size", "must be >= 0")
    if dist.HasField("deepspeed_zero_stage"):
        check(0 <= dist.deepspeed_zero_stage <= 3, "distributed.deepspeed_zero_stage", "0 to 3")
    check(
        0 <= spec.preference.label_smoothing < 0.5,
        "preference.label_smoothing",
        "must be in [0, 0.5)",
    )
    if spec.stage in (pb.STAGE_PPO, pb.STAGE_GRPO):
        check(
            bool(spec.ppo.reward_scorer),
            "ppo.reward_scorer",
            f"required for {pb.Stage.Name(spec.stage)}",
        )
    if spec.init_adapter.id:
        check(spec.init_adapter.version >= 1, "init_adapter.version", "must be >= 1")
    if bad:
        raise InvalidArgument(
            "the training job spec is invalid", reason="INVALID_JOB_SPEC", violations=bad
        )


def pickle_only(folder: Path) -> str | None:
    """Why ``folder`` is refused when its only weights are a pickle (``pytorch_model.bin``, ...),
    else None. A folder with no weight files at all is left to the loader, which needs
    ``*.safetensors`` (``model.load.load_base``)."""
    if any(folder.glob("*.safetensors")):
        return None
    pickles = pickle_files(folder)
    if not pickles:
        return None
    return (
        f"{folder} has no *.safetensors weights; it holds {', '.join(pickles)}, a pickle, which "
        "is never loaded (it can run code): re-save the model with "
        "save_pretrained(..., safe_serialization=True)"
    )


def _check_dataset(ref: pb.DatasetRef, path: str, check, *, required: bool) -> None:
    which = ref.WhichOneof("dataset")
    if which is None:
        check(not required, path, "required: set dataset_id or an inline spec")
    elif which == "dataset_id":
        check(bool(ref.dataset_id), f"{path}.dataset_id", "must not be empty")
    else:
        check(len(ref.spec.sources) > 0, f"{path}.spec.sources", "needs at least one source")
        check(0 <= ref.spec.eval_fraction < 1, f"{path}.spec.eval_fraction", "must be in [0, 1)")
        check(ref.spec.tokenization.cutoff_len >= 0, f"{path}.spec.tokenization.cutoff_len", ">= 0")


def _check_hyperparameters(hp: pb.Hyperparameters, check) -> None:
    p = "hyperparameters."
    check(hp.learning_rate >= 0, p + "learning_rate", "must be >= 0")
    check(hp.num_epochs >= 0, p + "num_epochs", "must be >= 0")
    if hp.HasField("max_steps"):
        check(hp.max_steps > 0, p + "max_steps", "must be > 0 when set")
    check(0 <= hp.warmup_ratio < 1, p + "warmup_ratio", "must be in [0, 1)")
    which = hp.WhichOneof("batch_size")
    if which is not None:
        check(getattr(hp, which) > 0, p + which, "must be > 0 when set")
    for name in ("warmup_steps", "gradient_accumulation_steps", "eval_steps", "logging_steps"):
        check(getattr(hp, name) >= 0, p + name, "must be >= 0")
    check(hp.save_steps >= 0, p + "save_steps", "must be >= 0")
    check(hp.weight_decay >= 0, p + "weight_decay", "must be >= 0")
    if hp.HasField("max_grad_norm"):
        check(hp.max_grad_norm >= 0, p + "max_grad_norm", "must be >= 0")
    if hp.HasField("save_total_limit"):
        check(hp.save_total_limit >= 1, p + "save_total_limit", "must be >= 1 when set")


def _check_finetuning(ft: pb.FinetuningConfig, check) -> None:
    check(ft.lora.rank >= 0, "finetuning.lora.rank", "must be >= 0")
    check(0 <= ft.lora.dropout < 1, "finetuning.lora.dropout", "must be in [0, 1)")
    if ft.HasField("quantization_bits"):
        check(ft.quantization_bits in (4, 8), "finetuning.quantization_bits", "must be 4 or 8")
        check(
            ft.type in (pb.FINETUNING_TYPE_LORA, pb.FINETUNING_TYPE_UNSPECIFIED),
            "finetuning.quantization_bits",
            "QLoRA needs finetuning.type FINETUNING_TYPE_LORA",
        )
    if ft.HasField("galore"):
        check(
            ft.type == pb.FINETUNING_TYPE_FULL,
            "finetuning.galore",
            "GaLore needs finetuning.type FINETUNING_TYPE_FULL",
        )
    check(ft.llama_pro.num_expand >= 0, "finetuning.llama_pro.num_expand", "must be >= 0")
