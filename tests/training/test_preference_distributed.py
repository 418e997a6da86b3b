"""rm and dpo on two processes (DDP on gloo, CPU) train like one process with the same global batch.

1 process x 4 pairs and 2 processes x 2 pairs see the same global batches (rank r gets pairs
[2r, 2r+2) of each global batch of 4), the loss of a step is the mean over the step's pairs on
all ranks, and DDP averages the gradients, so the loss curves and the held-out accuracy agree
within float tolerance. The reward model's forward goes through the DDP wrapper (a forward that
bypassed it would leave the gradients unreduced and the ranks would drift apart). DeepSpeed is
still refused for these stages.
"""

from __future__ import annotations

import pytest
from llamafleet.data.v1 import data_pb2
from llamafleet.training.v1 import training_pb2 as tpb
from synthetic import digit_task
from test_dpo import preference_pairs
from test_recipes import job_spec, result_of, start

from services.common.errors import Unimplemented
from services.training.loop.metrics import read_metrics
from services.training.spec.validation import validate

pytestmark = pytest.mark.slow

STEPS = 6


@pytest.fixture(scope="module")
def pairs_dir(tokenizer, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("pairs")
    train = preference_pairs(tokenizer, digit_task(41, 48))
    held_out = preference_pairs(tokenizer, digit_task(42, 8))
    (folder / "train.binpb").write_bytes(data_pb2.Batch(pairs=train).SerializeToString())
    (folder / "eval.binpb").write_bytes(data_pb2.Batch(pairs=held_out).SerializeToString())
    return f"file://{folder}"


def spec_for(base, stage, world_size: int) -> tpb.TrainingJobSpec:
    spec = job_spec(base, max_steps=STEPS, per_device_batch_size=4 // world_size, eval_steps=STEPS)
    spec.stage = stage
    spec.hyperparameters.learning_rate = 3e-3
    spec.preference.beta = 0.5
    spec.distributed.world_size = world_size
    spec.distributed.backend = tpb.DISTRIBUTED_BACKEND_DDP
    return spec


def curves(spec, job_dir, data) -> tuple[list[float], list[dict]]:
    code = start(spec, job_dir, data).wait(timeout=280)
    assert code == 0, (job_dir / "runner.log").read_text()[-3000:]
    assert result_of(job_dir)["state"] == "SUCCEEDED"
    records = read_metrics(job_dir / "output")
    evals = [r for r in records if "eval_rewards/accuracy" in r]
    return [r["loss"] for r in records if "loss" in r], evals


@pytest.mark.parametrize("stage", [tpb.STAGE_RM, tpb.STAGE_DPO], ids=["rm", "dpo"])
def test_two_processes_match_one(tiny_random, pairs_dir, tmp_path, stage):
    one, one_evals = curves(spec_for(tiny_random, stage, 1), tmp_path / "one", pairs_dir)
    two, two_evals = curves(spec_for(tiny_random, stage, 2), tmp_path / "two", pairs_dir)
    print(f"\n1 process: {[round(x, 5) for x in one]}\n2 processes: {[round(x, 5) for x in two]}")
    assert len(two) == STEPS
    assert two[-1] < two[0]  # it trains
    assert two == pytest.approx(one, rel=1e-4, abs=1e-4)
    assert [e["step"] for e in two_evals] == [0, STEPS]  # eval on both ranks, reduced
    for a, b in zip(one_evals, two_evals, strict=True):
        assert b["eval_rewards/accuracy"] == a["eval_rewards/accuracy"]
        assert b["eval_rewards/margin"] == pytest.approx(a["eval_rewards/margin"], abs=1e-4)
    assert (tmp_path / "two" / "adapters" / "v1" / "adapter_config.json").is_file()


def test_deepspeed_is_refused_for_preference_stages(tiny_random):
    spec = spec_for(tiny_random, tpb.STAGE_DPO, 2)
    validate(spec)  # DDP: accepted
    spec.distributed.backend = tpb.DISTRIBUTED_BACKEND_DEEPSPEED
    with pytest.raises(Unimplemented, match="DeepSpeed"):
        validate(spec)
