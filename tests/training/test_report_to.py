"""report_to: the job's metrics reach wandb (offline) and mlflow (a local file store) through
their real packages; an unknown, refused or uninstalled tracker is an error naming it."""

from __future__ import annotations

import glob
import json
import os

import pytest
from synthetic import digit_task, make_settings, task_rows

from services.common.errors import InvalidArgument
from services.training.loop.batches import InMemorySource
from services.training.loop.metrics import open_tracker, read_metrics
from services.training.recipes import sft


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # wandb/mlflow settings stay in the test


@pytest.mark.slow
def test_an_sft_job_reports_its_metrics_to_wandb_offline_and_to_mlflow_files(
    tiny_random, tokenizer, tmp_path, offline
):
    # the trackers extra, which scripts/setup.sh installs: a missing package fails, never skips
    from mlflow.tracking import MlflowClient

    settings = make_settings(tiny_random, max_steps=3, logging_steps=1, batch_rows=4,
                             report_to=("wandb", "mlflow"))  # fmt: skip
    sft.run(settings, InMemorySource(task_rows(tokenizer, digit_task(1, 16))), tmp_path / "job")
    out = tmp_path / "job" / "output"
    losses = {r["step"]: r["loss"] for r in read_metrics(out) if "loss" in r}
    assert sorted(losses) == [1, 2, 3]

    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("llamafleet")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert history == pytest.approx(losses, rel=1e-12)

    (record,) = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    data = open(record, "rb").read()  # wandb's record log: protobuf Records, values as JSON text
    for value in losses.values():
        assert json.dumps(value).encode() in data
    assert b"grad_norm" in data and b"learning_rate" in data
    assert os.environ["WANDB_MODE"] == "offline"


def test_unknown_refused_and_missing_trackers_are_errors_naming_them(tiny_random, monkeypatch):
    from llamafleet.training.v1 import training_pb2 as tpb
    from test_recipes import job_spec

    from services.training.spec import validation

    spec = job_spec(tiny_random)
    spec.report_to[:] = ["none", "tensorboard", "wandbb", "swanlab"]
    with pytest.raises(InvalidArgument) as info:
        validation.validate(spec)
    why = {v.field: v.description for v in info.value.violations}
    assert "unknown tracker 'wandbb'" in why["spec.report_to[2]"]
    assert "protobuf" in why["spec.report_to[3]"]
    monkeypatch.setitem(validation.TRACKER_MODULES, "mlflow", "no_such_module_mlflow")
    spec.report_to[:] = ["mlflow"]
    with pytest.raises(InvalidArgument, match="mlflow is not installed"):
        validation.validate(spec)
    with pytest.raises(ValueError, match="unknown tracker 'comet'"):
        open_tracker("comet", tiny_random, "x")
    assert tpb.TrainingJobSpec(report_to=["none"]).report_to == ["none"]
