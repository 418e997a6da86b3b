"""The ``rm`` recipe: a reward model that learns a preference, saved as the reward service loads it.

The synthetic preference task (``test_dpo.preference_pairs``): for "Increment the digits of
3819", "4920" is preferred to "3819" (the digits copied back). Held-out pairs use numbers never
seen in training. Both the LoRA adapter form (SEQ_CLS + ``score`` in ``modules_to_save``) and the
full model form are loaded by ``services.reward.scorers.model.RewardModels`` and must score as the
trainer does.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from llamafleet.data.v1 import data_pb2
from safetensors import safe_open
from synthetic import digit_task, make_settings
from test_dpo import preference_pairs

from services.reward.scorers.model import RewardModels
from services.training.loop.batches import InMemoryPairSource
from services.training.recipes import rm
from services.training.spec.settings import LoraSettings


@pytest.fixture(scope="module")
def task(tokenizer):
    held_out = digit_task(11, 40)
    train = digit_task(12, 400, exclude={p.split()[-1] for p, _ in held_out})
    return preference_pairs(tokenizer, train), preference_pairs(tokenizer, held_out)


def response(row: data_pb2.TokenRow) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of a row: the completion starts at the first trained label."""
    start = next(i for i, y in enumerate(row.labels) if y != -100)
    return list(row.input_ids[:start]), list(row.input_ids[start:])


def served_scores(models: RewardModels, pairs, adapter=None) -> list[float]:
    """The reward service's scores of the chosen rows, then of the rejected rows."""
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    return models.score_responses([response(r) for r in rows], adapter)


def accuracy(models: RewardModels, pairs, adapter=None) -> float:
    scores = served_scores(models, pairs, adapter)
    chosen, rejected = scores[: len(pairs)], scores[len(pairs) :]
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs)


def trainer_scores(trainer, pairs) -> list[float]:
    trainer.model.eval()
    with torch.no_grad():
        x = trainer._collate(data_pb2.Batch(pairs=pairs))
        return trainer.loss.objective.scores(trainer.models, x).tolist()


@pytest.mark.slow
def test_lora_reward_model_learns_and_the_reward_service_serves_it(pretrained_base, task, tmp_path):
    train, held_out = task
    settings = make_settings(
        pretrained_base,
        recipe="rm",
        method="lora",
        lora=LoraSettings(rank=16, alpha=32.0),
        learning_rate=1e-3,
        lr_scheduler="linear",
        warmup_steps=10,
        max_steps=300,
        batch_rows=8,
        eval_steps=300,
        save_steps=300,
    )
    trainer = rm.build_trainer(settings, InMemoryPairSource(train, held_out), tmp_path)
    trainer.setup()
    assert trainer.model.peft_config["default"].task_type == "SEQ_CLS"
    before = trainer.evaluate()
    before_accuracy = trainer.last_eval_metrics["eval_rewards/accuracy"]
    started = time.perf_counter()
    result = trainer.train()
    trainer.save_outputs()
    after = trainer.last_eval_metrics
    print(
        f"\nRM (LoRA): held-out accuracy {before_accuracy:.2f} -> "
        f"{after['eval_rewards/accuracy']:.2f}, margin {after['eval_rewards/margin']:.2f}, "
        f"loss {before:.3f} -> {after['eval_loss']:.3f} in {time.perf_counter() - started:.0f}s"
    )
    assert result.state == "SUCCEEDED"
    assert 0.25 <= before_accuracy <= 0.75  # a fresh score head: about chance
    assert after["eval_rewards/accuracy"] >= 0.95
    assert after["eval_rewards/margin"] > 0

    adapter = tmp_path / "output" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
        assert any(".score." in f".{k}" for k in f.keys())
    assert (tmp_path / "adapters" / "v1" / "adapter_config.json").is_file()  # published

    served = RewardModels(reward_model=str(adapter), base_model=str(pretrained_base))
    expected = trainer_scores(trainer, held_out[:6])
    torch.testing.assert_close(
        torch.tensor(served_scores(served, held_out[:6])), torch.tensor(expected), rtol=0, atol=1e-4
    )
    assert accuracy(served, held_out) >= 0.95


def test_full_reward_model_is_saved_as_a_sequence_classifier(tiny_random, tokenizer, tmp_path):
    pairs = preference_pairs(tokenizer, digit_task(13, 8))
    settings = make_settings(tiny_random, recipe="rm", max_steps=3, batch_rows=4, logging_steps=1)
    trainer = rm.build_trainer(settings, InMemoryPairSource(pairs), tmp_path)
    trainer.setup()
    head = trainer.model.score.weight.detach().clone()
    backbone = trainer.model.model.layers[0].mlp.up_proj.weight.detach().clone()
    result = trainer.train()
    trainer.save_outputs()
    assert result.state == "SUCCEEDED"
    assert all(0 < loss < 10 for _, loss in trainer.history)  # finite
    assert not torch.equal(trainer.model.score.weight, head)  # the head trained
    assert not torch.equal(trainer.model.model.layers[0].mlp.up_proj.weight, backbone)  # full FT

    folder = tmp_path / "model"
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["pad_token_id"] == tokenizer.pad_token_id
    served = RewardModels(reward_model=str(folder))
    assert served.end_token_ids(None) == trainer.loss.end_ids  # recorded beside the model
    expected = trainer_scores(trainer, pairs[:3])
    torch.testing.assert_close(
        torch.tensor(served_scores(served, pairs[:3])), torch.tensor(expected), rtol=0, atol=1e-4
    )


def test_score_is_read_at_the_last_real_token_not_padding(tiny_random, tokenizer, tmp_path):
    pairs = preference_pairs(tokenizer, digit_task(14, 4), rejected=lambda p, a: a + " " + a)
    settings = make_settings(tiny_random, recipe="rm", attention="eager", max_steps=1)
    trainer = rm.build_trainer(settings, InMemoryPairSource(pairs), tmp_path)
    trainer.setup()
    padded = trainer_scores(trainer, pairs)  # eager: rows right-padded to the longest
    alone = [trainer_scores(trainer, [p]) for p in pairs]  # no padding at all
    b = len(pairs)
    for i, (c, r) in enumerate(alone):
        assert abs(padded[i] - c) < 1e-4 and abs(padded[b + i] - r) < 1e-4


def test_a_row_is_scored_at_its_end_token_not_the_template_text_after_it(
    tiny_random, tokenizer, tmp_path
):
    """The tiny chat template ends a turn ``<|im_end|> \\n``: the recipe reads each row at its
    ``<|im_end|>`` (the end tokens of the base folder and its tokenizer, or the data's), exactly
    the score of the row cut after it, and saves that end-token set beside the model."""
    from services.common.scored_position import SCORED_POSITION_FILE, read_end_ids

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    (newline,) = tokenizer("\n", add_special_tokens=False)["input_ids"]
    pairs = preference_pairs(tokenizer, digit_task(15, 3))
    settings = make_settings(tiny_random, recipe="rm", max_steps=1)
    trainer = rm.build_trainer(settings, InMemoryPairSource(pairs), tmp_path / "a")
    trainer.setup()
    assert {im_end, tokenizer.eos_token_id} <= trainer.loss.end_ids
    assert newline not in trainer.loss.end_ids
    scores = trainer_scores(trainer, pairs)
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    assert all(list(r.input_ids[-2:]) == [im_end, newline] for r in rows)
    cut = [data_pb2.PreferencePair(chosen=_cut(p.chosen), rejected=_cut(p.rejected)) for p in pairs]
    trainer.loss.end_ids = frozenset()  # read at the last token: the cut rows end at <|im_end|>
    assert scores == pytest.approx(trainer_scores(trainer, cut), abs=1e-5)
    at_newline = trainer_scores(trainer, pairs)  # the old reading, at the "\n"
    assert max(abs(a - b) for a, b in zip(scores, at_newline, strict=True)) > 1e-3

    # the data's end tokens are used: a source whose template ended turns with "\n" reads there
    source = InMemoryPairSource(pairs, end_token_ids=[newline])
    other = rm.build_trainer(settings, source, tmp_path / "b")
    assert newline in other.loss.end_ids
    other.setup()
    assert trainer_scores(other, pairs) == pytest.approx(at_newline, abs=1e-5)
    assert other.train().state == "SUCCEEDED"
    other.save_outputs()
    assert read_end_ids(tmp_path / "b" / "model") == other.loss.end_ids
    assert (tmp_path / "b" / "model" / SCORED_POSITION_FILE).is_file()


def _cut(row: data_pb2.TokenRow) -> data_pb2.TokenRow:
    """The row without its last token (the template's "\\n" after <|im_end|>)."""
    n = len(row.input_ids) - 1
    return data_pb2.TokenRow(
        input_ids=row.input_ids[:n], labels=row.labels[:n], position_ids=range(n),
        cu_seqlens=[0, n], example_ids=row.example_ids,
    )  # fmt: skip
