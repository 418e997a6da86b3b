"""Two processes on gloo (CPU) train like one process with the same global batch.

1 process x 4 rows and 2 processes x 2 rows see the same global batches (the batch source gives
rank r rows [2r, 2r+2) of each global batch of 4) and the loss is the token mean over the global
batch, so the loss curves agree within float tolerance (gradients are summed in another order).
"""

from __future__ import annotations

import pytest
from llamafleet.training.v1 import training_pb2 as tpb
from synthetic import digit_task, pack, task_rows
from test_recipes import job_spec, result_of, start, write_rows

from services.training.loop.metrics import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

STEPS = 6


@pytest.fixture(scope="module")
def rows_dir(tokenizer, tmp_path_factory) -> str:
    rows = pack(task_rows(tokenizer, digit_task(8, 200)), cutoff=96)
    return write_rows(tmp_path_factory.mktemp("rows"), rows)


def losses(spec, job_dir, rows_dir) -> list[float]:
    assert start(spec, job_dir, rows_dir).wait(timeout=280) == 0, (
        job_dir / "runner.log"
    ).read_text()[-3000:]
    assert result_of(job_dir)["state"] == "SUCCEEDED"
    return [r["loss"] for r in read_metrics(job_dir / "output")]


@pytest.fixture(scope="module")
def single_process(tiny_random, rows_dir, tmp_path_factory) -> list[float]:
    spec = job_spec(tiny_random, max_steps=STEPS, per_device_batch_size=4)
    return losses(spec, tmp_path_factory.mktemp("one") / "job", rows_dir)


@pytest.mark.parametrize(
    "backend, stage",
    [(tpb.DISTRIBUTED_BACKEND_DDP, None), (tpb.DISTRIBUTED_BACKEND_DEEPSPEED, 2)],
    ids=["ddp", "deepspeed-zero2"],
)
def test_two_processes_match_one(tiny_random, rows_dir, single_process, tmp_path, backend, stage):
    spec = job_spec(tiny_random, max_steps=STEPS, per_device_batch_size=2)
    spec.distributed.world_size = 2
    spec.distributed.backend = backend
    if stage is not None:
        spec.distributed.deepspeed_zero_stage = stage
    two = losses(spec, tmp_path / "job", rows_dir)
    print(
        f"\n1 process: {[round(x, 5) for x in single_process]}\n2 processes: {[round(x, 5) for x in two]}"
    )
    assert len(two) == STEPS
    assert two[-1] < two[0]  # it trains
    assert two == pytest.approx(single_process, rel=1e-4, abs=1e-4)
