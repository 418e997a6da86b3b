"""The training service's job RPCs over real gRPC, with the fake runner (no ML).

Each test starts the service in-process on a loopback port; jobs run ``fake_runner.py`` in their
own process groups, so crashes, cancels and SIGKILLs are real.
"""

from __future__ import annotations

import grpc
import pytest
from llamafleet.client import RpcError
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api
from training_harness import (
    TrainingService,
    config,
    fake_base_model,
    kill_runners,
    make_spec,
    wait_for,
)


@pytest.fixture
def env(tmp_path):
    base = fake_base_model(tmp_path / "base")
    service = TrainingService(config(tmp_path / "jobs"))
    yield service, base
    service.stop()
    kill_runners(tmp_path / "jobs")


def create(service, spec) -> pb.TrainingJob:
    return service.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec)).job


def get(service, job_id) -> pb.TrainingJob:
    return service.training.GetTrainingJob(api.GetTrainingJobRequest(job_id=job_id)).job


def watch(service, job_id, after=0) -> list[pb.TrainingEvent]:
    request = api.WatchTrainingJobRequest(job_id=job_id, after_sequence=after)
    return [r.event for r in service.training.WatchTrainingJob(request, timeout=60)]


def states(events) -> list[str]:
    return [
        pb.JobState.Name(e.state_change.state)
        for e in events
        if e.WhichOneof("event") == "state_change"
    ]


def test_create_watch_to_completion_then_resume_watching(env):
    service, base = env
    job = create(service, make_spec(base, "sft-1", steps=4, save_steps=2))
    assert job.id == "sft-1" and job.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)
    assert job.spec.hyperparameters.learning_rate == 5e-5  # defaults filled in
    assert job.spec.finetuning.type == pb.FINETUNING_TYPE_LORA and job.adapter_id == "sft-1"

    events = watch(service, "sft-1")
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert states(events) == ["JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
    assert events[0].state_change.state == pb.JOB_STATE_QUEUED
    assert events[-1].state_change.previous_state == pb.JOB_STATE_RUNNING
    assert [e.metrics.step for e in events if e.HasField("metrics")] == [1, 2, 3, 4]
    assert [e.checkpoint_saved.step for e in events if e.HasField("checkpoint_saved")] == [2, 4]
    assert any(e.HasField("log") and e.log.message == "step 3 done" for e in events)

    # a reconnecting watcher resumes after the last event it saw, and ends at the terminal one
    assert watch(service, "sft-1", after=3) == events[3:]
    assert watch(service, "sft-1", after=len(events)) == []

    job = get(service, "sft-1")
    assert job.state == pb.JOB_STATE_SUCCEEDED and job.failure_message == ""
    assert job.latest_step == 4 and job.total_steps == 4
    assert job.latest_metrics.loss == pytest.approx(0.25)
    assert job.last_event_sequence == len(events)
    assert job.create_time.seconds and job.start_time.seconds and job.end_time.seconds
    assert [(c.step, c.adapter_version) for c in job.checkpoints] == [(2, 1), (4, 2)]
    assert [(v.version, v.step) for v in job.adapter_versions] == [(1, 2), (2, 4)]
    assert all(len(v.sha256) == 64 and v.size_bytes > 3_000_000 for v in job.adapter_versions)

    listed = service.training.ListTrainingJobs(api.ListTrainingJobsRequest()).jobs
    assert [j.id for j in listed] == ["sft-1"] and listed[0] == job


def test_create_is_idempotent_on_the_job_id(env):
    service, base = env
    spec = make_spec(base, "same-1")
    first = create(service, spec)
    done = wait_for(lambda: (j := get(service, "same-1")).state == pb.JOB_STATE_SUCCEEDED and j)
    again = create(service, spec)  # the same spec: the existing job, nothing re-run
    assert again == done and again.create_time == first.create_time

    changed = make_spec(base, "same-1")
    changed.hyperparameters.learning_rate = 1e-3
    with pytest.raises(RpcError) as err:
        create(service, changed)
    assert err.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert get(service, "same-1").last_event_sequence == done.last_event_sequence


def test_invalid_spec_is_invalid_argument_with_field_paths(env, tmp_path):
    service, _ = env
    spec = pb.TrainingJobSpec(job_id="Bad id!", base_model=str(tmp_path / "nowhere"))
    spec.hyperparameters.learning_rate = -1
    with pytest.raises(RpcError) as err:
        create(service, spec)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    fields = {f for f, _ in err.value.violations}
    assert {
        "spec.job_id",
        "spec.stage",
        "spec.base_model",
        "spec.dataset",
        "spec.hyperparameters.learning_rate",
    } <= fields
    assert not (tmp_path / "jobs").exists()  # nothing created


def test_cancel_returns_at_once_and_keeps_the_last_checkpoint_then_resume(env):
    service, base = env
    create(service, make_spec(base, "slow-1", steps=30, save_steps=2))
    wait_for(lambda: get(service, "slow-1").checkpoints)
    reply = service.training.CancelTrainingJob(
        api.CancelTrainingJobRequest(job_id="slow-1"), timeout=1
    )
    assert reply.job.state == pb.JOB_STATE_RUNNING  # stopping, not stopped yet
    events = watch(service, "slow-1")
    assert states(events)[-1] == "JOB_STATE_CANCELLED"
    job = get(service, "slow-1")
    assert job.state == pb.JOB_STATE_CANCELLED and job.checkpoints
    assert job.checkpoints[-1].step == job.latest_step < 30
    # cancelling a terminal job returns it unchanged
    again = service.training.CancelTrainingJob(api.CancelTrainingJobRequest(job_id="slow-1")).job
    assert again == job

    # resume continues after the last checkpoint, in the same event log
    spec = make_spec(base, "slow-1", steps=job.checkpoints[-1].step + 2, save_steps=2)
    spec.resume = True
    resumed = create(service, spec)
    assert resumed.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)
    more = watch(service, "slow-1", after=job.last_event_sequence)
    assert more[0].sequence == job.last_event_sequence + 1
    assert states(more) == ["JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
    steps = [e.metrics.step for e in more if e.HasField("metrics")]
    assert steps == [job.checkpoints[-1].step + 1, job.checkpoints[-1].step + 2]


def test_a_runner_that_ignores_sigterm_is_killed_and_the_job_still_ends_cancelled(env):
    service, base = env
    create(service, make_spec(base, "stubborn-1", steps=50, save_steps=1))
    wait_for(lambda: get(service, "stubborn-1").checkpoints)
    service.training.CancelTrainingJob(api.CancelTrainingJobRequest(job_id="stubborn-1"))
    events = watch(service, "stubborn-1")
    assert states(events)[-1] == "JOB_STATE_CANCELLED"
    assert "did not stop" in events[-1].state_change.message
    job = get(service, "stubborn-1")
    assert job.checkpoints and job.latest_step < 50


def test_a_crashing_runner_fails_its_job_and_the_service_keeps_serving(env):
    service, base = env
    create(service, make_spec(base, "crash-1", steps=5, save_steps=1))
    create(service, make_spec(base, "fail-1", steps=5, save_steps=1))
    crashed = watch(service, "crash-1")[-1].state_change
    assert crashed.state == pb.JOB_STATE_FAILED
    assert "exit code 3" in crashed.message and "resume" in crashed.message
    assert "step 2" in crashed.message  # where it died and the checkpoint that is kept
    failed = watch(service, "fail-1")[-1].state_change
    assert failed.state == pb.JOB_STATE_FAILED and failed.message == "loss became NaN at step 2"
    assert get(service, "crash-1").failure_message == crashed.message

    create(service, make_spec(base, "after-1"))
    assert states(watch(service, "after-1"))[-1] == "JOB_STATE_SUCCEEDED"


def test_list_pages_newest_first_and_filters_by_state(env):
    service, base = env
    for name in ("a-1", "b-1", "crash-2"):
        create(service, make_spec(base, name))
        watch(service, name)
    page = service.training.ListTrainingJobs(api.ListTrainingJobsRequest(page_size=2))
    assert [j.id for j in page.jobs] == ["crash-2", "b-1"] and page.next_page_token
    rest = service.training.ListTrainingJobs(
        api.ListTrainingJobsRequest(page_size=2, page_token=page.next_page_token)
    )
    assert [j.id for j in rest.jobs] == ["a-1"] and not rest.next_page_token
    failed = service.training.ListTrainingJobs(
        api.ListTrainingJobsRequest(states=[pb.JOB_STATE_FAILED])
    )
    assert [j.id for j in failed.jobs] == ["crash-2"]
    with pytest.raises(RpcError) as err:
        service.training.ListTrainingJobs(api.ListTrainingJobsRequest(page_token="garbage"))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_job_is_not_found(env):
    service, _ = env
    for call, request in (
        (service.training.GetTrainingJob, api.GetTrainingJobRequest(job_id="nope")),
        (service.training.CancelTrainingJob, api.CancelTrainingJobRequest(job_id="nope")),
    ):
        with pytest.raises(RpcError) as err:
            call(request)
        assert err.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(RpcError) as err:
        watch(service, "nope")
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_jobs_written_before_specs_were_bounded_never_break_listing(tmp_path):
    """Ten finished jobs whose stored specs carry 1 MB strings (written before the bounds, and
    re-read from disk on every start) made a ListTrainingJobs page of 10 MB, past the client's
    4 MiB limit: `llamafleet jobs ls` and /v1/models failed for good. Pages are bounded in
    bytes and such a job is listed with its spec trimmed; GetTrainingJob still shows it all."""
    from services.training.jobs.store import read_spec, write_spec

    base = fake_base_model(tmp_path / "base")
    service = TrainingService(config(tmp_path / "jobs"))
    try:
        for i in range(10):
            create(service, make_spec(base, f"big-{i}", steps=1, save_steps=1))
        for i in range(10):
            wait_for(lambda i=i: get(service, f"big-{i}").state == pb.JOB_STATE_SUCCEEDED)
    finally:
        service.stop()
    for i in range(10):  # what an older version accepted: a 1 MB string in each spec
        folder = tmp_path / "jobs" / f"big-{i}"
        spec = read_spec(folder)
        spec.ppo.reward_scorer = "s" * (1 << 20)
        write_spec(folder, spec)
    service = TrainingService(config(tmp_path / "jobs"))
    try:
        seen, token, pages = [], "", 0
        while True:
            reply = service.training.ListTrainingJobs(
                api.ListTrainingJobsRequest(page_size=100, page_token=token)
            )
            assert reply.ByteSize() < 4 << 20
            seen += [j.id for j in reply.jobs]
            pages += 1
            token = reply.next_page_token
            if not token:
                break
        assert sorted(seen) == sorted(f"big-{i}" for i in range(10)) and pages == 1
        assert all(not j.spec.ppo.reward_scorer for j in reply.jobs)  # trimmed in the list
        assert len(get(service, "big-0").spec.ppo.reward_scorer) == 1 << 20
    finally:
        service.stop()
        kill_runners(tmp_path / "jobs")
