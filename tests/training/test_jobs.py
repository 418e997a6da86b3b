"""The job manager on its own (no gRPC): job folders, restart recovery and spec handling."""

from __future__ import annotations

import pytest
from llamafleet.training.v1 import training_pb2 as pb
from training_harness import (
    config,
    fake_base_model,
    fake_launcher,
    kill_runners,
    make_spec,
    wait_for,
)

from services.common.errors import FailedPrecondition, InvalidArgument
from services.training.jobs.events import EventLog
from services.training.jobs.manager import JobManager
from services.training.spec import normalize as job_specs


@pytest.fixture
def base(tmp_path):
    yield fake_base_model(tmp_path / "base")
    kill_runners(tmp_path / "jobs")


def manager(tmp_path, launcher=fake_launcher) -> JobManager:
    return JobManager(config(tmp_path / "jobs"), launcher=launcher, validator=lambda s: None)


def finished(m: JobManager, job_id: str) -> pb.TrainingJob:
    return wait_for(lambda: (j := m.get(job_id)).state in job_specs.TERMINAL_STATES and j)


def test_output_dir_holds_the_job_and_survives_a_restart(tmp_path, base):
    m = manager(tmp_path).start()
    spec = make_spec(base, "out-1")
    spec.output_dir = str(tmp_path / "elsewhere" / "run")
    m.create(spec)
    job = finished(m, "out-1")
    m.close()
    assert job.state == pb.JOB_STATE_SUCCEEDED
    assert (tmp_path / "jobs" / "out-1").resolve() == tmp_path / "elsewhere" / "run"
    assert (tmp_path / "elsewhere" / "run" / "adapters" / "v2" / "adapter_config.json").exists()
    assert manager(tmp_path).get("out-1") == job

    taken = make_spec(base, "out-2")
    taken.output_dir = str(tmp_path / "elsewhere" / "run")  # not empty
    with pytest.raises(FailedPrecondition):
        manager(tmp_path).create(taken)


def test_a_half_written_event_is_dropped_before_the_final_state(tmp_path, base):
    m = manager(tmp_path).start()
    m.create(make_spec(base, "slow-1", steps=50, save_steps=1))
    wait_for(lambda: m.get("slow-1").checkpoints)
    m.close()
    kill_runners(tmp_path / "jobs")
    log = EventLog(tmp_path / "jobs" / "slow-1")
    with open(log.path, "a") as fh:
        fh.write('{"sequence": 99, "metr')  # the runner died mid-line
    restarted = manager(tmp_path).start()
    wait_for(lambda: restarted.get("slow-1").state == pb.JOB_STATE_FAILED)
    restarted.close()
    events = list(log.read())  # every line parses again
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].state_change.state == pb.JOB_STATE_FAILED


def test_a_job_queued_but_never_launched_is_launched_on_restart(tmp_path, base):
    def no_start(spec, job_dir, data_address, token):
        return ["/nonexistent/runner"], {}

    m = manager(tmp_path, launcher=no_start)
    m.create(make_spec(base, "q-1"))
    assert m.get("q-1").state == pb.JOB_STATE_FAILED  # the runner could not start
    assert "could not start the runner" in m.get("q-1").failure_message

    # a QUEUED job without a runner (the service died right after queueing) is launched
    job_dir = tmp_path / "jobs" / "q-2"
    job_dir.mkdir()
    (job_dir / "spec.binpb").write_bytes(
        job_specs.normalize(make_spec(base, "q-2")).SerializeToString()
    )
    EventLog(job_dir).append(
        pb.TrainingEvent(state_change=pb.StateChange(state=pb.JOB_STATE_QUEUED))
    )
    restarted = manager(tmp_path).start()
    assert finished(restarted, "q-2").state == pb.JOB_STATE_SUCCEEDED
    restarted.close()


def test_a_launcher_error_creates_nothing(tmp_path, base):
    def refuse(spec, job_dir, data_address, token):
        raise InvalidArgument("no runner for this", reason="X")

    with pytest.raises(InvalidArgument):
        manager(tmp_path, launcher=refuse).create(make_spec(base, "r-1"))
    assert not list((tmp_path / "jobs").iterdir())


def test_normalize_fills_documented_defaults_and_same_spec_ignores_resume(base):
    spec = job_specs.normalize(pb.TrainingJobSpec(base_model=str(base), stage=pb.STAGE_DPO))
    assert job_specs.JOB_ID.match(spec.job_id)
    assert spec.finetuning.type == pb.FINETUNING_TYPE_LORA
    assert (spec.finetuning.lora.rank, spec.finetuning.lora.alpha) == (8, 16.0)
    hp = spec.hyperparameters
    assert (hp.learning_rate, hp.num_epochs, hp.per_device_batch_size) == (5e-5, 3.0, 8)
    assert (hp.gradient_accumulation_steps, hp.max_grad_norm, hp.seed) == (1, 1.0, 42)
    assert spec.preference.beta == 0.1 and spec.preference.loss_type == pb.PREFERENCE_LOSS_SIGMOID
    assert job_specs.normalize(spec) == spec  # idempotent
    resumed = pb.TrainingJobSpec()
    resumed.CopyFrom(spec)
    resumed.resume = True
    assert job_specs.same_spec(spec, resumed)


def test_config_rejects_nonsense_job_settings():
    from services.common.config import ConfigError, load_config
    from services.training.config import TrainingConfig

    cfg = load_config(TrainingConfig, "training", ["jobs_dir=/srv/jobs", "cancel_grace_s=5"], {})
    assert (cfg.jobs_dir, cfg.cancel_grace_s) == ("/srv/jobs", 5.0)
    for bad in ("cancel_grace_s=-1", "poll_interval_s=0", "jobs_dir="):
        with pytest.raises(ConfigError):
            load_config(TrainingConfig, "training", [bad], {})


def test_a_job_starts_from_another_jobs_adapter_version_copied_with_its_sha256(tmp_path, base):
    """init_adapter JOB@VERSION: the version is copied into the new job (the runner trains from
    the copy, so pruning the source changes nothing), its archive sha256 recorded and announced."""
    import json

    from services.common.errors import NotFound
    from services.training.adapters.store import archive_info

    m = manager(tmp_path).start()
    m.create(make_spec(base, "sft-1"))
    assert finished(m, "sft-1").state == pb.JOB_STATE_SUCCEEDED
    dpo = make_spec(base, "dpo-1")
    dpo.stage = pb.STAGE_DPO
    dpo.init_adapter.id, dpo.init_adapter.version = "sft-1", 2
    m.create(dpo)
    job_dir = tmp_path / "jobs" / "dpo-1"
    record = json.loads((job_dir / "init_adapter.json").read_text())
    expected = archive_info(tmp_path / "jobs" / "sft-1" / "adapters" / "v2")[1].sha256
    assert record == {"source": "sft-1@2", "sha256": expected,
                      "size_bytes": record["size_bytes"]}  # fmt: skip
    assert archive_info(job_dir / "init_adapter")[1].sha256 == expected
    queued = next(iter(EventLog(job_dir).read()))
    assert queued.state_change.message == f"starts from sft-1@2 (sha256 {expected})"

    missing = make_spec(base, "dpo-2")
    missing.init_adapter.id, missing.init_adapter.version = "sft-9", 1
    with pytest.raises(NotFound, match="sft-9"):
        m.create(missing)
    other = make_spec(fake_base_model(tmp_path / "other-base"), "dpo-3")
    other.init_adapter.id, other.init_adapter.version = "sft-1", 1
    with pytest.raises(FailedPrecondition, match="trained on"):
        m.create(other)
    no_version = make_spec(base, "dpo-4")
    no_version.init_adapter.id, no_version.init_adapter.version = "sft-1", 7
    with pytest.raises(NotFound, match="no adapter version 7"):
        m.create(no_version)
    assert not (tmp_path / "jobs" / "dpo-4").exists()  # nothing created for a refused job

    folder = make_spec(base, "dpo-5")  # adapter_name_or_path: a folder under the model roots
    folder.adapter_path = str(tmp_path / "jobs" / "sft-1" / "adapters" / "v1")
    m.create(folder)
    record = json.loads((tmp_path / "jobs" / "dpo-5" / "init_adapter.json").read_text())
    assert record["source"].startswith("the adapter folder ") and len(record["sha256"]) == 64
    m.close()


def test_resume_without_a_job_id_continues_the_job_writing_to_that_output_dir(tmp_path, base):
    """LLaMA-Factory's resume_from_checkpoint: true = the latest checkpoint in output_dir."""
    m = manager(tmp_path).start()
    spec = make_spec(base, "")
    spec.output_dir = str(tmp_path / "saves" / "run")
    first = m.create(spec)
    finished(m, first.id)
    again = make_spec(base, "")
    again.output_dir = str(tmp_path / "saves" / "run")
    again.resume = True
    assert m.create(again).id == first.id  # the same job, not a refused non-empty folder
    fresh = make_spec(base, "")
    fresh.output_dir = str(tmp_path / "saves" / "never-ran")
    fresh.resume = True
    with pytest.raises(FailedPrecondition, match="no checkpoint to resume"):
        m.create(fresh)
    named = make_spec(base, "named-1")
    named.resume_from_checkpoint = str(tmp_path / "nowhere" / "step-2")
    with pytest.raises(FailedPrecondition, match="not a checkpoint of a job"):
        m.create(named)
    m.close()
