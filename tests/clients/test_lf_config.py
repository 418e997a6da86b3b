"""LLaMA-Factory flat YAML (and native spec YAML) -> TrainingJobSpec, client-side."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from llamafleet.data.v1 import data_pb2
from llamafleet.lf_config import ConfigFileError, from_flat, load_job_spec
from llamafleet.lf_keys import FLAT_KEYS, NO_EFFECT_KEYS
from llamafleet.training.v1 import training_pb2 as pb


def write(tmp_path, text: str, name: str = "job.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


SFT_YAML = """
### model
model_name_or_path: models/tiny
trust_remote_code: true
flash_attn: sdpa
### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 16
lora_alpha: 32
lora_dropout: 0.05
lora_target: all
additional_target: embed_tokens,lm_head
use_rslora: true
use_dora: false
loraplus_lr_ratio: 16.0
deepspeed: ds_z2.json
### dataset
dataset: identity,alpaca_en_demo
dataset_dir: data
template: llama3
default_system: You are helpful.
cutoff_len: 1024
max_samples: 1000
train_on_prompt: false
mask_history: true
enable_thinking: false
preserve_thinking: true
packing: true
overwrite_cache: true
preprocessing_num_workers: 16
### output
output_dir: saves/tiny/lora/sft
logging_steps: 5
save_steps: 50
save_total_limit: 3
plot_loss: true
### train
per_device_train_batch_size: 2
gradient_accumulation_steps: 8
learning_rate: 1e-4
num_train_epochs: 3.0
max_steps: -1
lr_scheduler_type: cosine
warmup_ratio: 0.1
weight_decay: 0.01
max_grad_norm: 0.5
bf16: true
seed: 7
gradient_checkpointing: true
### eval
val_size: 0.1
eval_steps: 25
"""


def test_a_llama_factory_sft_lora_file_maps_every_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds_z2.json").write_text(
        json.dumps({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}})
    )
    path = write(tmp_path, SFT_YAML)
    spec, notes = load_job_spec(path)
    assert spec.base_model == str(tmp_path / "models" / "tiny")
    assert spec.trust_remote_code and spec.stage == pb.STAGE_SFT
    assert spec.attention_implementation == pb.ATTENTION_IMPLEMENTATION_SDPA
    lora = spec.finetuning.lora
    assert spec.finetuning.type == pb.FINETUNING_TYPE_LORA
    assert (lora.rank, lora.alpha, lora.dropout) == (16, 32.0, 0.05)
    assert list(lora.target_modules) == ["all"]
    assert list(lora.additional_target_modules) == ["embed_tokens", "lm_head"]
    assert lora.use_rslora and not lora.use_dora and lora.loraplus_lr_ratio == 16.0
    dist = spec.distributed
    assert dist.backend == pb.DISTRIBUTED_BACKEND_DEEPSPEED and dist.deepspeed_zero_stage == 2
    assert dist.offload_optimizer and not dist.offload_params

    data = spec.dataset.spec
    assert [(s.registry.name, s.registry.dataset_dir, s.max_samples) for s in data.sources] == [
        ("identity", str(tmp_path / "data"), 1000),
        ("alpaca_en_demo", str(tmp_path / "data"), 1000),
    ]
    assert data.kind == data_pb2.EXAMPLE_KIND_SFT
    tok = data.tokenization
    assert tok.template.name == "llama3" and tok.template.default_system == "You are helpful."
    assert tok.cutoff_len == 1024 and tok.mask_history and not tok.train_on_prompt
    assert tok.template.HasField("enable_thinking") and not tok.template.enable_thinking
    assert tok.template.preserve_thinking
    assert tok.tokenizer_path == ""  # = the job's base model
    assert data.packing and data.eval_fraction == pytest.approx(0.1) and data.seed == 7

    hp = spec.hyperparameters
    assert spec.output_dir == str(tmp_path / "saves" / "tiny" / "lora" / "sft")
    assert (hp.logging_steps, hp.save_steps, hp.save_total_limit) == (5, 50, 3)
    assert (hp.per_device_batch_size, hp.gradient_accumulation_steps) == (2, 8)
    assert (hp.learning_rate, hp.num_epochs) == (1e-4, 3.0)
    assert not hp.HasField("max_steps")  # -1 = by epochs
    assert hp.lr_scheduler == pb.LR_SCHEDULER_TYPE_COSINE
    assert (hp.warmup_ratio, hp.weight_decay, hp.max_grad_norm) == (0.1, 0.01, 0.5)
    assert hp.seed == 7 and hp.gradient_checkpointing and hp.eval_steps == 25
    assert spec.compute_dtype == pb.COMPUTE_DTYPE_BFLOAT16
    assert sorted(n.split(":")[0] for n in notes) == [
        "overwrite_cache",
        "plot_loss",
        "preprocessing_num_workers",
    ]


DPO_KEYS = {
    "model_name_or_path": "/m", "stage": "dpo", "dataset": ["pairs"], "fp16": True,
    "finetuning_type": "freeze", "freeze_trainable_layers": -2,
    "freeze_trainable_modules": "all", "freeze_extra_modules": "embed_tokens",
    "pref_beta": 0.2, "pref_loss": "simpo", "pref_ftx": 0.5, "simpo_gamma": 0.7,
    "dpo_label_smoothing": 0.1, "quantization_bit": 4, "pissa_init": True,
    "pissa_iter": -1, "adapter_name_or_path": "sft-1@3", "eval_dataset": "heldout",
    "max_steps": 100, "warmup_steps": 10, "job_id": "dpo-1", "resume_from_checkpoint": True,
    "disable_gradient_checkpointing": True, "world_size": 2,
    "tool_format": "qwen", "streaming": True, "loraplus_lr_embedding": 1e-5,
}  # fmt: skip

PPO_KEYS = {
    "model_name_or_path": "/m", "stage": "ppo", "dataset": "prompts",
    "reward_model": "rm-1@2", "reward_scorer": "reward_model", "ppo_epochs": 2,
    "ppo_target": 3.0, "ppo_whiten_rewards": True, "temperature": 0.7, "top_p": 0.9,
    "top_k": 40, "max_new_tokens": 64, "use_galore": False,
}  # fmt: skip

GALORE_KEYS = {
    "model_name_or_path": "/m", "dataset": "d", "finetuning_type": "full",
    "use_galore": True, "galore_target": "all", "galore_rank": 32,
    "galore_update_interval": 100, "galore_scale": 0.25, "galore_proj_type": "left",
    "galore_layerwise": True, "stage": "pt",
}  # fmt: skip
QLORA_ROPE_KEYS = {
    "model_name_or_path": "/m", "dataset": "d", "finetuning_type": "lora", "quantization_bit": 4,
    "quantization_type": "fp4", "double_quantization": False, "rope_scaling": "yarn",
    "cutoff_len": 8192, "moe_aux_loss_coef": 0.001,
}  # fmt: skip


def test_method_and_stage_keys():
    spec, _ = from_flat(DPO_KEYS)
    assert spec.stage == pb.STAGE_DPO and spec.compute_dtype == pb.COMPUTE_DTYPE_FLOAT16
    assert spec.dataset.spec.kind == data_pb2.EXAMPLE_KIND_PREFERENCE
    assert [s.registry.name for s in spec.eval_dataset.spec.sources] == ["heldout"]
    freeze = spec.finetuning.freeze
    assert spec.finetuning.type == pb.FINETUNING_TYPE_FREEZE
    assert freeze.trainable_layers == -2 and list(freeze.trainable_modules) == []
    assert list(freeze.extra_modules) == ["embed_tokens"]
    pref = spec.preference
    assert (pref.beta, pref.pref_ftx, pref.simpo_gamma, pref.label_smoothing) == (
        0.2,
        0.5,
        0.7,
        0.1,
    )
    assert pref.loss_type == pb.PREFERENCE_LOSS_SIMPO
    assert spec.finetuning.quantization_bits == 4
    assert spec.finetuning.lora.pissa_init and spec.finetuning.lora.pissa_iters == -1
    assert (spec.init_adapter.id, spec.init_adapter.version) == ("sft-1", 3)
    assert spec.hyperparameters.max_steps == 100 and spec.hyperparameters.warmup_steps == 10
    assert spec.dataset.spec.tokenization.template.tool_format == "qwen"
    assert spec.dataset.spec.streaming and spec.finetuning.lora.loraplus_lr_embedding == 1e-5
    assert spec.job_id == "dpo-1" and spec.resume and spec.distributed.world_size == 2
    assert not spec.hyperparameters.gradient_checkpointing

    ppo, _ = from_flat(PPO_KEYS)
    assert ppo.dataset.spec.kind == data_pb2.EXAMPLE_KIND_PROMPT
    assert (ppo.ppo.reward_adapter.id, ppo.ppo.reward_adapter.version) == ("rm-1", 2)
    assert ppo.ppo.kl_target == 3.0 and ppo.ppo.adaptive_kl and ppo.ppo.whiten_rewards
    assert ppo.ppo.sampling.max_tokens == 64 and ppo.ppo.sampling.top_k == 40
    assert ppo.ppo.sampling.temperature == pytest.approx(0.7)

    galore, _ = from_flat(GALORE_KEYS)
    g = galore.finetuning.galore
    assert galore.finetuning.HasField("galore") and list(g.target_modules) == []
    assert (g.rank, g.update_interval, g.scale, g.layerwise) == (32, 100, 0.25, True)
    assert g.projection_type == pb.GALORE_PROJECTION_TYPE_LEFT
    assert galore.dataset.spec.kind == data_pb2.EXAMPLE_KIND_PRETRAIN

    qlora, _ = from_flat(QLORA_ROPE_KEYS)
    ft = qlora.finetuning
    assert (ft.quantization_bits, ft.quantization_type) == (4, pb.QUANTIZATION_TYPE_FP4)
    assert ft.HasField("double_quantization") and not ft.double_quantization
    assert ft.HasField("moe_aux_loss_coef") and ft.moe_aux_loss_coef == pytest.approx(0.001)
    # RoPE scaled for cutoff_len tokens: LLaMA-Factory's model_max_length
    assert (qlora.rope_scaling, qlora.max_context_length) == (pb.ROPE_SCALING_TYPE_YARN, 8192)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"lora_rnak": 8}, "unsupported key 'lora_rnak' (did you mean 'lora_rank'?)"),
        ({"use_unsloth": True}, "unsupported key 'use_unsloth'"),
        ({"lora_rank": "eight"}, "lora_rank: expected an integer, got 'eight'"),
        (
            {"stage": "orpo"},
            "stage: 'orpo' is not supported; use one of pt, sft, rm, dpo, ppo, kto",
        ),
        ({"finetuning_type": "lroa"}, "(did you mean 'lora'?)"),
        ({"val_size": 100}, "val_size: give the eval split as a fraction"),
        ({"adapter_name_or_path": "saves/a,saves/b"}, "one adapter only"),
        ({"init_adapter": "saves/lora"}, "JOB_ID@VERSION"),
        ({"do_train": False}, "do_train"),
        ({"create_new_adapter": "yes"}, "create_new_adapter: expected true or false"),
        ({"bf16": True, "fp16": True}, "bf16 and fp16"),
        ({}, "dataset: required"),
    ],
)
def test_flat_errors_name_the_key(data, message):
    full = {"model_name_or_path": "/m", "dataset": "d", **data}
    if data == {}:
        full.pop("dataset")
    with pytest.raises(ConfigFileError) as err:
        from_flat(full)
    assert message in str(err.value)


def test_deepspeed_zero3_with_offload(tmp_path):
    ds = tmp_path / "ds_z3_offload.json"
    ds.write_text(
        json.dumps(
            {
                "zero_optimization": {
                    "stage": 3,
                    "offload_optimizer": {"device": "cpu"},
                    "offload_param": {"device": "cpu"},
                }
            }
        )
    )
    spec, _ = from_flat({"model_name_or_path": "/m", "dataset": "d", "deepspeed": str(ds)})
    assert spec.distributed.deepspeed_zero_stage == 3 and spec.distributed.offload_params
    with pytest.raises(ConfigFileError, match="cannot read the JSON config"):
        from_flat({"model_name_or_path": "/m", "dataset": "d", "deepspeed": str(tmp_path / "no")})


def test_native_spec_yaml_is_detected_and_parsed(tmp_path):
    path = write(
        tmp_path,
        """
        job_id: native-1
        base_model: /models/tiny
        stage: STAGE_SFT
        dataset:
          spec:
            sources:
              - registry: {name: alpaca_en_demo}
        hyperparameters:
          learning_rate: 0.0002
          max_steps: 10
        finetuning: {type: FINETUNING_TYPE_LORA, lora: {rank: 4}}
        """,
    )
    spec, notes = load_job_spec(path)
    assert notes == [] and spec.job_id == "native-1" and spec.stage == pb.STAGE_SFT
    assert spec.hyperparameters.max_steps == 10 and spec.finetuning.lora.rank == 4
    assert spec.dataset.spec.sources[0].registry.name == "alpaca_en_demo"

    bad = write(tmp_path, "base_model: /m\nhyperparamters: {learning_rate: 1}\n", "bad.yaml")
    with pytest.raises(ConfigFileError, match="did you mean 'hyperparameters'"):
        load_job_spec(bad)
    with pytest.raises(ConfigFileError, match="not valid YAML"):
        load_job_spec(write(tmp_path, "a: [", "broken.yaml"))


REWARD_FUNCTION_KEYS = {
    "model_name_or_path": "/m", "stage": "ppo", "dataset": "prompts",
    "reward_functions": [{"name": "math_verify", "weight": 0.8, "args": {"extractor": "boxed"}},
                         "format_json", {"name": "length", "label": "len", "weight": -0.1}],
}  # fmt: skip


def test_reward_functions_become_the_functions_scorer_with_weights_and_args():
    spec, _ = from_flat(REWARD_FUNCTION_KEYS)
    assert spec.ppo.reward_scorer == "functions"
    fns = spec.ppo.reward_settings.functions
    assert [(f.name, f.label) for f in fns] == [("math_verify", ""), ("format_json", ""),
                                                ("length", "len")]  # fmt: skip
    assert fns[0].weight == 0.8 and not fns[1].HasField("weight") and fns[2].weight == -0.1
    assert dict(fns[0].args) == {"extractor": "boxed"}
    for bad, match in (
        ("math_verify", "expected a list"),
        ([{"weight": 1}], r"reward_functions\[0\]: expected a name"),
        ([{"name": "x", "wieght": 1}], "unknown key 'wieght'"),
        ([{"name": "x", "args": [1]}], r"reward_functions\[0\].args: expected a mapping"),
    ):
        with pytest.raises(ConfigFileError, match=match):
            from_flat({**REWARD_FUNCTION_KEYS, "reward_functions": bad})


def test_every_supported_key_is_exercised_above():
    used = set(yaml.safe_load(SFT_YAML)) | set(DPO_KEYS) | set(PPO_KEYS) | set(GALORE_KEYS)
    used |= set(REWARD_FUNCTION_KEYS)
    used |= set(QLORA_ROPE_KEYS)
    used |= set(GRPO_KEYS)
    used |= {"init_adapter", "create_new_adapter"}  # test_adapter_name_or_path_is_a_folder_...
    used |= {"kto_chosen_weight", "kto_rejected_weight"}  # test_stage_kto_reads_feedback_data...
    used |= {"report_to"}  # test_report_to_names_trackers
    used |= {"use_llama_pro"}  # test_use_llama_pro_marks_an_expanded_base...
    used |= {"neftune_noise_alpha", "optim"}  # test_neftune_and_optim_reach_the_hyperparameters
    assert set(FLAT_KEYS) - used == set()
    assert set(NO_EFFECT_KEYS) & set(FLAT_KEYS) == set()


# --- STAGE_GRPO (TRL GRPOConfig spellings) ------------------------------------------------------

GRPO_KEYS = {
    "model_name_or_path": "/m", "stage": "grpo", "dataset": "prompts", "num_generations": 8,
    "num_iterations": 2, "loss_type": "dapo", "epsilon": 0.2, "epsilon_high": 0.28,
    "beta": 0.04, "scale_rewards": "group", "mask_truncated_completions": True,
    "advantage_estimator": "reinforce_pp", "kl_estimator": "k1", "dynamic_sampling": True,
    "max_refill_rounds": 3, "overlong_buffer_length": 8, "overlong_penalty_factor": 0.5,
    "reinforce_pp_baseline": "group",
}  # fmt: skip


def test_grpo_keys_fill_the_grpo_config_and_the_group_size():
    spec, notes = from_flat(GRPO_KEYS)
    assert notes == [] and spec.stage == pb.STAGE_GRPO
    assert (spec.ppo.sampling.n, spec.ppo.ppo_epochs) == (8, 2)
    g = spec.grpo
    assert g.loss_type == pb.GRPO_LOSS_TYPE_TOKEN_MEAN
    assert (g.epsilon, g.epsilon_high, g.beta) == (0.2, 0.28, 0.04)
    assert g.scale_rewards == pb.REWARD_SCALING_GROUP and g.mask_truncated_completions
    assert g.advantage_estimator == pb.ADVANTAGE_ESTIMATOR_REINFORCE_PP
    assert g.kl_estimator == pb.KL_ESTIMATOR_K1
    assert g.dynamic_sampling and g.max_refill_rounds == 3
    assert (g.overlong_buffer_length, g.overlong_penalty_factor) == (8, 0.5)
    assert g.reinforce_pp_baseline == pb.REINFORCE_BASELINE_GROUP
    assert spec.dataset.spec.kind == data_pb2.EXAMPLE_KIND_PROMPT


@pytest.mark.parametrize(
    ("value", "resume", "folder"),
    [(None, False, ""), (True, True, ""), (False, False, ""), ("saves/x/checkpoints/step-4", True,
     "saves/x/checkpoints/step-4")],
)  # fmt: skip
def test_resume_from_checkpoint_null_true_or_a_folder(value, resume, folder):
    """LLaMA-Factory's three forms: null (its flagship examples) = start afresh; true = the
    latest checkpoint in output_dir; a path = that checkpoint (absolute, as LLaMA-Factory reads
    paths against the working directory)."""
    spec, notes = from_flat({"model_name_or_path": "/m", "dataset": "d",
                             "resume_from_checkpoint": value})  # fmt: skip
    assert spec.resume is resume and not notes
    expected = str(Path(folder).absolute()) if folder else ""
    assert spec.resume_from_checkpoint == expected


def test_adapter_name_or_path_is_a_folder_or_a_store_reference(tmp_path):
    folder = tmp_path / "saves" / "sft-lora"
    folder.mkdir(parents=True)
    spec, _ = from_flat({"model_name_or_path": "/m", "dataset": "d",
                         "adapter_name_or_path": str(folder), "create_new_adapter": True})  # fmt: skip
    assert spec.adapter_path == str(folder) and not spec.HasField("init_adapter")
    assert spec.create_new_adapter
    spec, _ = from_flat({"model_name_or_path": "/m", "dataset": "d",
                         "adapter_name_or_path": "sft-1@3"})  # fmt: skip
    assert (spec.init_adapter.id, spec.init_adapter.version, spec.adapter_path) == ("sft-1", 3, "")
    spec, _ = from_flat({"model_name_or_path": "/m", "dataset": "d", "init_adapter": "sft-1@2"})
    assert (spec.init_adapter.id, spec.init_adapter.version) == ("sft-1", 2)


def test_stage_kto_reads_feedback_data_and_its_weights():
    spec, _ = from_flat({"model_name_or_path": "/m", "dataset": "kto_en_demo", "stage": "kto",
                         "pref_beta": 0.2, "kto_chosen_weight": 1.5, "kto_rejected_weight": 0.5})  # fmt: skip
    assert spec.stage == pb.STAGE_KTO
    assert spec.dataset.spec.kind == data_pb2.EXAMPLE_KIND_FEEDBACK
    pref = spec.preference
    assert (pref.beta, pref.kto_chosen_weight, pref.kto_rejected_weight) == (0.2, 1.5, 0.5)


def test_report_to_names_trackers():
    base = {"model_name_or_path": "/m", "dataset": "d"}
    assert from_flat({**base, "report_to": "none"})[0].report_to == []
    assert from_flat({**base, "report_to": None})[0].report_to == []
    spec, notes = from_flat({**base, "report_to": ["wandb", "MLflow"]})
    assert list(spec.report_to) == ["wandb", "mlflow"] and not notes
    assert list(from_flat({**base, "report_to": "tensorboard,wandb"})[0].report_to) == [
        "tensorboard",
        "wandb",
    ]
    with pytest.raises(ConfigFileError, match="'all' depends on what happens to be installed"):
        from_flat({**base, "report_to": "all"})


def test_use_llama_pro_marks_an_expanded_base_and_enable_thinking_reaches_the_template():
    spec, _ = from_flat({"model_name_or_path": "/m", "dataset": "d", "finetuning_type": "freeze",
                         "use_llama_pro": True, "freeze_trainable_layers": 8,
                         "enable_thinking": False})  # fmt: skip
    assert spec.finetuning.llama_pro.num_expand == 8 and spec.finetuning.llama_pro.expanded
    template = spec.dataset.spec.tokenization.template
    assert template.HasField("enable_thinking") and template.enable_thinking is False
    spec, _ = from_flat({"model_name_or_path": "/m", "dataset": "d", "use_llama_pro": False})
    assert not spec.finetuning.HasField("llama_pro")


def test_neftune_and_optim_reach_the_hyperparameters():
    spec, _ = from_flat({"model_name_or_path": "/m", "dataset": "d", "neftune_noise_alpha": 5,
                         "optim": "AdamW_8bit"})  # fmt: skip
    hp = spec.hyperparameters
    assert (hp.neftune_noise_alpha, hp.optim) == (5.0, "adamw_8bit")
