"""The PPO recipe logs each reward function of a ``functions`` scorer as ``reward/<label>`` (and
its sub-scores as ``reward/<label>/<name>``): the step's mean over its scored rollouts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from llamafleet.reward.v1 import reward_pb2

from services.training.recipes.ppo import reward_components


def received(*parts: list[tuple[str, float, dict]]):
    out = []
    for row in parts:
        scored = reward_pb2.ScoredRollout(
            components=[reward_pb2.RewardComponent(label=label, name=label, weight=1.0,
                                                   score=score, sub_scores=subs)
                        for label, score, subs in row]
        )  # fmt: skip
        out.append(SimpleNamespace(scored=scored))
    return out


def test_each_function_and_sub_score_is_averaged_over_the_step():
    got = reward_components(received(
        [("math", 1.0, {"extracted": 1.0}), ("json", 0.0, {})],
        [("math", 0.0, {"extracted": 0.0}), ("json", 1.0, {})],
        [("math", 1.0, {"extracted": 1.0}), ("json", 1.0, {})],
        [("mean", 4.0, {})],  # a label that would shadow reward/mean is renamed
    ))  # fmt: skip
    assert got == {
        "reward/math": pytest.approx(2 / 3), "reward/math/extracted": pytest.approx(2 / 3),
        "reward/json": pytest.approx(2 / 3), "reward/mean_fn": 4.0,
    }  # fmt: skip
    assert reward_components(received([], [])) == {}  # a plain scorer: no components
