"""What a STAGE_GRPO spec means: TRL/LLaMA-Factory spellings mapped, defaults resolved, bad
fields named, full and freeze policies accepted (PPO still refuses them)."""

from __future__ import annotations

import pytest
from llamafleet.lf_config import ConfigFileError, from_flat
from llamafleet.rollout.v1 import rollout_pb2
from llamafleet.training.v1 import training_pb2 as pb
from training_harness import fake_base_model

from services.common.errors import InvalidArgument, Unimplemented
from services.training.recipes import RECIPES, grpo
from services.training.spec.normalize import normalize
from services.training.spec.settings import settings
from services.training.spec.validation import validate


def grpo_spec(base) -> pb.TrainingJobSpec:
    spec = pb.TrainingJobSpec(job_id="g1", base_model=str(base), stage=pb.STAGE_GRPO)
    spec.dataset.dataset_id = "prompts"
    spec.hyperparameters.per_device_batch_size = 4
    spec.ppo.reward_scorer = "functions"
    spec.ppo.sampling.CopyFrom(rollout_pb2.SamplingParams(n=4, max_tokens=16))
    return spec


def test_trl_spellings_map_onto_the_spec():
    spec, notes = from_flat(
        {
            "stage": "grpo", "model_name_or_path": "/m", "dataset": "math",
            "num_generations": 8, "num_iterations": 2, "loss_type": "dr_grpo", "epsilon": 0.2,
            "epsilon_high": 0.28, "beta": 0.04, "scale_rewards": "batch",
            "mask_truncated_completions": True, "max_new_tokens": 64,
            "advantage_estimator": "rloo", "kl_estimator": "k2", "dynamic_sampling": True,
            "overlong_buffer_length": 16, "overlong_penalty_factor": 0.5,
        }
    )  # fmt: skip
    assert notes == [] and spec.stage == pb.STAGE_GRPO
    assert (spec.ppo.sampling.n, spec.ppo.ppo_epochs, spec.ppo.sampling.max_tokens) == (8, 2, 64)
    g = spec.grpo
    assert g.loss_type == pb.GRPO_LOSS_TYPE_SEQ_MEAN_TOKEN_SUM_NORM
    assert (g.epsilon, g.epsilon_high, g.beta) == (0.2, 0.28, 0.04)
    assert g.scale_rewards == pb.REWARD_SCALING_BATCH and g.mask_truncated_completions
    assert g.advantage_estimator == pb.ADVANTAGE_ESTIMATOR_RLOO
    assert g.kl_estimator == pb.KL_ESTIMATOR_K2 and g.dynamic_sampling
    assert (g.overlong_buffer_length, g.overlong_penalty_factor) == (16, 0.5)
    for loss, expected in (("grpo", "seq-mean-token-mean"), ("dapo", "token-mean"),
                           ("bnpo", "token-mean")):  # fmt: skip
        spec, _ = from_flat({"stage": "grpo", "dataset": "m", "loss_type": loss})
        assert settings(spec).grpo.loss_type == expected
    spec, _ = from_flat({"stage": "grpo", "dataset": "m", "scale_rewards": False})  # old TRL bool
    assert spec.grpo.scale_rewards == pb.REWARD_SCALING_NONE
    with pytest.raises(ConfigFileError, match="loss_type: 'sapo' is not supported"):
        from_flat({"stage": "grpo", "dataset": "m", "loss_type": "sapo"})


def test_defaults_follow_trl(tmp_path):
    spec = grpo_spec(fake_base_model(tmp_path / "base"))
    validate(spec)
    s = settings(spec)
    assert s.recipe == "grpo" and RECIPES["grpo"] is grpo.run
    g = s.grpo
    assert (g.advantage_estimator, g.loss_type, g.scale_rewards) == ("grpo", "token-mean", "group")
    assert (g.epsilon, g.epsilon_high, g.beta, g.kl_estimator) == (0.2, 0.2, 0.0, "k3")
    assert s.ppo.ppo_epochs == 1  # TRL num_iterations
    spec.grpo.epsilon = 0.1
    assert settings(spec).grpo.epsilon_high == 0.1  # unset epsilon_high follows epsilon
    n = normalize(spec)
    assert n.grpo.epsilon_high == 0.1 and n.ppo.ppo_epochs == 1 and n.grpo.beta == 0.0


@pytest.mark.parametrize(
    "edit, path",
    [
        (lambda s: s.ppo.sampling.__setattr__("n", 1), "spec.ppo.sampling.n"),
        (lambda s: setattr(s.grpo, "epsilon", 0.0), "spec.grpo.epsilon"),
        (lambda s: setattr(s.grpo, "beta", -0.1), "spec.grpo.beta"),
        (
            lambda s: setattr(s.grpo, "overlong_buffer_length", 16),
            "spec.grpo.overlong_buffer_length",
        ),
        (lambda s: setattr(s.grpo, "max_refill_rounds", 0), "spec.grpo.max_refill_rounds"),
        (
            lambda s: (
                setattr(s.grpo, "dynamic_sampling", True),
                setattr(s.ppo, "max_staleness", 2),
            ),
            "spec.grpo.dynamic_sampling",
        ),
        (
            lambda s: (
                s.ppo.sampling.ClearField("max_tokens"),
                setattr(s.grpo, "loss_type", pb.GRPO_LOSS_TYPE_SEQ_MEAN_TOKEN_SUM_NORM),
            ),
            "spec.ppo.sampling.max_tokens",
        ),
        (lambda s: s.ppo.ClearField("reward_scorer"), "spec.ppo.reward_scorer"),
    ],
)
def test_bad_fields_are_named(tmp_path, edit, path):
    spec = grpo_spec(fake_base_model(tmp_path / "base"))
    edit(spec)
    with pytest.raises(InvalidArgument) as info:
        validate(spec)
    assert path in [v.field for v in info.value.violations], info.value.violations


@pytest.mark.parametrize("method", [pb.FINETUNING_TYPE_FULL, pb.FINETUNING_TYPE_FREEZE])
def test_full_and_freeze_policies_are_accepted_for_grpo_and_still_refused_for_ppo(tmp_path, method):
    spec = grpo_spec(fake_base_model(tmp_path / "base"))
    spec.finetuning.type = method
    validate(spec)  # no refusal: versions travel as full weights (test_grpo_full)
    assert settings(normalize(spec)).method == (
        "full" if method == pb.FINETUNING_TYPE_FULL else "freeze"
    )
    spec.stage = pb.STAGE_PPO
    with pytest.raises(Unimplemented, match="STAGE_PPO with FINETUNING_TYPE_"):
        validate(spec)
