"""Preference pairs from ``--data-address file://DIR``: ``InMemorySource.from_dir`` reads Batches of
``pairs`` as an ``InMemoryPairSource``, and the runner trains an rm and a dpo job on them."""

from __future__ import annotations

import json
import logging

import pytest
from llamafleet.data.v1 import data_pb2
from llamafleet.training.v1 import training_pb2 as tpb
from synthetic import digit_task
from test_dpo import preference_pairs
from test_recipes import job_spec

from services.training import runner
from services.training.loop.batches import InMemoryPairSource, InMemorySource, StreamRequest


@pytest.fixture(scope="module")
def pairs(tokenizer):
    return preference_pairs(tokenizer, digit_task(31, 12)), preference_pairs(
        tokenizer, digit_task(32, 4)
    )


def write_split(folder, name, **fields) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(data_pb2.Batch(**fields).SerializeToString())


def test_from_dir_reads_preference_pairs(pairs, tmp_path):
    train, held_out = pairs
    write_split(tmp_path, "train.binpb", pairs=train)
    write_split(tmp_path, "eval.binpb", pairs=held_out)
    source = InMemorySource.from_dir(tmp_path)
    assert isinstance(source, InMemoryPairSource) and source.has_eval()
    request = StreamRequest(batch_rows=4, seed=1)
    batches = [b for b, _ in source.stream(request)]
    assert source.count(request) == len(batches) == 3
    assert all(len(b.pairs) == 4 and not b.rows for b in batches)
    seen = sorted(p.SerializeToString() for b in batches for p in b.pairs)
    assert seen == sorted(p.SerializeToString() for p in train)  # each pair once per epoch
    first = batches[0]
    sides = [p.chosen for p in first.pairs] + [p.rejected for p in first.pairs]
    assert first.tokens == sum(len(r.input_ids) for r in sides)
    assert first.trained_tokens == sum(sum(y != -100 for y in r.labels) for r in sides)
    # resuming from a cursor continues with the next batch of the same order
    _, cursor = next(iter(source.stream(request)))
    resumed = [b for b, _ in source.stream(StreamRequest(batch_rows=4, seed=1, cursor=cursor))]
    assert [b.index for b in resumed] == [1, 2] and resumed[0].pairs == batches[1].pairs
    evals = [b for b, _ in source.stream(StreamRequest(split=data_pb2.SPLIT_EVAL, batch_rows=4))]
    assert [list(b.pairs) for b in evals] == [held_out]


def test_from_dir_still_reads_rows_and_refuses_mixed_kinds(pairs, tmp_path):
    row = data_pb2.TokenRow(input_ids=[5, 6, 7], labels=[5, 6, 7], position_ids=[0, 1, 2])
    write_split(tmp_path / "rows", "train.binpb", rows=[row, row])
    source = InMemorySource.from_dir(tmp_path / "rows")
    assert type(source) is InMemorySource and not source.has_eval()
    write_split(tmp_path / "mixed", "train.binpb", pairs=pairs[0])
    write_split(tmp_path / "mixed", "eval.binpb", rows=[row])
    with pytest.raises(ValueError, match="different kinds"):
        InMemorySource.from_dir(tmp_path / "mixed")
    with pytest.raises(FileNotFoundError, match="train.binpb"):
        InMemorySource.from_dir(tmp_path / "nothing")


@pytest.mark.parametrize("stage", [tpb.STAGE_RM, tpb.STAGE_DPO])
def test_runner_trains_preference_jobs_from_a_file_address(tiny_random, pairs, tmp_path, stage):
    data = tmp_path / "data"
    write_split(data, "train.binpb", pairs=pairs[0])
    write_split(data, "eval.binpb", pairs=pairs[1])
    spec = job_spec(tiny_random, max_steps=3, per_device_batch_size=4, eval_steps=3)
    spec.stage = stage
    job = tmp_path / "job"
    job.mkdir()
    (job / runner.SPEC_FILE).write_bytes(spec.SerializeToString())
    training_logger = logging.getLogger("services.training")
    handlers = list(training_logger.handlers)
    try:
        assert runner.run(job, f"file://{data}") == 0
    finally:
        training_logger.handlers[:] = handlers  # the runner's event-log handler
    result = json.loads((job / runner.RESULT_FILE).read_text())
    assert (result["state"], result["step"]) == ("SUCCEEDED", 3), result
    assert (job / "adapters" / "v1" / "adapter_config.json").is_file()
    events = [json.loads(line) for line in (job / "events.jsonl").read_text().splitlines()]
    evals = [e["metrics"] for e in events if "eval_rewards/accuracy" in e.get("metrics", {}).get("extra", {})]  # fmt: skip
    assert [int(m.get("step", 0)) for m in evals] == [0, 3]  # before training, and at the end
    losses = [e["metrics"]["loss"] for e in events if "loss" in e.get("metrics", {})]
    assert len(losses) == 3 and all(0 < x < 10 for x in losses)
