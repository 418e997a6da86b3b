"""The runner and the job directory protocol: events, result.json, outputs, cancel, resume.

The runner runs as the service runs it: ``launch.runner_command`` in a new process group, with
rows served from ``file://DIR`` instead of a data service.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from llamafleet.data.v1 import data_pb2
from llamafleet.training.v1 import training_pb2 as tpb
from synthetic import digit_task, pack, task_rows

from services.common.errors import InvalidArgument, Unimplemented
from services.training.jobs.events import EventLog
from services.training.jobs.launch import runner_command
from services.training.loop.checkpoints import list_checkpoints
from services.training.loop.metrics import read_metrics
from services.training.spec.validation import validate

REPO = Path(__file__).resolve().parents[2]


def write_rows(folder: Path, rows, eval_rows=()) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.binpb").write_bytes(data_pb2.Batch(rows=rows).SerializeToString())
    if eval_rows:
        (folder / "eval.binpb").write_bytes(data_pb2.Batch(rows=eval_rows).SerializeToString())
    return f"file://{folder}"


def job_spec(base: Path, **hyper) -> tpb.TrainingJobSpec:
    spec = tpb.TrainingJobSpec(
        job_id="j1",
        base_model=str(base),
        stage=tpb.STAGE_SFT,
        compute_dtype=tpb.COMPUTE_DTYPE_FLOAT32,
        attention_implementation=tpb.ATTENTION_IMPLEMENTATION_SDPA,
    )
    spec.dataset.dataset_id = "rows"
    spec.finetuning.type = tpb.FINETUNING_TYPE_LORA
    spec.hyperparameters.learning_rate = 1e-3
    spec.hyperparameters.per_device_batch_size = 2
    spec.hyperparameters.logging_steps = 1
    spec.hyperparameters.seed = 3
    for key, value in hyper.items():
        setattr(spec.hyperparameters, key, value)
    return spec


def start(spec, job_dir: Path, data: str) -> subprocess.Popen:
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "spec.binpb").write_bytes(spec.SerializeToString())
    argv, env = runner_command(spec, job_dir, data)
    with open(job_dir / "runner.log", "ab") as log:
        return subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def result_of(job_dir: Path) -> dict:
    return json.loads((job_dir / "result.json").read_text())


@pytest.fixture(scope="module")
def rows_dir(tokenizer, tmp_path_factory) -> str:
    rows = pack(task_rows(tokenizer, digit_task(5, 120)), cutoff=128)
    eval_rows = pack(task_rows(tokenizer, digit_task(6, 12)), cutoff=128)
    return write_rows(tmp_path_factory.mktemp("rows"), rows, eval_rows)


def test_single_process_command():
    spec = tpb.TrainingJobSpec()
    argv, env = runner_command(spec, "/jobs/j1", "localhost:1234", "secret")
    assert argv[1:] == [
        "-m", "services.training.runner", "--job-dir", "/jobs/j1", "--data-address",
        "localhost:1234",
    ]  # fmt: skip
    assert env["LLAMAFLEET_TOKEN"] == "secret" and "secret" not in argv


def test_multi_process_commands():
    spec = tpb.TrainingJobSpec()
    spec.distributed.world_size = 2
    argv, _ = runner_command(spec, "/j", "a:1")
    assert argv[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
    spec.distributed.backend = tpb.DISTRIBUTED_BACKEND_DEEPSPEED
    argv, env = runner_command(spec, "/j", "a:1")
    assert argv[1:5] == ["-m", "deepspeed.launcher.runner", "--num_gpus", "2"]
    assert env.get("DS_ACCELERATOR") == "cpu"


def test_validate_names_every_bad_field(tiny_random):
    spec = job_spec(tiny_random)
    validate(spec)  # valid: silent
    spec.hyperparameters.warmup_ratio = 1.5
    spec.finetuning.lora.dropout = 2.0
    spec.distributed.offload_params = True
    with pytest.raises(InvalidArgument) as info:
        validate(spec)
    fields = {v.field for v in info.value.violations}
    assert fields == {
        "spec.hyperparameters.warmup_ratio",
        "spec.finetuning.lora.dropout",
        "spec.distributed.offload_params",
    }


def test_validate_refuses_float16_on_a_bfloat16_model(tiny_random, tmp_path):
    base = tmp_path / "bf16"
    base.mkdir()
    config = json.loads((tiny_random / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (base / "config.json").write_text(json.dumps(config))
    spec = job_spec(base)
    spec.compute_dtype = tpb.COMPUTE_DTYPE_FLOAT16
    with pytest.raises(InvalidArgument) as info:
        validate(spec)
    assert [v.field for v in info.value.violations] == ["spec.compute_dtype"]
    assert "bfloat16" in info.value.violations[0].description
    spec.compute_dtype = tpb.COMPUTE_DTYPE_BFLOAT16
    validate(spec)


def test_validate_refuses_what_is_not_implemented(tiny_random):
    spec = job_spec(tiny_random)
    spec.init_adapter.id, spec.init_adapter.version = "sft-job", 1
    spec.finetuning.llama_pro.num_expand = 2
    with pytest.raises(Unimplemented, match="LLaMA-Pro block expansion from an adapter"):
        validate(spec)


def test_runner_protocol_events_outputs_and_result(tiny_random, rows_dir, tmp_path):
    spec = job_spec(tiny_random, max_steps=6, save_steps=3, eval_steps=3, save_total_limit=1)
    job = tmp_path / "job"
    assert start(spec, job, rows_dir).wait(timeout=240) == 0
    assert result_of(job) == {"state": "SUCCEEDED", "message": "trained 6 steps", "step": 6}
    events = list(EventLog(job).read())
    kinds = [e.WhichOneof("event") for e in events]
    assert events[0].state_change.state == tpb.JOB_STATE_RUNNING
    assert all(
        e.state_change.state == tpb.JOB_STATE_RUNNING for e in events if e.HasField("state_change")
    )
    metrics = [e.metrics for e in events if e.HasField("metrics") and e.metrics.HasField("loss")]
    assert [m.step for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert all(m.tokens_per_second > 0 for m in metrics)
    assert metrics[0].learning_rate > metrics[-1].learning_rate  # linear decay to 0
    assert any(e.metrics.HasField("eval_loss") for e in events if e.HasField("metrics"))
    published = [e.adapter_published for e in events if e.HasField("adapter_published")]
    assert [(a.version, a.step) for a in published] == [(1, 3), (2, 6)]
    assert all(a.size_bytes > 0 for a in published)
    assert kinds.count("checkpoint_saved") == 2
    assert [step for step, _ in list_checkpoints(job)] == [6]  # save_total_limit=1
    output = job / "output"
    assert [r["step"] for r in read_metrics(output)] == [1, 2, 3, 4, 5, 6]
    assert (output / "loss_curve.png").stat().st_size > 0
    assert list((output / "tensorboard").glob("events.out.tfevents.*"))
    assert (output / "adapter" / "adapter_model.safetensors").exists()
    assert (job / "adapters" / "v2" / "adapter_config.json").exists()


def test_sigterm_cancels_after_a_checkpoint(tiny_random, rows_dir, tmp_path):
    spec = job_spec(tiny_random, max_steps=400)
    job = tmp_path / "job"
    process = start(spec, job, rows_dir)
    deadline = time.time() + 180
    while not any(e.HasField("metrics") for e in EventLog(job).read()) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    result = result_of(job)
    assert result["state"] == "CANCELLED" and 0 < result["step"] < 400
    assert list_checkpoints(job)[-1][0] == result["step"]


def test_sigkill_then_resume_continues_with_the_same_data_order(tiny_random, rows_dir, tmp_path):
    """A run killed after its step-4 checkpoint and resumed gives the same per-step losses as an
    uninterrupted run: same data order (no batch twice or skipped), optimizer and RNG state."""
    spec = job_spec(tiny_random, max_steps=10, save_steps=2)
    spec.finetuning.lora.dropout = 0.1  # RNG state matters too
    reference = tmp_path / "reference"
    assert start(spec, reference, rows_dir).wait(timeout=240) == 0

    job = tmp_path / "job"
    process = start(spec, job, rows_dir)
    deadline = time.time() + 180
    while not (job / "checkpoints" / "step-4").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert not (job / "result.json").exists()
    killed_at = list_checkpoints(job)[-1][0]
    assert 4 <= killed_at < 10

    spec.resume = True
    assert start(spec, job, rows_dir).wait(timeout=240) == 0
    assert result_of(job)["state"] == "SUCCEEDED"
    expected = {r["step"]: r["loss"] for r in read_metrics(reference / "output")}
    resumed = {r["step"]: r["loss"] for r in read_metrics(job / "output")}
    assert sorted(resumed) == list(range(1, 11))
    for step in range(1, 11):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
