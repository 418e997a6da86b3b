import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from llamafleet.common.v1 import common_pb2 as _common_pb2
from llamafleet.data.v1 import data_pb2 as _data_pb2
from llamafleet.rollout.v1 import rollout_pb2 as _rollout_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_PT: _ClassVar[Stage]
    STAGE_SFT: _ClassVar[Stage]
    STAGE_RM: _ClassVar[Stage]
    STAGE_DPO: _ClassVar[Stage]
    STAGE_PPO: _ClassVar[Stage]
    STAGE_GRPO: _ClassVar[Stage]
    STAGE_KTO: _ClassVar[Stage]

class FinetuningType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINETUNING_TYPE_UNSPECIFIED: _ClassVar[FinetuningType]
    FINETUNING_TYPE_FULL: _ClassVar[FinetuningType]
    FINETUNING_TYPE_FREEZE: _ClassVar[FinetuningType]
    FINETUNING_TYPE_LORA: _ClassVar[FinetuningType]

class LrSchedulerType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LR_SCHEDULER_TYPE_UNSPECIFIED: _ClassVar[LrSchedulerType]
    LR_SCHEDULER_TYPE_LINEAR: _ClassVar[LrSchedulerType]
    LR_SCHEDULER_TYPE_COSINE: _ClassVar[LrSchedulerType]
    LR_SCHEDULER_TYPE_COSINE_WITH_RESTARTS: _ClassVar[LrSchedulerType]
    LR_SCHEDULER_TYPE_POLYNOMIAL: _ClassVar[LrSchedulerType]
    LR_SCHEDULER_TYPE_CONSTANT: _ClassVar[LrSchedulerType]
    LR_SCHEDULER_TYPE_CONSTANT_WITH_WARMUP: _ClassVar[LrSchedulerType]
    LR_SCHEDULER_TYPE_INVERSE_SQRT: _ClassVar[LrSchedulerType]

class ComputeDtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPUTE_DTYPE_UNSPECIFIED: _ClassVar[ComputeDtype]
    COMPUTE_DTYPE_FLOAT32: _ClassVar[ComputeDtype]
    COMPUTE_DTYPE_FLOAT16: _ClassVar[ComputeDtype]
    COMPUTE_DTYPE_BFLOAT16: _ClassVar[ComputeDtype]

class AttentionImplementation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTENTION_IMPLEMENTATION_UNSPECIFIED: _ClassVar[AttentionImplementation]
    ATTENTION_IMPLEMENTATION_EAGER: _ClassVar[AttentionImplementation]
    ATTENTION_IMPLEMENTATION_SDPA: _ClassVar[AttentionImplementation]
    ATTENTION_IMPLEMENTATION_FLASH_ATTENTION_2: _ClassVar[AttentionImplementation]

class DistributedBackend(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISTRIBUTED_BACKEND_UNSPECIFIED: _ClassVar[DistributedBackend]
    DISTRIBUTED_BACKEND_DDP: _ClassVar[DistributedBackend]
    DISTRIBUTED_BACKEND_DEEPSPEED: _ClassVar[DistributedBackend]

class PreferenceLoss(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREFERENCE_LOSS_UNSPECIFIED: _ClassVar[PreferenceLoss]
    PREFERENCE_LOSS_SIGMOID: _ClassVar[PreferenceLoss]
    PREFERENCE_LOSS_IPO: _ClassVar[PreferenceLoss]
    PREFERENCE_LOSS_HINGE: _ClassVar[PreferenceLoss]
    PREFERENCE_LOSS_ORPO: _ClassVar[PreferenceLoss]
    PREFERENCE_LOSS_SIMPO: _ClassVar[PreferenceLoss]

class GaloreProjectionType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GALORE_PROJECTION_TYPE_UNSPECIFIED: _ClassVar[GaloreProjectionType]
    GALORE_PROJECTION_TYPE_STD: _ClassVar[GaloreProjectionType]
    GALORE_PROJECTION_TYPE_REVERSE_STD: _ClassVar[GaloreProjectionType]
    GALORE_PROJECTION_TYPE_RIGHT: _ClassVar[GaloreProjectionType]
    GALORE_PROJECTION_TYPE_LEFT: _ClassVar[GaloreProjectionType]
    GALORE_PROJECTION_TYPE_FULL: _ClassVar[GaloreProjectionType]

class RopeScalingType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROPE_SCALING_TYPE_UNSPECIFIED: _ClassVar[RopeScalingType]
    ROPE_SCALING_TYPE_LINEAR: _ClassVar[RopeScalingType]
    ROPE_SCALING_TYPE_DYNAMIC: _ClassVar[RopeScalingType]
    ROPE_SCALING_TYPE_YARN: _ClassVar[RopeScalingType]
    ROPE_SCALING_TYPE_LLAMA3: _ClassVar[RopeScalingType]

class QuantizationType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUANTIZATION_TYPE_UNSPECIFIED: _ClassVar[QuantizationType]
    QUANTIZATION_TYPE_NF4: _ClassVar[QuantizationType]
    QUANTIZATION_TYPE_FP4: _ClassVar[QuantizationType]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class ExportMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_MODE_UNSPECIFIED: _ClassVar[ExportMode]
    EXPORT_MODE_MERGED: _ClassVar[ExportMode]
    EXPORT_MODE_ADAPTER_ONLY: _ClassVar[ExportMode]

class LogLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_LEVEL_UNSPECIFIED: _ClassVar[LogLevel]
    LOG_LEVEL_DEBUG: _ClassVar[LogLevel]
    LOG_LEVEL_INFO: _ClassVar[LogLevel]
    LOG_LEVEL_WARNING: _ClassVar[LogLevel]
    LOG_LEVEL_ERROR: _ClassVar[LogLevel]

class AdapterFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ADAPTER_FORMAT_UNSPECIFIED: _ClassVar[AdapterFormat]
    ADAPTER_FORMAT_PEFT_TAR: _ClassVar[AdapterFormat]
    ADAPTER_FORMAT_FULL_SAFETENSORS: _ClassVar[AdapterFormat]

class AdvantageEstimator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ADVANTAGE_ESTIMATOR_UNSPECIFIED: _ClassVar[AdvantageEstimator]
    ADVANTAGE_ESTIMATOR_GRPO: _ClassVar[AdvantageEstimator]
    ADVANTAGE_ESTIMATOR_DR_GRPO: _ClassVar[AdvantageEstimator]
    ADVANTAGE_ESTIMATOR_RLOO: _ClassVar[AdvantageEstimator]
    ADVANTAGE_ESTIMATOR_REINFORCE_PP: _ClassVar[AdvantageEstimator]

class RewardScaling(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REWARD_SCALING_UNSPECIFIED: _ClassVar[RewardScaling]
    REWARD_SCALING_GROUP: _ClassVar[RewardScaling]
    REWARD_SCALING_BATCH: _ClassVar[RewardScaling]
    REWARD_SCALING_NONE: _ClassVar[RewardScaling]

class GrpoLossType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRPO_LOSS_TYPE_UNSPECIFIED: _ClassVar[GrpoLossType]
    GRPO_LOSS_TYPE_TOKEN_MEAN: _ClassVar[GrpoLossType]
    GRPO_LOSS_TYPE_SEQ_MEAN_TOKEN_MEAN: _ClassVar[GrpoLossType]
    GRPO_LOSS_TYPE_SEQ_MEAN_TOKEN_SUM_NORM: _ClassVar[GrpoLossType]

class KlEstimator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KL_ESTIMATOR_UNSPECIFIED: _ClassVar[KlEstimator]
    KL_ESTIMATOR_K1: _ClassVar[KlEstimator]
    KL_ESTIMATOR_K2: _ClassVar[KlEstimator]
    KL_ESTIMATOR_K3: _ClassVar[KlEstimator]

class ReinforceBaseline(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REINFORCE_BASELINE_UNSPECIFIED: _ClassVar[ReinforceBaseline]
    REINFORCE_BASELINE_BATCH: _ClassVar[ReinforceBaseline]
    REINFORCE_BASELINE_GROUP: _ClassVar[ReinforceBaseline]
STAGE_UNSPECIFIED: Stage
STAGE_PT: Stage
STAGE_SFT: Stage
STAGE_RM: Stage
STAGE_DPO: Stage
STAGE_PPO: Stage
STAGE_GRPO: Stage
STAGE_KTO: Stage
FINETUNING_TYPE_UNSPECIFIED: FinetuningType
FINETUNING_TYPE_FULL: FinetuningType
FINETUNING_TYPE_FREEZE: FinetuningType
FINETUNING_TYPE_LORA: FinetuningType
LR_SCHEDULER_TYPE_UNSPECIFIED: LrSchedulerType
LR_SCHEDULER_TYPE_LINEAR: LrSchedulerType
LR_SCHEDULER_TYPE_COSINE: LrSchedulerType
LR_SCHEDULER_TYPE_COSINE_WITH_RESTARTS: LrSchedulerType
LR_SCHEDULER_TYPE_POLYNOMIAL: LrSchedulerType
LR_SCHEDULER_TYPE_CONSTANT: LrSchedulerType
LR_SCHEDULER_TYPE_CONSTANT_WITH_WARMUP: LrSchedulerType
LR_SCHEDULER_TYPE_INVERSE_SQRT: LrSchedulerType
COMPUTE_DTYPE_UNSPECIFIED: ComputeDtype
COMPUTE_DTYPE_FLOAT32: ComputeDtype
COMPUTE_DTYPE_FLOAT16: ComputeDtype
COMPUTE_DTYPE_BFLOAT16: ComputeDtype
ATTENTION_IMPLEMENTATION_UNSPECIFIED: AttentionImplementation
ATTENTION_IMPLEMENTATION_EAGER: AttentionImplementation
ATTENTION_IMPLEMENTATION_SDPA: AttentionImplementation
ATTENTION_IMPLEMENTATION_FLASH_ATTENTION_2: AttentionImplementation
DISTRIBUTED_BACKEND_UNSPECIFIED: DistributedBackend
DISTRIBUTED_BACKEND_DDP: DistributedBackend
DISTRIBUTED_BACKEND_DEEPSPEED: DistributedBackend
PREFERENCE_LOSS_UNSPECIFIED: PreferenceLoss
PREFERENCE_LOSS_SIGMOID: PreferenceLoss
PREFERENCE_LOSS_IPO: PreferenceLoss
PREFERENCE_LOSS_HINGE: PreferenceLoss
PREFERENCE_LOSS_ORPO: PreferenceLoss
PREFERENCE_LOSS_SIMPO: PreferenceLoss
GALORE_PROJECTION_TYPE_UNSPECIFIED: GaloreProjectionType
GALORE_PROJECTION_TYPE_STD: GaloreProjectionType
GALORE_PROJECTION_TYPE_REVERSE_STD: GaloreProjectionType
GALORE_PROJECTION_TYPE_RIGHT: GaloreProjectionType
GALORE_PROJECTION_TYPE_LEFT: GaloreProjectionType
GALORE_PROJECTION_TYPE_FULL: GaloreProjectionType
ROPE_SCALING_TYPE_UNSPECIFIED: RopeScalingType
ROPE_SCALING_TYPE_LINEAR: RopeScalingType
ROPE_SCALING_TYPE_DYNAMIC: RopeScalingType
ROPE_SCALING_TYPE_YARN: RopeScalingType
ROPE_SCALING_TYPE_LLAMA3: RopeScalingType
QUANTIZATION_TYPE_UNSPECIFIED: QuantizationType
QUANTIZATION_TYPE_NF4: QuantizationType
QUANTIZATION_TYPE_FP4: QuantizationType
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
EXPORT_MODE_UNSPECIFIED: ExportMode
EXPORT_MODE_MERGED: ExportMode
EXPORT_MODE_ADAPTER_ONLY: ExportMode
LOG_LEVEL_UNSPECIFIED: LogLevel
LOG_LEVEL_DEBUG: LogLevel
LOG_LEVEL_INFO: LogLevel
LOG_LEVEL_WARNING: LogLevel
LOG_LEVEL_ERROR: LogLevel
ADAPTER_FORMAT_UNSPECIFIED: AdapterFormat
ADAPTER_FORMAT_PEFT_TAR: AdapterFormat
ADAPTER_FORMAT_FULL_SAFETENSORS: AdapterFormat
ADVANTAGE_ESTIMATOR_UNSPECIFIED: AdvantageEstimator
ADVANTAGE_ESTIMATOR_GRPO: AdvantageEstimator
ADVANTAGE_ESTIMATOR_DR_GRPO: AdvantageEstimator
ADVANTAGE_ESTIMATOR_RLOO: AdvantageEstimator
ADVANTAGE_ESTIMATOR_REINFORCE_PP: AdvantageEstimator
REWARD_SCALING_UNSPECIFIED: RewardScaling
REWARD_SCALING_GROUP: RewardScaling
REWARD_SCALING_BATCH: RewardScaling
REWARD_SCALING_NONE: RewardScaling
GRPO_LOSS_TYPE_UNSPECIFIED: GrpoLossType
GRPO_LOSS_TYPE_TOKEN_MEAN: GrpoLossType
GRPO_LOSS_TYPE_SEQ_MEAN_TOKEN_MEAN: GrpoLossType
GRPO_LOSS_TYPE_SEQ_MEAN_TOKEN_SUM_NORM: GrpoLossType
KL_ESTIMATOR_UNSPECIFIED: KlEstimator
KL_ESTIMATOR_K1: KlEstimator
KL_ESTIMATOR_K2: KlEstimator
KL_ESTIMATOR_K3: KlEstimator
REINFORCE_BASELINE_UNSPECIFIED: ReinforceBaseline
REINFORCE_BASELINE_BATCH: ReinforceBaseline
REINFORCE_BASELINE_GROUP: ReinforceBaseline

class DatasetRef(_message.Message):
    __slots__ = ("dataset_id", "spec")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    spec: _data_pb2.DatasetSpec
    def __init__(self, dataset_id: _Optional[str] = ..., spec: _Optional[_Union[_data_pb2.DatasetSpec, _Mapping]] = ...) -> None: ...

class LoraConfig(_message.Message):
    __slots__ = ("rank", "alpha", "dropout", "target_modules", "additional_target_modules", "use_rslora", "use_dora", "pissa_init", "pissa_iters", "loraplus_lr_ratio", "loraplus_lr_embedding")
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    USE_RSLORA_FIELD_NUMBER: _ClassVar[int]
    USE_DORA_FIELD_NUMBER: _ClassVar[int]
    PISSA_INIT_FIELD_NUMBER: _ClassVar[int]
    PISSA_ITERS_FIELD_NUMBER: _ClassVar[int]
    LORAPLUS_LR_RATIO_FIELD_NUMBER: _ClassVar[int]
    LORAPLUS_LR_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    rank: int
    alpha: float
    dropout: float
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    additional_target_modules: _containers.RepeatedScalarFieldContainer[str]
    use_rslora: bool
    use_dora: bool
    pissa_init: bool
    pissa_iters: int
    loraplus_lr_ratio: float
    loraplus_lr_embedding: float
    def __init__(self, rank: _Optional[int] = ..., alpha: _Optional[float] = ..., dropout: _Optional[float] = ..., target_modules: _Optional[_Iterable[str]] = ..., additional_target_modules: _Optional[_Iterable[str]] = ..., use_rslora: _Optional[bool] = ..., use_dora: _Optional[bool] = ..., pissa_init: _Optional[bool] = ..., pissa_iters: _Optional[int] = ..., loraplus_lr_ratio: _Optional[float] = ..., loraplus_lr_embedding: _Optional[float] = ...) -> None: ...

class FreezeConfig(_message.Message):
    __slots__ = ("trainable_layers", "trainable_modules", "extra_modules")
    TRAINABLE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_MODULES_FIELD_NUMBER: _ClassVar[int]
    EXTRA_MODULES_FIELD_NUMBER: _ClassVar[int]
    trainable_layers: int
    trainable_modules: _containers.RepeatedScalarFieldContainer[str]
    extra_modules: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, trainable_layers: _Optional[int] = ..., trainable_modules: _Optional[_Iterable[str]] = ..., extra_modules: _Optional[_Iterable[str]] = ...) -> None: ...

class LlamaProConfig(_message.Message):
    __slots__ = ("num_expand", "expanded")
    NUM_EXPAND_FIELD_NUMBER: _ClassVar[int]
    EXPANDED_FIELD_NUMBER: _ClassVar[int]
    num_expand: int
    expanded: bool
    def __init__(self, num_expand: _Optional[int] = ..., expanded: _Optional[bool] = ...) -> None: ...

class GaloreConfig(_message.Message):
    __slots__ = ("target_modules", "rank", "update_interval", "scale", "projection_type", "layerwise")
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    UPDATE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    LAYERWISE_FIELD_NUMBER: _ClassVar[int]
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    rank: int
    update_interval: int
    scale: float
    projection_type: GaloreProjectionType
    layerwise: bool
    def __init__(self, target_modules: _Optional[_Iterable[str]] = ..., rank: _Optional[int] = ..., update_interval: _Optional[int] = ..., scale: _Optional[float] = ..., projection_type: _Optional[_Union[GaloreProjectionType, str]] = ..., layerwise: _Optional[bool] = ...) -> None: ...

class FinetuningConfig(_message.Message):
    __slots__ = ("type", "lora", "freeze", "llama_pro", "quantization_bits", "galore", "quantization_type", "double_quantization", "moe_aux_loss_coef")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    FREEZE_FIELD_NUMBER: _ClassVar[int]
    LLAMA_PRO_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_BITS_FIELD_NUMBER: _ClassVar[int]
    GALORE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    MOE_AUX_LOSS_COEF_FIELD_NUMBER: _ClassVar[int]
    type: FinetuningType
    lora: LoraConfig
    freeze: FreezeConfig
    llama_pro: LlamaProConfig
    quantization_bits: int
    galore: GaloreConfig
    quantization_type: QuantizationType
    double_quantization: bool
    moe_aux_loss_coef: float
    def __init__(self, type: _Optional[_Union[FinetuningType, str]] = ..., lora: _Optional[_Union[LoraConfig, _Mapping]] = ..., freeze: _Optional[_Union[FreezeConfig, _Mapping]] = ..., llama_pro: _Optional[_Union[LlamaProConfig, _Mapping]] = ..., quantization_bits: _Optional[int] = ..., galore: _Optional[_Union[GaloreConfig, _Mapping]] = ..., quantization_type: _Optional[_Union[QuantizationType, str]] = ..., double_quantization: _Optional[bool] = ..., moe_aux_loss_coef: _Optional[float] = ...) -> None: ...

class Hyperparameters(_message.Message):
    __slots__ = ("learning_rate", "lr_scheduler", "warmup_ratio", "warmup_steps", "num_epochs", "max_steps", "per_device_batch_size", "per_device_batch_tokens", "gradient_accumulation_steps", "max_grad_norm", "seed", "weight_decay", "eval_steps", "logging_steps", "save_steps", "save_total_limit", "gradient_checkpointing", "neftune_noise_alpha", "optim")
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    NUM_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    PER_DEVICE_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PER_DEVICE_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_ACCUMULATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    EVAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LOGGING_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAVE_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAVE_TOTAL_LIMIT_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_CHECKPOINTING_FIELD_NUMBER: _ClassVar[int]
    NEFTUNE_NOISE_ALPHA_FIELD_NUMBER: _ClassVar[int]
    OPTIM_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    lr_scheduler: LrSchedulerType
    warmup_ratio: float
    warmup_steps: int
    num_epochs: float
    max_steps: int
    per_device_batch_size: int
    per_device_batch_tokens: int
    gradient_accumulation_steps: int
    max_grad_norm: float
    seed: int
    weight_decay: float
    eval_steps: int
    logging_steps: int
    save_steps: int
    save_total_limit: int
    gradient_checkpointing: bool
    neftune_noise_alpha: float
    optim: str
    def __init__(self, learning_rate: _Optional[float] = ..., lr_scheduler: _Optional[_Union[LrSchedulerType, str]] = ..., warmup_ratio: _Optional[float] = ..., warmup_steps: _Optional[int] = ..., num_epochs: _Optional[float] = ..., max_steps: _Optional[int] = ..., per_device_batch_size: _Optional[int] = ..., per_device_batch_tokens: _Optional[int] = ..., gradient_accumulation_steps: _Optional[int] = ..., max_grad_norm: _Optional[float] = ..., seed: _Optional[int] = ..., weight_decay: _Optional[float] = ..., eval_steps: _Optional[int] = ..., logging_steps: _Optional[int] = ..., save_steps: _Optional[int] = ..., save_total_limit: _Optional[int] = ..., gradient_checkpointing: _Optional[bool] = ..., neftune_noise_alpha: _Optional[float] = ..., optim: _Optional[str] = ...) -> None: ...

class DistributedConfig(_message.Message):
    __slots__ = ("world_size", "backend", "deepspeed_zero_stage", "offload_optimizer", "offload_params")
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEEPSPEED_ZERO_STAGE_FIELD_NUMBER: _ClassVar[int]
    OFFLOAD_OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    OFFLOAD_PARAMS_FIELD_NUMBER: _ClassVar[int]
    world_size: int
    backend: DistributedBackend
    deepspeed_zero_stage: int
    offload_optimizer: bool
    offload_params: bool
    def __init__(self, world_size: _Optional[int] = ..., backend: _Optional[_Union[DistributedBackend, str]] = ..., deepspeed_zero_stage: _Optional[int] = ..., offload_optimizer: _Optional[bool] = ..., offload_params: _Optional[bool] = ...) -> None: ...

class PreferenceConfig(_message.Message):
    __slots__ = ("beta", "loss_type", "label_smoothing", "pref_ftx", "simpo_gamma", "kto_chosen_weight", "kto_rejected_weight")
    BETA_FIELD_NUMBER: _ClassVar[int]
    LOSS_TYPE_FIELD_NUMBER: _ClassVar[int]
    LABEL_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    PREF_FTX_FIELD_NUMBER: _ClassVar[int]
    SIMPO_GAMMA_FIELD_NUMBER: _ClassVar[int]
    KTO_CHOSEN_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    KTO_REJECTED_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    beta: float
    loss_type: PreferenceLoss
    label_smoothing: float
    pref_ftx: float
    simpo_gamma: float
    kto_chosen_weight: float
    kto_rejected_weight: float
    def __init__(self, beta: _Optional[float] = ..., loss_type: _Optional[_Union[PreferenceLoss, str]] = ..., label_smoothing: _Optional[float] = ..., pref_ftx: _Optional[float] = ..., simpo_gamma: _Optional[float] = ..., kto_chosen_weight: _Optional[float] = ..., kto_rejected_weight: _Optional[float] = ...) -> None: ...

class PpoConfig(_message.Message):
    __slots__ = ("sampling", "reward_scorer", "reward_adapter", "rollout_batch_size", "ppo_epochs", "kl_coef", "adaptive_kl", "kl_target", "kl_horizon", "gae_gamma", "gae_lambda", "clip_range", "value_clip_range", "value_loss_coef", "max_staleness", "whiten_rewards", "reward_settings")
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    REWARD_SCORER_FIELD_NUMBER: _ClassVar[int]
    REWARD_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PPO_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    KL_COEF_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_KL_FIELD_NUMBER: _ClassVar[int]
    KL_TARGET_FIELD_NUMBER: _ClassVar[int]
    KL_HORIZON_FIELD_NUMBER: _ClassVar[int]
    GAE_GAMMA_FIELD_NUMBER: _ClassVar[int]
    GAE_LAMBDA_FIELD_NUMBER: _ClassVar[int]
    CLIP_RANGE_FIELD_NUMBER: _ClassVar[int]
    VALUE_CLIP_RANGE_FIELD_NUMBER: _ClassVar[int]
    VALUE_LOSS_COEF_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_FIELD_NUMBER: _ClassVar[int]
    WHITEN_REWARDS_FIELD_NUMBER: _ClassVar[int]
    REWARD_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    sampling: _rollout_pb2.SamplingParams
    reward_scorer: str
    reward_adapter: _common_pb2.AdapterRef
    rollout_batch_size: int
    ppo_epochs: int
    kl_coef: float
    adaptive_kl: bool
    kl_target: float
    kl_horizon: int
    gae_gamma: float
    gae_lambda: float
    clip_range: float
    value_clip_range: float
    value_loss_coef: float
    max_staleness: int
    whiten_rewards: bool
    reward_settings: _common_pb2.RewardSettings
    def __init__(self, sampling: _Optional[_Union[_rollout_pb2.SamplingParams, _Mapping]] = ..., reward_scorer: _Optional[str] = ..., reward_adapter: _Optional[_Union[_common_pb2.AdapterRef, _Mapping]] = ..., rollout_batch_size: _Optional[int] = ..., ppo_epochs: _Optional[int] = ..., kl_coef: _Optional[float] = ..., adaptive_kl: _Optional[bool] = ..., kl_target: _Optional[float] = ..., kl_horizon: _Optional[int] = ..., gae_gamma: _Optional[float] = ..., gae_lambda: _Optional[float] = ..., clip_range: _Optional[float] = ..., value_clip_range: _Optional[float] = ..., value_loss_coef: _Optional[float] = ..., max_staleness: _Optional[int] = ..., whiten_rewards: _Optional[bool] = ..., reward_settings: _Optional[_Union[_common_pb2.RewardSettings, _Mapping]] = ...) -> None: ...

class TrainingJobSpec(_message.Message):
    __slots__ = ("job_id", "base_model", "dataset", "eval_dataset", "stage", "finetuning", "hyperparameters", "compute_dtype", "attention_implementation", "distributed", "preference", "ppo", "resume", "output_dir", "init_adapter", "trust_remote_code", "rope_scaling", "max_context_length", "grpo", "resume_from_checkpoint", "adapter_path", "create_new_adapter", "report_to", "eval_benchmark")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EVAL_DATASET_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    FINETUNING_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_IMPLEMENTATION_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTED_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    PPO_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    INIT_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    TRUST_REMOTE_CODE_FIELD_NUMBER: _ClassVar[int]
    ROPE_SCALING_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    GRPO_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_PATH_FIELD_NUMBER: _ClassVar[int]
    CREATE_NEW_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    REPORT_TO_FIELD_NUMBER: _ClassVar[int]
    EVAL_BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    base_model: str
    dataset: DatasetRef
    eval_dataset: DatasetRef
    stage: Stage
    finetuning: FinetuningConfig
    hyperparameters: Hyperparameters
    compute_dtype: ComputeDtype
    attention_implementation: AttentionImplementation
    distributed: DistributedConfig
    preference: PreferenceConfig
    ppo: PpoConfig
    resume: bool
    output_dir: str
    init_adapter: _common_pb2.AdapterRef
    trust_remote_code: bool
    rope_scaling: RopeScalingType
    max_context_length: int
    grpo: GrpoConfig
    resume_from_checkpoint: str
    adapter_path: str
    create_new_adapter: bool
    report_to: _containers.RepeatedScalarFieldContainer[str]
    eval_benchmark: EvalBenchmark
    def __init__(self, job_id: _Optional[str] = ..., base_model: _Optional[str] = ..., dataset: _Optional[_Union[DatasetRef, _Mapping]] = ..., eval_dataset: _Optional[_Union[DatasetRef, _Mapping]] = ..., stage: _Optional[_Union[Stage, str]] = ..., finetuning: _Optional[_Union[FinetuningConfig, _Mapping]] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., compute_dtype: _Optional[_Union[ComputeDtype, str]] = ..., attention_implementation: _Optional[_Union[AttentionImplementation, str]] = ..., distributed: _Optional[_Union[DistributedConfig, _Mapping]] = ..., preference: _Optional[_Union[PreferenceConfig, _Mapping]] = ..., ppo: _Optional[_Union[PpoConfig, _Mapping]] = ..., resume: _Optional[bool] = ..., output_dir: _Optional[str] = ..., init_adapter: _Optional[_Union[_common_pb2.AdapterRef, _Mapping]] = ..., trust_remote_code: _Optional[bool] = ..., rope_scaling: _Optional[_Union[RopeScalingType, str]] = ..., max_context_length: _Optional[int] = ..., grpo: _Optional[_Union[GrpoConfig, _Mapping]] = ..., resume_from_checkpoint: _Optional[str] = ..., adapter_path: _Optional[str] = ..., create_new_adapter: _Optional[bool] = ..., report_to: _Optional[_Iterable[str]] = ..., eval_benchmark: _Optional[_Union[EvalBenchmark, _Mapping]] = ...) -> None: ...

class EvalBenchmark(_message.Message):
    __slots__ = ("task_dir", "task", "split", "n_shot", "lang", "template", "max_questions", "save_dir")
    TASK_DIR_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    N_SHOT_FIELD_NUMBER: _ClassVar[int]
    LANG_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUESTIONS_FIELD_NUMBER: _ClassVar[int]
    SAVE_DIR_FIELD_NUMBER: _ClassVar[int]
    task_dir: str
    task: str
    split: str
    n_shot: int
    lang: str
    template: str
    max_questions: int
    save_dir: str
    def __init__(self, task_dir: _Optional[str] = ..., task: _Optional[str] = ..., split: _Optional[str] = ..., n_shot: _Optional[int] = ..., lang: _Optional[str] = ..., template: _Optional[str] = ..., max_questions: _Optional[int] = ..., save_dir: _Optional[str] = ...) -> None: ...

class TrainingMetrics(_message.Message):
    __slots__ = ("step", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_second", "eta", "eval_loss", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    step: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float
    tokens_per_second: float
    eta: _duration_pb2.Duration
    eval_loss: float
    extra: _containers.ScalarMap[str, float]
    def __init__(self, step: _Optional[int] = ..., epoch: _Optional[float] = ..., loss: _Optional[float] = ..., learning_rate: _Optional[float] = ..., grad_norm: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., eta: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., eval_loss: _Optional[float] = ..., extra: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("step", "path", "create_time", "adapter_version")
    STEP_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    step: int
    path: str
    create_time: _timestamp_pb2.Timestamp
    adapter_version: int
    def __init__(self, step: _Optional[int] = ..., path: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., adapter_version: _Optional[int] = ...) -> None: ...

class AdapterVersion(_message.Message):
    __slots__ = ("version", "step", "sha256", "size_bytes", "create_time")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    version: int
    step: int
    sha256: str
    size_bytes: int
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[int] = ..., step: _Optional[int] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TrainingJob(_message.Message):
    __slots__ = ("id", "spec", "state", "create_time", "start_time", "end_time", "latest_step", "total_steps", "latest_metrics", "checkpoints", "adapter_id", "adapter_versions", "failure_message", "dataset_id", "last_event_sequence")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    LATEST_STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LATEST_METRICS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: TrainingJobSpec
    state: JobState
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    latest_step: int
    total_steps: int
    latest_metrics: TrainingMetrics
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    adapter_id: str
    adapter_versions: _containers.RepeatedCompositeFieldContainer[AdapterVersion]
    failure_message: str
    dataset_id: str
    last_event_sequence: int
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[TrainingJobSpec, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., latest_step: _Optional[int] = ..., total_steps: _Optional[int] = ..., latest_metrics: _Optional[_Union[TrainingMetrics, _Mapping]] = ..., checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ..., adapter_id: _Optional[str] = ..., adapter_versions: _Optional[_Iterable[_Union[AdapterVersion, _Mapping]]] = ..., failure_message: _Optional[str] = ..., dataset_id: _Optional[str] = ..., last_event_sequence: _Optional[int] = ...) -> None: ...

class StateChange(_message.Message):
    __slots__ = ("previous_state", "state", "message")
    PREVIOUS_STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    previous_state: JobState
    state: JobState
    message: str
    def __init__(self, previous_state: _Optional[_Union[JobState, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., message: _Optional[str] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("level", "message", "rank", "logger")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    LOGGER_FIELD_NUMBER: _ClassVar[int]
    level: LogLevel
    message: str
    rank: int
    logger: str
    def __init__(self, level: _Optional[_Union[LogLevel, str]] = ..., message: _Optional[str] = ..., rank: _Optional[int] = ..., logger: _Optional[str] = ...) -> None: ...

class TrainingEvent(_message.Message):
    __slots__ = ("sequence", "time", "state_change", "metrics", "log", "checkpoint_saved", "adapter_published")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SAVED_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    state_change: StateChange
    metrics: TrainingMetrics
    log: LogLine
    checkpoint_saved: Checkpoint
    adapter_published: AdapterVersion
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state_change: _Optional[_Union[StateChange, _Mapping]] = ..., metrics: _Optional[_Union[TrainingMetrics, _Mapping]] = ..., log: _Optional[_Union[LogLine, _Mapping]] = ..., checkpoint_saved: _Optional[_Union[Checkpoint, _Mapping]] = ..., adapter_published: _Optional[_Union[AdapterVersion, _Mapping]] = ...) -> None: ...

class AdapterBlobInfo(_message.Message):
    __slots__ = ("adapter", "total_size", "sha256", "format", "base_model", "stage", "step")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    adapter: _common_pb2.AdapterRef
    total_size: int
    sha256: str
    format: AdapterFormat
    base_model: str
    stage: Stage
    step: int
    def __init__(self, adapter: _Optional[_Union[_common_pb2.AdapterRef, _Mapping]] = ..., total_size: _Optional[int] = ..., sha256: _Optional[str] = ..., format: _Optional[_Union[AdapterFormat, str]] = ..., base_model: _Optional[str] = ..., stage: _Optional[_Union[Stage, str]] = ..., step: _Optional[int] = ...) -> None: ...

class AdapterChunk(_message.Message):
    __slots__ = ("info", "offset", "data")
    INFO_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    info: AdapterBlobInfo
    offset: int
    data: bytes
    def __init__(self, info: _Optional[_Union[AdapterBlobInfo, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class GrpoConfig(_message.Message):
    __slots__ = ("advantage_estimator", "loss_type", "scale_rewards", "epsilon", "epsilon_high", "beta", "kl_estimator", "mask_truncated_completions", "dynamic_sampling", "max_refill_rounds", "overlong_buffer_length", "overlong_penalty_factor", "reinforce_pp_baseline")
    ADVANTAGE_ESTIMATOR_FIELD_NUMBER: _ClassVar[int]
    LOSS_TYPE_FIELD_NUMBER: _ClassVar[int]
    SCALE_REWARDS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    EPSILON_HIGH_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    KL_ESTIMATOR_FIELD_NUMBER: _ClassVar[int]
    MASK_TRUNCATED_COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_REFILL_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    OVERLONG_BUFFER_LENGTH_FIELD_NUMBER: _ClassVar[int]
    OVERLONG_PENALTY_FACTOR_FIELD_NUMBER: _ClassVar[int]
    REINFORCE_PP_BASELINE_FIELD_NUMBER: _ClassVar[int]
    advantage_estimator: AdvantageEstimator
    loss_type: GrpoLossType
    scale_rewards: RewardScaling
    epsilon: float
    epsilon_high: float
    beta: float
    kl_estimator: KlEstimator
    mask_truncated_completions: bool
    dynamic_sampling: bool
    max_refill_rounds: int
    overlong_buffer_length: int
    overlong_penalty_factor: float
    reinforce_pp_baseline: ReinforceBaseline
    def __init__(self, advantage_estimator: _Optional[_Union[AdvantageEstimator, str]] = ..., loss_type: _Optional[_Union[GrpoLossType, str]] = ..., scale_rewards: _Optional[_Union[RewardScaling, str]] = ..., epsilon: _Optional[float] = ..., epsilon_high: _Optional[float] = ..., beta: _Optional[float] = ..., kl_estimator: _Optional[_Union[KlEstimator, str]] = ..., mask_truncated_completions: _Optional[bool] = ..., dynamic_sampling: _Optional[bool] = ..., max_refill_rounds: _Optional[int] = ..., overlong_buffer_length: _Optional[int] = ..., overlong_penalty_factor: _Optional[float] = ..., reinforce_pp_baseline: _Optional[_Union[ReinforceBaseline, str]] = ...) -> None: ...
