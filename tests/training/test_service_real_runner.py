"""The service with the training core's real runner (``launch.runner_command``): a tiny LoRA SFT
job on hand-made rows (``--data-address file://DIR``) runs to SUCCEEDED through the job-folder
protocol, and its adapter is fetched and exported like any other."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llamafleet.common.v1 import common_pb2
from llamafleet.data.v1 import data_pb2
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api
from training_harness import TrainingService, config, kill_runners, make_spec

from services.training.jobs.process import default_launcher
from services.training.spec.validation import validate as core_validate
from services.training.tiny.model import build_tiny_model


@pytest.mark.slow  # the runner process imports torch: ~10-30 s
def test_a_real_lora_job_runs_to_completion_and_serves_its_adapter(tmp_path):
    base = build_tiny_model(tmp_path / "base", seed=1)
    rng, rows = random.Random(0), data_pb2.Batch()
    for _ in range(16):
        ids = [rng.randrange(10, 3000) for _ in range(16)]
        rows.rows.add(input_ids=ids, labels=ids, position_ids=list(range(16)))
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "train.binpb").write_bytes(rows.SerializeToString())
    cfg = config(tmp_path / "jobs", data_address=f"file://{tmp_path / 'rows'}", cancel_grace_s=60)
    service = TrainingService(cfg, launcher=default_launcher, validator=core_validate)
    try:
        spec = make_spec(base, "real-1", steps=4, save_steps=2)
        spec.compute_dtype = pb.COMPUTE_DTYPE_FLOAT32
        spec.hyperparameters.per_device_batch_size = 4
        spec.hyperparameters.logging_steps = 1
        service.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
        request = api.WatchTrainingJobRequest(job_id="real-1")
        events = [r.event for r in service.training.WatchTrainingJob(request, timeout=240)]
        log = (tmp_path / "jobs" / "real-1" / "runner.log").read_text()
        assert events[-1].state_change.state == pb.JOB_STATE_SUCCEEDED, log[-2000:]
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert [e.metrics.step for e in events if e.HasField("metrics")] == [1, 2, 3, 4]

        job = service.training.GetTrainingJob(api.GetTrainingJobRequest(job_id="real-1")).job
        assert job.latest_step == 4 and job.total_steps == 4
        assert [(c.step, c.adapter_version) for c in job.checkpoints] == [(2, 1), (4, 2)]
        assert [(v.version, v.step) for v in job.adapter_versions] == [(1, 2), (2, 4)]

        fetch = api.FetchAdapterRequest(adapter=common_pb2.AdapterRef(id="real-1"))
        chunks = [r.chunk for r in service.training.FetchAdapter(fetch)]
        blob = b"".join(c.data for c in chunks)
        assert hashlib.sha256(blob).hexdigest() == chunks[0].info.sha256
        assert chunks[0].info.sha256 == job.adapter_versions[-1].sha256

        export = api.ExportModelRequest(
            job_id="real-1", mode=pb.EXPORT_MODE_MERGED, output_dir=str(tmp_path / "merged")
        )
        files = service.training.ExportModel(export, timeout=120).files
        assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= set(files)

        # a second job starts from real-1@2 (init_adapter): the runner trains the job's copy
        chained = make_spec(base, "real-2", steps=2, save_steps=2)
        chained.compute_dtype = pb.COMPUTE_DTYPE_FLOAT32
        chained.hyperparameters.per_device_batch_size = 4
        chained.init_adapter.id, chained.init_adapter.version = "real-1", 2
        service.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=chained))
        request = api.WatchTrainingJobRequest(job_id="real-2")
        events = [r.event for r in service.training.WatchTrainingJob(request, timeout=240)]
        log = (tmp_path / "jobs" / "real-2" / "runner.log").read_text()
        assert events[-1].state_change.state == pb.JOB_STATE_SUCCEEDED, log[-2000:]
        assert (
            events[0].state_change.message
            == f"starts from real-1@2 (sha256 {chunks[0].info.sha256})"
        )
        copy = tmp_path / "jobs" / "real-2" / "init_adapter"
        lines = [e.log.message for e in events if e.HasField("log")]
        assert any(m.startswith(f"LoRA continues the adapter {copy}") for m in lines), lines
    finally:
        service.stop()
        kill_runners(tmp_path / "jobs")
