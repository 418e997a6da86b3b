"""Job state survives a service restart: jobs are re-read from their folders, live runners are
re-attached, and a runner that died while no service watched it leaves its job FAILED."""

from __future__ import annotations

import json
import os
import signal

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


def get(service, job_id) -> pb.TrainingJob:
    return service.training.GetTrainingJob(api.GetTrainingJobRequest(job_id=job_id)).job


def watch(service, job_id, after=0) -> list[pb.TrainingEvent]:
    request = api.WatchTrainingJobRequest(job_id=job_id, after_sequence=after)
    return [r.event for r in service.training.WatchTrainingJob(request, timeout=60)]


def test_restart_rereads_finished_jobs_and_reattaches_running_ones(tmp_path):
    base, jobs = fake_base_model(tmp_path / "base"), tmp_path / "jobs"
    first = TrainingService(config(jobs))
    try:
        first.training.CreateTrainingJob(
            api.CreateTrainingJobRequest(spec=make_spec(base, "done-1"))
        )
        done_events = watch(first, "done-1")
        done = get(first, "done-1")
        spec = make_spec(base, "slow-1", steps=6, save_steps=2)
        first.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
        wait_for(lambda: get(first, "slow-1").state == pb.JOB_STATE_RUNNING)
    finally:
        first.stop()  # the runner of slow-1 keeps going without a service

    second = TrainingService(config(jobs))
    try:
        assert get(second, "done-1") == done
        assert watch(second, "done-1") == done_events
        events = watch(second, "slow-1")  # re-attached: followed to its end
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert events[-1].state_change.state == pb.JOB_STATE_SUCCEEDED
        listed = second.training.ListTrainingJobs(api.ListTrainingJobsRequest()).jobs
        assert [j.id for j in listed] == ["slow-1", "done-1"]
    finally:
        second.stop()
        kill_runners(jobs)


def test_a_runner_killed_while_the_service_was_down_leaves_its_job_failed(tmp_path):
    base, jobs = fake_base_model(tmp_path / "base"), tmp_path / "jobs"
    first = TrainingService(config(jobs))
    try:
        spec = make_spec(base, "slow-1", steps=50, save_steps=1)
        first.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
        wait_for(lambda: get(first, "slow-1").checkpoints)
    finally:
        first.stop()
    pid = json.loads((jobs / "slow-1" / "runner.pid").read_text())["pid"]
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: _dead(pid))

    second = TrainingService(config(jobs))
    try:
        job = get(second, "slow-1")
        assert job.state == pb.JOB_STATE_FAILED
        assert "runner died" in job.failure_message and "resume" in job.failure_message
        assert job.checkpoints  # kept, for resume
        assert watch(second, "slow-1")[-1].state_change.state == pb.JOB_STATE_FAILED
        # and the service still runs new jobs
        second.training.CreateTrainingJob(
            api.CreateTrainingJobRequest(spec=make_spec(base, "new-1"))
        )
        assert watch(second, "new-1")[-1].state_change.state == pb.JOB_STATE_SUCCEEDED
    finally:
        second.stop()
        kill_runners(jobs)


def test_sigkill_of_a_watched_runner_fails_the_job_with_the_signal(tmp_path):
    base, jobs = fake_base_model(tmp_path / "base"), tmp_path / "jobs"
    service = TrainingService(config(jobs))
    try:
        spec = make_spec(base, "slow-1", steps=50, save_steps=1)
        service.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
        wait_for(lambda: get(service, "slow-1").checkpoints)
        pid = json.loads((jobs / "slow-1" / "runner.pid").read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        last = watch(service, "slow-1")[-1].state_change
        assert last.state == pb.JOB_STATE_FAILED
        assert "SIGKILL" in last.message and "resume: true" in last.message
    finally:
        service.stop()
        kill_runners(jobs)


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1].startswith("Z")
    except OSError:
        return True
