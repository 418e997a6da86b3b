"""PPO ends each episode where its rollout is scored (``services.common.scored_position``), and
asks the engines to stop there: the template's end-of-turn tokens and the base model's eos."""

from __future__ import annotations

import pytest
import torch
from inline_fleet import PromptSource, PublishOnly
from llamafleet.data.v1 import data_pb2
from llamafleet.reward.v1 import reward_pb2
from llamafleet.rollout.v1 import rollout_pb2
from synthetic import make_settings

from services.training.losses.ppo import kl_penalised_rewards
from services.training.ppo.batch import collate_rollouts
from services.training.ppo.exchange import Received
from services.training.ppo.rollouts import RolloutPlanner
from services.training.spec.settings import PpoSettings


def test_an_episode_ends_at_the_token_its_rollout_is_scored_at():
    """The score goes on the token the reward model read (``services.common.scored_position``):
    a rollout that stopped at its end token (the engines keep it) there; one that ended by length
    on its last token; one whose engine went on after an end token (template text) at that end
    token, the rest dropped from the episode."""
    END, NL, PAD = 3, 4, 0

    def received(completion: list[int], reason) -> Received:
        task = rollout_pb2.RolloutTask(item_id=f"j:1:0:0:{len(completion)}", prompt_ids=[7, 8])
        rollout = rollout_pb2.Rollout(
            task=task, completion_ids=completion, finish_reason=reason,
            logprobs=[-0.1 * (i + 1) for i in range(len(completion))],
        )  # fmt: skip
        scored = reward_pb2.ScoredRollout(rollout=rollout, raw_score=1.0, normalized_score=1.0)
        return Received("0-1", task.item_id, scored)

    stop, length = rollout_pb2.FINISH_REASON_STOP, rollout_pb2.FINISH_REASON_LENGTH
    batch = [received([9, 10, END], stop), received([9, 10, 11], length),
             received([9, END, NL, 12, 13], length)]  # fmt: skip
    x = collate_rollouts(batch, PAD, end_ids={END})
    assert x.mask.tolist() == [[1, 1, 1], [1, 1, 1], [1, 1, 0]]
    assert x.input_ids.tolist() == [[7, 8, 9, 10, END], [7, 8, 9, 10, 11], [7, 8, 9, END, PAD]]
    assert x.engine_logprobs[2].tolist() == pytest.approx([-0.1, -0.2, 0.0])
    zeros = torch.zeros_like(x.mask)
    rewards, _ = kl_penalised_rewards(x.scores, zeros, zeros, x.mask, kl_coef=0.1)
    assert rewards.tolist() == [[0, 0, 1], [0, 0, 1], [0, 1, 0]]
    # without end tokens every completion is whole (the score on its last token)
    assert collate_rollouts(batch, PAD).mask.sum(dim=1).tolist() == [3, 3, 5]


def test_tasks_ask_the_engines_to_stop_at_the_end_tokens(tmp_path):
    sampling = rollout_pb2.SamplingParams(max_tokens=4, stop_token_ids=[1])
    ppo = PpoSettings(
        sampling=sampling.SerializeToString(), samples_per_prompt=2, rollout_batch_size=2
    )
    settings = make_settings(tmp_path, recipe="ppo", batch_rows=2, ppo=ppo)
    prompts = [data_pb2.PromptExample(example_id=f"p{i}", prompt_ids=[7, i]) for i in range(2)]
    exchange = PublishOnly()
    planner = RolloutPlanner(
        settings, PromptSource(prompts), exchange, job_id="j", batches_per_step=1,
        total_steps=1, stop_token_ids={5, 1, 3},
    )  # fmt: skip
    planner.open(0, [], fresh=True)
    planner.admit(0, adapter_version=1)
    assert len(exchange.tasks) == 2  # one group task (num_samples 2) per prompt
    assert {t.num_samples for t in exchange.tasks} == {2}
    assert {tuple(t.sampling.stop_token_ids) for t in exchange.tasks} == {(1, 3, 5)}
    assert {t.sampling.max_tokens for t in exchange.tasks} == {4}
