"""The reward-model scorer: the score is read at the last real token, for both folder formats,
with several adapters resident over one base.

References are independent of ``scorers/model.py``: transformers' own pooled logits (which find
the last non-pad token from ``pad_token_id``) and a hand computation (the backbone's last hidden
state at the last token of the sequence alone, dotted with the score weight). Tolerance 1e-5
(float32 on CPU; padding changes the reduction order inside attention only).
"""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from services.common.errors import FailedPrecondition, NotFound
from services.reward.scorers.model import (
    LocalAdapterDir,
    RewardModels,
    check_reward_adapter,
    pad_batch,
    score_at_last_token,
)

TOL = 1e-5
EOS, PAD = 1, 2
# Different lengths; the last one contains the pad id as a real token (it must still count).
SEQUENCES = [
    [0, 5, 6, 7, 8, EOS],
    [0, 9, EOS],
    [0, 11, 12, 13, 14, 15, 16, 17, 18, 19, EOS],
    [0, 21, PAD, 22, EOS],
]


def _merged(base, adapter) -> torch.nn.Module:
    """The adapter merged into a plain LlamaForSequenceClassification (a separate load)."""
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1)
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()


def _by_hand(model, seq: list[int]) -> float:
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([seq])).last_hidden_state  # (1, T, H)
        return float(hidden[0, -1] @ model.score.weight[0])


@pytest.fixture(scope="module")
def models(rm_folders) -> RewardModels:
    return RewardModels(
        reward_model=str(rm_folders.rm_a),
        base_model=str(rm_folders.base),
        adapters=LocalAdapterDir(rm_folders.adapter_dir),
        max_resident_adapters=2,
    )


def test_adapter_score_is_the_hidden_state_at_eos_times_the_score_weight(models, rm_folders):
    merged = _merged(rm_folders.base, rm_folders.rm_a)
    alone = [models.score([seq], None)[0] for seq in SEQUENCES]
    expected = [_by_hand(merged, seq) for seq in SEQUENCES]
    # merged weights (W + BA folded) sum in another order than the adapter's W x + B(A x):
    # scores of ~5 differ by ~1e-5 in float32, so this comparison is relative
    assert alone == pytest.approx(expected, rel=1e-5, abs=TOL)
    # transformers' pooling agrees where pad_token_id does not occur inside a sequence
    with torch.no_grad():
        hf = [float(merged(input_ids=torch.tensor([s])).logits) for s in SEQUENCES[:3]]
    assert alone[:3] == pytest.approx(hf, abs=TOL)
    assert len({round(s, 3) for s in alone}) == len(alone)  # a constant would pass nothing


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_and_batch_mates_do_not_change_a_score(models, side):
    alone = [models.score([seq], None)[0] for seq in SEQUENCES]
    model, _ = models._model_for(None)
    ids, mask = pad_batch(SEQUENCES, PAD, side)
    if side == "left":
        assert ids[1, 0] == PAD and ids[1, -1] == EOS
    else:
        assert ids[1, 0] == 0 and ids[1, -1] == PAD
    batched = score_at_last_token(model, ids, mask).tolist()
    assert batched == pytest.approx(alone, abs=TOL)
    # and in other company and order
    mixed = models.score([SEQUENCES[2], SEQUENCES[1]], None)
    assert mixed == pytest.approx([alone[2], alone[1]], abs=TOL)


def test_full_model_folder_scores_like_transformers(rm_folders):
    models = RewardModels(reward_model=str(rm_folders.rm_full))
    reference = AutoModelForSequenceClassification.from_pretrained(
        str(rm_folders.rm_full), num_labels=1
    ).eval()
    assert reference.config.pad_token_id == PAD
    batched = models.score(SEQUENCES, None)
    expected = [_by_hand(reference, seq) for seq in SEQUENCES]
    assert batched == pytest.approx(expected, abs=TOL)
    ids, mask = pad_batch(SEQUENCES[:3], PAD, "right")
    with torch.no_grad():
        hf = reference(input_ids=ids, attention_mask=mask).logits.squeeze(-1).tolist()
    assert batched[:3] == pytest.approx(hf, abs=TOL)


def test_several_adapters_resident_over_one_base(models, rm_folders):
    a = _merged(rm_folders.base, rm_folders.rm_a)
    b = _merged(rm_folders.base, rm_folders.rm_b)
    seq = SEQUENCES[0]
    expected_a, expected_b = _by_hand(a, seq), _by_hand(b, seq)
    assert abs(expected_a - expected_b) > 1e-2
    for _ in range(2):  # switching back and forth
        assert models.score([seq], ("rm-b", 1))[0] == pytest.approx(expected_b, abs=TOL)
        assert models.score([seq], ("rm-a", 1))[0] == pytest.approx(expected_a, abs=TOL)
        assert models.score([seq], None)[0] == pytest.approx(expected_a, abs=TOL)  # configured
    assert len(models.resident_adapters()) == 2


def test_least_recently_used_adapter_is_evicted_and_reloads(rm_folders):
    models = RewardModels(
        base_model=str(rm_folders.base),
        adapters=LocalAdapterDir(rm_folders.adapter_dir),
        max_resident_adapters=1,
    )
    seq = SEQUENCES[1]
    first_a = models.score([seq], ("rm-a", 1))
    b = models.score([seq], ("rm-b", 1))
    assert len(models.resident_adapters()) == 1
    assert models.score([seq], ("rm-a", 1)) == pytest.approx(first_a, abs=TOL)
    assert first_a != pytest.approx(b, abs=1e-3)


def test_missing_and_wrong_adapters_are_refused(models, rm_folders):
    with pytest.raises(NotFound, match="rm-a@7"):
        models.score([SEQUENCES[0]], ("rm-a", 7))
    with pytest.raises(FailedPrecondition, match="task_type is 'CAUSAL_LM'"):
        check_reward_adapter(rm_folders.causal_adapter)
    with pytest.raises(FailedPrecondition, match="base_model"):
        RewardModels(reward_model=str(rm_folders.rm_a))
    only_full = RewardModels(reward_model=str(rm_folders.rm_full))
    with pytest.raises(FailedPrecondition, match="adapter_dir"):
        RewardModels.scorer_for(only_full, ("rm-a", 1))
    with pytest.raises(FailedPrecondition, match="configure the reward service with reward_model"):
        RewardModels.scorer_for(None, None)


# --- where an item is read: services.common.scored_position ------------------------------------


@pytest.fixture(scope="module")
def end_tokens(rm_folders) -> tuple[int, int]:
    """(<|im_end|>, "\\n") of the tiny tokenizer: ChatML's end of turn and the text after it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(rm_folders.base))
    (newline,) = tokenizer("\n", add_special_tokens=False)["input_ids"]
    return tokenizer.convert_tokens_to_ids("<|im_end|>"), newline


def test_an_item_is_read_at_the_last_end_token_of_its_completion(models, end_tokens):
    """A data row's completion ``... <|im_end|> \\n`` and the rollout ``... <|im_end|>`` (the
    engine stops at and keeps its end token) score the same; a completion that ended by length
    (no end token) is read at its last token; an end token in the prompt does not count."""
    im_end, newline = end_tokens
    assert models.end_token_ids(None) >= {im_end, EOS}  # the base folder's generation config
    prompt = [0, 5, 6]
    row, rollout = [7, 8, im_end, newline], [7, 8, im_end]
    by_length, end_in_prompt = [7, 8, 9], ([0, im_end, 6], [7, 8])
    scores = models.score_responses([(prompt, row), (prompt, rollout), (prompt, by_length),
                                     end_in_prompt], None)  # fmt: skip
    read = models.score([prompt + rollout, prompt + by_length, [0, im_end, 6, 7, 8]], None)
    assert scores[0] == pytest.approx(scores[1], abs=TOL)
    assert scores[1:] == pytest.approx(read, abs=TOL)
    text_after = models.score([prompt + row], None)[0]  # where the old rule read it
    assert abs(text_after - scores[0]) > 1e-3  # the "\n" would have decided the score


def test_a_reward_model_is_read_at_the_end_tokens_it_records(rm_folders, tmp_path, end_tokens):
    import shutil

    from services.common.scored_position import SCORED_POSITION_FILE, end_ids_file

    im_end, newline = end_tokens
    recorded = tmp_path / "adapters" / "rm-b" / "1"
    shutil.copytree(rm_folders.rm_b, recorded)
    ((name, text),) = end_ids_file([newline]).items()  # a model trained to be read at "\n"
    (recorded / name).write_text(text)
    models = RewardModels(
        base_model=str(rm_folders.base), adapters=LocalAdapterDir(tmp_path / "adapters")
    )
    assert models.end_token_ids(("rm-b", 1)) == {newline}
    prompt, completion = [0, 5], [7, im_end, newline, 9]
    (score,) = models.score_responses([(prompt, completion)], ("rm-b", 1))
    assert score == pytest.approx(models.score([[0, 5, 7, im_end, newline]], ("rm-b", 1))[0])

    broken = tmp_path / "adapters" / "rm-a" / "1"
    shutil.copytree(rm_folders.rm_a, broken)
    (broken / SCORED_POSITION_FILE).write_text('{"end_token_ids": ["x"]}')
    with pytest.raises(FailedPrecondition, match="end_token_ids must be a list of token ids"):
        models.score_responses([(prompt, completion)], ("rm-a", 1))
