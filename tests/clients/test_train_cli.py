"""`llamafleet train`, `jobs ls|get|cancel|logs` and `export` against a running training service
(in-process, with the fake runner), through the real CLI entry point and a run directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import grpc
import pytest
from llamafleet import cli, cluster
from llamafleet.client import RpcError
from llamafleet.commands import train as train_commands
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api
from training_harness import TrainingService, config, fake_base_model, kill_runners, wait_for


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    base = fake_base_model(tmp / "base")
    service = TrainingService(config(tmp / "jobs"))
    run_dir = tmp / "run"
    run_dir.mkdir()
    state = cluster.ClusterState(run_dir=str(run_dir), redis_url="")
    state.services["training"] = cluster.ServiceProcess(
        "training", os.getpid(), service.host.address
    )
    state.save()
    yield {"tmp": tmp, "base": base, "run_dir": str(run_dir), "service": service}
    service.stop()
    kill_runners(tmp / "jobs")


def job_yaml(run, name: str, steps: int = 4, extra: str = "") -> str:
    path = run["tmp"] / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            model_name_or_path: {run["base"]}
            stage: sft
            finetuning_type: lora
            lora_target: all
            dataset: alpaca_en_demo
            template: llama3
            cutoff_len: 512
            max_steps: {steps}
            save_steps: 2
            learning_rate: 1.0e-4
            """
        )
        + extra
    )
    return str(path)


def llamafleet(run, *args: str) -> int:
    return cli.main([*args, "--run-dir", run["run_dir"]])


def test_train_follows_the_job_to_completion(run, capsys):
    assert llamafleet(run, "train", job_yaml(run, "a"), "--job-id", "cli-1") == 0
    out = capsys.readouterr().out
    assert "job cli-1: QUEUED" in out or "job cli-1: RUNNING" in out
    assert "state RUNNING" in out and "checkpoint step 2" in out and "adapter v2 published" in out
    assert "4/4" in out and "loss 0.2500" in out and "tok/s" in out
    assert out.rstrip().endswith("job cli-1: SUCCEEDED")

    # resubmitting the same file and id re-attaches to the finished job (idempotent create)
    assert llamafleet(run, "train", job_yaml(run, "a"), "--job-id", "cli-1") == 0
    assert "SUCCEEDED" in capsys.readouterr().out


def test_jobs_ls_get_and_logs(run, capsys):
    llamafleet(run, "train", job_yaml(run, "b"), "--job-id", "cli-2")
    capsys.readouterr()
    assert llamafleet(run, "jobs", "ls") == 0
    table = capsys.readouterr().out
    assert "cli-2" in table and "SUCCEEDED" in table and "4/4" in table and "sft" in table
    assert llamafleet(run, "jobs", "ls", "--json", "--state", "succeeded") == 0
    listed = json.loads(capsys.readouterr().out)
    assert "cli-2" in [j["id"] for j in listed]
    assert {j["state"] for j in listed} == {"JOB_STATE_SUCCEEDED"}

    assert llamafleet(run, "jobs", "get", "cli-2") == 0
    detail = capsys.readouterr().out
    assert "SUCCEEDED" in detail and "cli-2@2 step 4 sha256" in detail and "4/4" in detail
    assert llamafleet(run, "jobs", "get", "cli-2", "--json") == 0
    job = json.loads(capsys.readouterr().out)
    assert job["state"] == "JOB_STATE_SUCCEEDED" and job["adapterId"] == "cli-2"

    assert llamafleet(run, "jobs", "logs", "cli-2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == int(job["lastEventSequence"])
    assert "state QUEUED" in lines[0] and "state SUCCEEDED" in lines[-1]
    assert any("step 3" in line and "loss 0.3333" in line for line in lines)
    assert llamafleet(run, "jobs", "logs", "cli-2", "--after", str(len(lines) - 1)) == 0
    assert capsys.readouterr().out.splitlines() == lines[-1:]

    assert llamafleet(run, "jobs", "get", "nope") == 2
    assert "NOT_FOUND" in capsys.readouterr().err


def test_detach_cancel_and_wait(run, capsys):
    yaml_path = job_yaml(run, "slow", steps=40)
    assert llamafleet(run, "train", yaml_path, "--job-id", "slow-cli", "--detach") == 0
    service = run["service"]
    wait_for(lambda: service.manager.get("slow-cli").checkpoints)
    assert llamafleet(run, "jobs", "cancel", "slow-cli", "--wait") == 0
    out = capsys.readouterr().out
    assert "cancel requested" in out and "CANCELLED" in out
    assert service.manager.get("slow-cli").checkpoints  # kept
    assert llamafleet(run, "jobs", "cancel", "slow-cli") == 0
    assert "already ended: CANCELLED" in capsys.readouterr().out


def test_ctrl_c_detaches_without_cancelling(run, capsys, monkeypatch):
    def interrupted(client, job):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_commands, "follow", interrupted)
    assert llamafleet(run, "train", job_yaml(run, "c", steps=40), "--job-id", "slow-ctrl") == 130
    assert "detached; job slow-ctrl keeps running" in capsys.readouterr().err
    job = run["service"].manager.get("slow-ctrl")
    assert job.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)  # not cancelled
    run["service"].manager.cancel("slow-ctrl")


def test_a_failing_job_exits_1_with_its_failure_message(run, capsys):
    assert llamafleet(run, "train", job_yaml(run, "d"), "--job-id", "crash-cli") == 1
    captured = capsys.readouterr()
    assert "exit code 3" in captured.err and "resume" in captured.err
    assert "job crash-cli: FAILED" in captured.out


def test_bad_config_is_one_line_exit_2(run, capsys):
    path = job_yaml(run, "bad", extra="lora_rnak: 8\n")
    assert llamafleet(run, "train", path) == 2
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "unsupported key 'lora_rnak' (did you mean 'lora_rank'?)" in err
    assert "Traceback" not in err


def test_export_adapter(run, capsys):
    llamafleet(run, "train", job_yaml(run, "e"), "--job-id", "cli-exp")
    out_dir = run["tmp"] / "exported"
    capsys.readouterr()
    assert llamafleet(run, "export", "cli-exp", str(out_dir), "--mode", "adapter") == 0
    out = capsys.readouterr().out
    assert "exported adapter of cli-exp v2" in out and "adapter_model.safetensors" in out
    assert (out_dir / "adapter_config.json").exists()
    assert llamafleet(run, "export", "cli-exp", str(out_dir), "--mode", "adapter") == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_following_reconnects_after_the_last_event_seen(monkeypatch):
    events = [pb.TrainingEvent(sequence=i, metrics=pb.TrainingMetrics(step=i)) for i in (1, 2, 3)]
    calls = []

    def watch_rpc(request, timeout):
        calls.append(request.after_sequence)
        for event in events[request.after_sequence :]:
            yield api.WatchTrainingJobResponse(event=event)
            if len(calls) == 1 and event.sequence == 2:  # the service restarts here
                raise RpcError(grpc.StatusCode.UNAVAILABLE, "restarting")

    monkeypatch.setattr(train_commands.time, "sleep", lambda s: None)
    client = SimpleNamespace(training=SimpleNamespace(WatchTrainingJob=watch_rpc))
    seen = [e.sequence for e in train_commands.watch(client, "j")]
    assert seen == [1, 2, 3] and calls == [0, 2]


def test_a_real_ctrl_c_detaches_the_cli_process(run):
    argv = [sys.executable, "-m", "llamafleet.cli", "train", job_yaml(run, "sigint", steps=2000)]
    argv += ["--job-id", "slow-sigint", "--address", run["service"].host.address]
    # A shell runs background jobs with SIGINT ignored, and an ignored SIGINT stays ignored in
    # children (Python then installs no KeyboardInterrupt handler): give the CLI the default.
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    service = run["service"]
    wait_for(lambda: "slow-sigint" in [j.id for j in service.manager.list([], 0, "")[0]])
    time.sleep(1.0)  # following by now
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "detached; job slow-sigint keeps running" in " ".join(err.split())
    assert "Traceback" not in err
    assert service.manager.get("slow-sigint").state == pb.JOB_STATE_RUNNING
    service.manager.cancel("slow-sigint")
