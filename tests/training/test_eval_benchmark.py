"""A benchmark scored at a job's evaluation points (``spec.eval_benchmark``).

End to end (the data and training services as processes, ``llamafleet.cluster``): a LoRA SFT job
on the tiny model trains on the val split's prompts of the synthetic 4-choice task of
``test_benchmark`` (answered by the letter), with ``eval_steps`` = ``save_steps``. Each
evaluation's metrics event carries ``eval/benchmark/accuracy`` and one accuracy per subject, the
accuracy rises from chance (0.25) to at least twice it, and at every evaluation point it is exactly
what ``RunBenchmark`` answers for the adapter version saved at that step (same questions, same
rendering, same scoring, a separate process that loads the saved adapter). The tables land in
``eval_benchmark/step-N``, and the metrics in ``metrics.jsonl`` (what the trackers get).

The spec is checked before launch like ``RunBenchmark``'s request: options, the folder under the
model roots, the stage, and a training service without a data service.
"""

from __future__ import annotations

import json
import os

import pytest
from llamafleet import cluster
from llamafleet.common.v1 import common_pb2
from llamafleet.data.v1 import data_pb2
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api
from test_benchmark import write_task
from training_harness import TrainingService, config

from services.common.errors import InvalidArgument
from services.training.evaluation import choices
from services.training.spec.validation import validate

JOB = "bench-sft"
STEPS, EVERY = 40, 10


def _rows(task_dir, path):
    """SFT conversations: each val question of both subjects, answered by its letter."""
    lines = []
    for subject in choices.load_task(task_dir, "synth", "validation"):
        for q in subject.questions:
            messages = choices.messages(subject, q, 0, "en")
            messages.append({"role": "assistant", "content": q.answer})
            lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _spec(base, data, task_dir) -> pb.TrainingJobSpec:
    spec = pb.TrainingJobSpec(
        job_id=JOB, base_model=str(base), stage=pb.STAGE_SFT, compute_dtype=pb.COMPUTE_DTYPE_FLOAT32
    )
    source = data_pb2.DatasetSource(
        files=data_pb2.FileSource(paths=[str(data)]),
        format=data_pb2.FormatOptions(format=data_pb2.DATASET_FORMAT_OPENAI),
    )
    spec.dataset.spec.CopyFrom(data_pb2.DatasetSpec(sources=[source]))
    spec.finetuning.type = pb.FINETUNING_TYPE_LORA
    spec.finetuning.lora.rank, spec.finetuning.lora.alpha = 64, 128
    hp = spec.hyperparameters
    hp.learning_rate, hp.per_device_batch_size, hp.max_steps, hp.seed = 3e-3, 16, STEPS, 0
    hp.eval_steps = hp.save_steps = EVERY
    hp.logging_steps = EVERY
    spec.eval_benchmark.CopyFrom(
        pb.EvalBenchmark(task_dir=str(task_dir), task="synth", split="test", n_shot=0)
    )
    return spec


@pytest.mark.heavy  # scripts/test_heavy.sh
@pytest.mark.slow  # about 2 minutes here: the services, the job, four RunBenchmark processes
def test_the_accuracy_at_each_eval_point_is_runbenchmark_on_that_adapter_version(
    tiny_random, tmp_path
):
    task_dir = write_task(tmp_path / "tasks")
    data = _rows(task_dir, tmp_path / "sft.jsonl")
    run = tmp_path / "cluster"
    cluster.up(run, roots=[str(tmp_path), str(tiny_random.parent)], timeout=120)
    try:
        client = cluster.connect(run, timeout=120)
        client.training.CreateTrainingJob(
            api.CreateTrainingJobRequest(spec=_spec(tiny_random, data, task_dir))
        )
        events = [
            r.event
            for r in client.training.WatchTrainingJob(
                api.WatchTrainingJobRequest(job_id=JOB), timeout=600
            )
        ]
        log = (run / "jobs" / JOB / "runner.log").read_text()
        assert events[-1].state_change.state == pb.JOB_STATE_SUCCEEDED, log[-3000:]
        evals = {
            e.metrics.step: dict(e.metrics.extra)
            for e in events
            if e.HasField("metrics") and "eval/benchmark/accuracy" in e.metrics.extra
        }
        assert sorted(evals) == [10, 20, 30, 40]
        for extra in evals.values():
            assert set(extra) == {"eval/benchmark/accuracy", "eval/benchmark/alpha",
                                  "eval/benchmark/beta"}  # fmt: skip
            mean = (extra["eval/benchmark/alpha"] + extra["eval/benchmark/beta"]) / 2
            assert extra["eval/benchmark/accuracy"] == pytest.approx(mean)  # 8 questions each
        curve = [evals[s]["eval/benchmark/accuracy"] for s in sorted(evals)]
        print(f"benchmark accuracy at steps 10, 20, 30, 40: {curve}")
        # from chance (the untrained model answers one letter: 4 of 16) to at least twice it
        assert curve[0] <= 0.25 and curve[-1] >= 0.5, curve
        assert curve == sorted(curve), curve

        job = client.training.GetTrainingJob(api.GetTrainingJobRequest(job_id=JOB)).job
        versions = {v.step: v.version for v in job.adapter_versions}
        for step, extra in evals.items():
            reply = client.training.RunBenchmark(
                api.RunBenchmarkRequest(
                    base_model=str(tiny_random),
                    adapter=common_pb2.AdapterRef(id=JOB, version=versions[step]),
                    task_dir=str(task_dir),
                    task="synth",
                    split="test",
                    n_shot=0,
                ),  # fmt: skip
                timeout=300,
            )
            assert reply.accuracy == extra["eval/benchmark/accuracy"], step
            assert {s.subject: s.accuracy for s in reply.subjects} == {
                "alpha": extra["eval/benchmark/alpha"], "beta": extra["eval/benchmark/beta"]
            }  # fmt: skip

        output = run / "jobs" / JOB / "output"
        saved = json.loads((output / "eval_benchmark" / "step-40" / "results.json").read_text())
        assert saved["accuracy"] == curve[-1] and saved["total"] == 16
        written = [json.loads(x) for x in (output / "metrics.jsonl").read_text().splitlines()]
        assert [r["eval/benchmark/accuracy"] for r in written
                if "eval/benchmark/accuracy" in r] == curve  # fmt: skip
    finally:
        cluster.down(run)


def _violations(spec) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as err:
        validate(spec)
    return {v.field: v.description for v in err.value.violations}


def test_bad_eval_benchmark_options_are_refused_by_field(tiny_random, tmp_path):
    spec = _spec(tiny_random, tmp_path / "rows.jsonl", tmp_path)
    spec.eval_benchmark.CopyFrom(
        pb.EvalBenchmark(task="../x", lang="fr", n_shot=30, max_questions=0)
    )
    got = _violations(spec)
    path = "spec.eval_benchmark."
    assert set(got) >= {path + f for f in ("task_dir", "task", "lang", "n_shot", "max_questions")}
    assert "one of en, zh" in got[path + "lang"]

    spec = _spec(tiny_random, tmp_path / "rows.jsonl", tmp_path)
    spec.stage = pb.STAGE_RM
    assert "STAGE_RM has no evaluation points" in _violations(spec)["spec.eval_benchmark"]


def test_the_service_checks_the_folder_and_needs_a_data_service(tiny_random, tmp_path):
    task_dir = write_task(tmp_path / "tasks")
    jobs = tmp_path / "svc" / "jobs"
    service = TrainingService(
        config(
            jobs,
            model_roots=os.pathsep.join([str(tmp_path), str(tiny_random.parent)]),
            data_address="file:///nowhere",
        ),
        validator=validate,
    )
    try:
        spec = _spec(tiny_random, tmp_path / "rows.jsonl", "/etc")
        spec.base_model = str(tiny_random)
        with pytest.raises(Exception) as err:  # outside the model roots
            service.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
        assert "spec.eval_benchmark.task_dir" in str(err.value)
        spec = _spec(tiny_random, tmp_path / "rows.jsonl", task_dir)
        with pytest.raises(Exception) as err:
            service.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
        assert "rendered by the data service" in err.value.message
        assert "file:///nowhere" in err.value.message
    finally:
        service.stop()
