"""The planner publishes each prompt's samples as one group task (``num_samples``); the rollout
worker's ``sample_ids`` expand it to exactly the sample ids the planner waits for."""

from __future__ import annotations

import pytest
from inline_fleet import PromptSource, PublishOnly
from llamafleet.data.v1 import data_pb2
from llamafleet.rollout.v1 import rollout_pb2
from synthetic import make_settings

from services.rollout.worker import sample_ids
from services.training.ppo.exchange import task_id
from services.training.ppo.rollouts import MAX_GROUP, RolloutPlanner, group_size
from services.training.spec.settings import PpoSettings


def planner_for(tmp_path, samples: int, prompts: int = 3, seed: int | None = 11):
    sampling = rollout_pb2.SamplingParams(max_tokens=4)
    if seed is not None:
        sampling.seed = seed
    ppo = PpoSettings(
        sampling=sampling.SerializeToString(), samples_per_prompt=samples,
        rollout_batch_size=prompts,
    )  # fmt: skip
    settings = make_settings(tmp_path, recipe="ppo", batch_rows=prompts, ppo=ppo)
    rows = [data_pb2.PromptExample(example_id=f"p{i}", prompt_ids=[7, i]) for i in range(prompts)]
    exchange = PublishOnly()
    planner = RolloutPlanner(
        settings, PromptSource(rows), exchange, job_id="job", batches_per_step=1, total_steps=2
    )
    planner.open(0, [], fresh=True)
    return planner, exchange


@pytest.mark.parametrize(
    ("samples", "size"), [(1, 1), (2, 2), (8, 8), (16, 16), (32, 16), (24, 12), (17, 1)]
)
def test_group_size_is_the_largest_equal_split_within_max_group(samples, size):
    assert group_size(samples) == size
    assert samples % size == 0 and size <= MAX_GROUP


@pytest.mark.parametrize("samples", [1, 4, 32])
def test_group_tasks_expand_to_exactly_the_expected_sample_ids(tmp_path, samples):
    planner, exchange = planner_for(tmp_path, samples)
    planner.admit(0, adapter_version=3)
    size = group_size(samples)
    tasks = exchange.tasks
    assert len(tasks) == 3 * samples // size
    assert {t.num_samples for t in tasks} == {size if size > 1 else 0}
    expanded = [i for t in tasks for i, _ in sample_ids(t, t.num_samples or 1)]
    assert expanded == planner._expected(0)
    assert expanded == [task_id("job", 3, 0, i, j) for i in range(3) for j in range(samples)]
    # sample indices follow the ids; "published" counts samples, not tasks
    indices = [k for t in tasks for _, k in sample_ids(t, t.num_samples or 1)]
    assert indices == [j for _ in range(3) for j in range(samples)]
    assert planner.counts.published == 3 * samples
    # each task has its own reproducible seed (the engine draws the group from it)
    seeds = [t.sampling.seed for t in tasks]
    assert len(set(seeds)) == len(seeds)
    again, exchange2 = planner_for(tmp_path, samples)
    again.admit(0, adapter_version=3)
    assert [t.sampling.seed for t in exchange2.tasks] == seeds


def test_a_group_task_is_published_once_however_often_admitted(tmp_path):
    planner, exchange = planner_for(tmp_path, 4, seed=None)
    planner.admit(0, adapter_version=1)
    planner.admit(0, adapter_version=1)
    assert len(exchange.tasks) == 3 and planner.counts.published == 12
    assert not any(t.sampling.HasField("seed") for t in exchange.tasks)
