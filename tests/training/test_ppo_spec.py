"""What a STAGE_PPO spec means: defaults resolved, bad fields named, unsupported layouts refused,
and the service's preconditions (a work-queue Redis, a data service)."""

from __future__ import annotations

import grpc
import pytest
from llamafleet.client import RpcError
from llamafleet.common.v1 import common_pb2
from llamafleet.rollout.v1 import rollout_pb2
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api
from training_harness import TrainingService, config, fake_base_model, kill_runners

from services.common.errors import InvalidArgument, Unimplemented
from services.training.jobs.process import PPO_REDIS_URL_ENV, default_launcher
from services.training.spec.settings import settings
from services.training.spec.validation import validate


def ppo_spec(base) -> pb.TrainingJobSpec:
    spec = pb.TrainingJobSpec(job_id="p1", base_model=str(base), stage=pb.STAGE_PPO)
    spec.dataset.dataset_id = "prompts"
    spec.finetuning.type = pb.FINETUNING_TYPE_LORA
    spec.hyperparameters.per_device_batch_size = 4
    spec.ppo.reward_scorer = "exact_match"
    return spec


def test_defaults_are_resolved_and_messages_carried(tmp_path):
    spec = ppo_spec(fake_base_model(tmp_path / "base"))
    spec.hyperparameters.gradient_accumulation_steps = 2
    spec.ppo.sampling.CopyFrom(rollout_pb2.SamplingParams(n=3, max_tokens=16, temperature=0.7))
    spec.ppo.reward_adapter.id, spec.ppo.reward_adapter.version = "rm-job", 2
    spec.ppo.reward_settings.CopyFrom(common_pb2.RewardSettings(whiten=True, clip=3.0))
    spec.ppo.kl_coef = 0.0  # explicitly zero: no KL penalty, not the default
    validate(spec)
    p = settings(spec).ppo
    assert p.rollout_batch_size == 8  # per_device_batch_size x gradient accumulation
    assert p.samples_per_prompt == 3
    assert rollout_pb2.SamplingParams.FromString(p.sampling).max_tokens == 16
    assert p.reward_adapter == ("rm-job", 2)
    assert common_pb2.RewardSettings.FromString(p.reward_settings).clip == 3.0
    assert p.kl_coef == 0.0
    assert (p.ppo_epochs, p.clip_range, p.gamma, p.lam, p.max_staleness) == (4, 0.2, 1.0, 0.95, 1)


@pytest.mark.parametrize(
    "edit, path",
    [
        (lambda s: s.ppo.ClearField("reward_scorer"), "spec.ppo.reward_scorer"),
        (lambda s: setattr(s.ppo, "rollout_batch_size", 6), "spec.ppo.rollout_batch_size"),
        (lambda s: setattr(s.ppo, "clip_range", 0.0), "spec.ppo.clip_range"),
        (lambda s: setattr(s.ppo, "gae_lambda", 1.5), "spec.ppo.gae_lambda"),
        (lambda s: setattr(s.ppo, "max_staleness", 0), "spec.ppo.max_staleness"),
        (lambda s: s.ppo.sampling.__setattr__("n", 0), "spec.ppo.sampling.n"),
        (lambda s: s.ppo.sampling.__setattr__("temperature", 0.0), "spec.ppo.sampling.temperature"),
        (lambda s: setattr(s.ppo.reward_adapter, "id", "rm"), "spec.ppo.reward_adapter.version"),
    ],
)
def test_bad_ppo_fields_are_named(tmp_path, edit, path):
    spec = ppo_spec(fake_base_model(tmp_path / "base"))
    edit(spec)
    with pytest.raises(InvalidArgument) as info:
        validate(spec)
    assert path in [v.field for v in info.value.violations]


@pytest.mark.parametrize(
    "edit, path",
    [
        (lambda s: setattr(s.finetuning, "type", pb.FINETUNING_TYPE_FULL), "spec.finetuning.type"),
        (lambda s: setattr(s.distributed, "world_size", 2), "spec.distributed.world_size"),
        (
            lambda s: setattr(s.distributed, "backend", pb.DISTRIBUTED_BACKEND_DEEPSPEED),
            "spec.distributed.backend",
        ),
        (
            lambda s: setattr(s.finetuning.lora, "pissa_init", True),
            "spec.finetuning.lora.pissa_init",
        ),
        (lambda s: setattr(s, "rope_scaling", pb.ROPE_SCALING_TYPE_LINEAR), "spec.rope_scaling"),
    ],
)
def test_unsupported_ppo_layouts_are_refused_by_name(tmp_path, edit, path):
    spec = ppo_spec(fake_base_model(tmp_path / "base"))
    edit(spec)
    with pytest.raises(Unimplemented) as info:
        validate(spec)
    assert info.value.violations[0].field == path


@pytest.fixture
def service(tmp_path):
    service = TrainingService(config(tmp_path / "jobs"))
    yield service
    service.stop()
    kill_runners(tmp_path / "jobs")


def test_a_ppo_job_without_a_work_queue_is_failed_precondition(service, tmp_path):
    spec = ppo_spec(fake_base_model(tmp_path / "base"))
    with pytest.raises(RpcError) as info:
        service.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "redis_url" in str(info.value)
    assert not list((tmp_path / "jobs").glob("p1*"))  # nothing left behind


def test_the_ppo_runner_gets_the_redis_url_in_its_environment(tmp_path, monkeypatch, redis_url):
    from services.training.jobs import process as runner_process

    seen = {}
    real_spawn = runner_process.spawn

    def spawn(job_dir, argv, env):
        seen.update(env)
        return real_spawn(job_dir, argv, env)

    monkeypatch.setattr(runner_process, "spawn", spawn)
    cfg = config(tmp_path / "jobs", redis_url=redis_url)
    service = TrainingService(cfg, launcher=lambda spec, job_dir, data, token: (["true"], {}))
    try:
        spec = ppo_spec(fake_base_model(tmp_path / "base"))
        service.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
    finally:
        service.stop()
        kill_runners(tmp_path / "jobs")
    assert seen[PPO_REDIS_URL_ENV] == redis_url  # in the environment, never argv


def test_the_default_launcher_refuses_a_service_without_a_data_service(tmp_path):
    spec = ppo_spec(fake_base_model(tmp_path / "base"))
    with pytest.raises(Exception, match="data_address") as info:
        default_launcher(spec, tmp_path / "job", "", "")
    assert getattr(info.value, "code", None) is not None
