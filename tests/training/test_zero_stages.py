"""DeepSpeed ZeRO stages 0-3 (and optimizer offload) on two CPU processes train like DDP.

Every run is two processes on gloo (``DS_ACCELERATOR=cpu``) with the same global batch of 4 rows
(2 per rank), LoRA on the tiny model in float32. DDP averages gradients over ranks; ZeRO 0 does
too, ZeRO 1 shards the optimizer state, ZeRO 2 also the gradients (reduce-scatter), ZeRO 3 also
the parameters (gathered for each layer's forward/backward). None of that changes the update, so
each stage's per-step losses equal the DDP run's within float tolerance (sums happen in another
order and in buckets: rel 1e-5; they agree to about 3e-8 here), and so do the gradient norms
the job logs (ZeRO 0 logged NaN before ``DeepSpeedEngine`` computed it itself). Stage 2 runs
here with the optimizer offloaded to the CPU (DeepSpeed's offload path); plain stage 2 is
compared with one process in ``test_distributed.py``.

The resume test kills nothing: it takes a finished ZeRO-3 run back to its step-2 checkpoint,
resumes, and requires the same losses for steps 3 to 5, which needs the partitioned weights and
the sharded optimizer state to round-trip through the job's checkpoint (this failed with "size
mismatch ... torch.Size([0])" before ``distributed._gather_on_load``).

Six launches (DDP, 4 ZeRO runs, 1 resume) of about 20-40 s each on 2 cores; DeepSpeed compiles
its CPU communication op once per machine (cached under ``~/.cache/torch_extensions``).
"""

from __future__ import annotations

import json
import shutil

import pytest
from llamafleet.training.v1 import training_pb2 as tpb
from synthetic import digit_task, pack, task_rows
from test_recipes import job_spec, result_of, start, write_rows

from services.training.loop.checkpoints import list_checkpoints
from services.training.loop.metrics import METRICS_FILE, read_metrics

pytestmark = pytest.mark.slow

STEPS = 5
SAVE_STEPS = 2
TOLERANCE = {"rel": 1e-5, "abs": 1e-6}
ZERO_RUNS = [(0, False), (1, False), (2, True), (3, False)]  # (stage, offload_optimizer)


@pytest.fixture(scope="module")
def rows_dir(tokenizer, tmp_path_factory) -> str:
    rows = pack(task_rows(tokenizer, digit_task(8, 120)), cutoff=96)
    return write_rows(tmp_path_factory.mktemp("zero-rows"), rows)


def two_process_spec(base, backend, stage=None, offload=False) -> tpb.TrainingJobSpec:
    spec = job_spec(base, max_steps=STEPS, per_device_batch_size=2, save_steps=SAVE_STEPS)
    spec.distributed.world_size = 2
    spec.distributed.backend = backend
    if stage is not None:
        spec.distributed.deepspeed_zero_stage = stage
    spec.distributed.offload_optimizer = offload
    return spec


def run(spec, job_dir, rows_dir) -> list[dict]:
    """The job's metric records, one per step."""
    log = job_dir / "runner.log"
    assert start(spec, job_dir, rows_dir).wait(timeout=240) == 0, log.read_text()[-4000:]
    assert result_of(job_dir)["state"] == "SUCCEEDED", log.read_text()[-4000:]
    return read_metrics(job_dir / "output")


def curve(records: list[dict], key: str = "loss") -> list[float]:
    return [r[key] for r in records]


@pytest.fixture(scope="module")
def ddp(tiny_random, rows_dir, tmp_path_factory) -> list[dict]:
    spec = two_process_spec(tiny_random, tpb.DISTRIBUTED_BACKEND_DDP)
    records = run(spec, tmp_path_factory.mktemp("ddp") / "job", rows_dir)
    losses = curve(records)
    assert len(losses) == STEPS and losses[-1] < losses[0]  # the reference trains
    return records


@pytest.fixture(scope="module")
def zero_runs(tiny_random, rows_dir, tmp_path_factory):
    """Each stage's spec, job folder and records, run once for the module (resume reuses one)."""
    done = {}

    def get(stage: int, offload: bool):
        if (stage, offload) not in done:
            spec = two_process_spec(tiny_random, tpb.DISTRIBUTED_BACKEND_DEEPSPEED, stage, offload)
            job = tmp_path_factory.mktemp(f"zero{stage}{'-offload' if offload else ''}") / "job"
            done[stage, offload] = spec, job, run(spec, job, rows_dir)
        return done[stage, offload]

    return get


@pytest.mark.parametrize(
    "stage, offload", ZERO_RUNS, ids=[f"zero{s}{'-offload' if o else ''}" for s, o in ZERO_RUNS]
)
def test_zero_stage_matches_ddp(ddp, zero_runs, stage, offload):
    _spec, job, records = zero_runs(stage, offload)
    print(f"\nddp loss:   {curve(ddp)}\nzero{stage} loss: {curve(records)}")
    assert len(records) == STEPS
    assert curve(records) == pytest.approx(curve(ddp), **TOLERANCE)
    # The gradient norm (DeepSpeed's, before clipping) is the same global gradient's.
    assert curve(records, "grad_norm") == pytest.approx(curve(ddp, "grad_norm"), **TOLERANCE)
    # The job saved DeepSpeed's own checkpoint: from stage 1 on one optimizer shard per rank,
    # at stage 3 the weights too.
    _step, folder = list_checkpoints(job)[-1]
    files = sorted(p.name for p in (folder / "deepspeed" / "state").iterdir())
    optimizer_shards = [name for name in files if name.endswith("optim_states.pt")]
    model_shards = [name for name in files if name.endswith("model_states.pt")]
    assert len(optimizer_shards) == (0 if stage == 0 else 2), files
    assert len(model_shards) == (2 if stage == 3 else 1), files


@pytest.mark.heavy  # scripts/test_heavy.sh
def test_resume_from_a_zero3_checkpoint_continues(zero_runs, rows_dir, tmp_path):
    spec, finished, records = zero_runs(3, False)
    job = tmp_path / "job"
    shutil.copytree(finished, job)
    # Back to the state of a job stopped right after its step-2 checkpoint.
    for step, folder in list_checkpoints(job):
        if step > SAVE_STEPS:
            shutil.rmtree(folder)
    (job / "result.json").unlink()
    metrics = job / "output" / METRICS_FILE
    kept = [x for x in metrics.read_text().splitlines() if json.loads(x)["step"] <= SAVE_STEPS]
    metrics.write_text("".join(line + "\n" for line in kept))
    (job / "runner.log").write_text("")

    spec.resume = True
    resumed = run(spec, job, rows_dir)
    log = (job / "runner.log").read_text()
    assert f"step-{SAVE_STEPS}" in log and "resumed from" in log, log[-3000:]
    logged = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert logged == list(range(1, STEPS + 1)), logged  # steps 1-2 were not trained again
    # Steps 4 and 5 depend on the Adam moments restored from the optimizer shards.
    assert curve(resumed) == pytest.approx(curve(records), **TOLERANCE)
