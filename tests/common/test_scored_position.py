"""The scored-position rule (``services.common.scored_position``), by hand.

A sequence is scored at the last end token of its response; a response without one (a rollout
that ended by length) at the sequence's last token; end tokens before the response (in the
prompt) never count.
"""

from __future__ import annotations

import json

import pytest

from services.common.scored_position import (
    SCORED_POSITION_FILE,
    end_ids_file,
    folder_eos_ids,
    read_end_ids,
    scored_index,
)

END, NL, EOS = 7, 8, 1


@pytest.mark.parametrize(
    ("ids", "start", "expected", "why"),
    [
        ([0, 5, 6, 9, END, NL], 3, 4, "a data row: ChatML's newline after the end of turn"),
        ([0, 5, 6, 9, END], 3, 4, "a rollout: the engine stops at the end token and keeps it"),
        ([0, 5, 6, 9, 9, 9], 3, 5, "ended by length: no end token, the last token"),
        ([0, END, 6, 9, 9], 3, 4, "an end token in the prompt does not count"),
        ([0, 5, 6, 9, END, 9, EOS, NL, NL], 3, 6, "the last end token of the response"),
        ([0, 5, 6], 3, 2, "an empty response: the last token"),
    ],
)
def test_the_rule(ids, start, expected, why):
    assert scored_index(ids, start, {END, EOS}) == expected, why


def test_no_end_tokens_means_the_last_token_and_an_empty_sequence_is_refused():
    assert scored_index([0, END, NL], 1, frozenset()) == 2
    with pytest.raises(ValueError, match="empty sequence"):
        scored_index([], 0, {END})


def test_a_folder_declares_its_eos_ids_in_config_and_generation_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 2]}))
    assert folder_eos_ids(tmp_path) == {2, 7}
    (tmp_path / "config.json").write_text(
        json.dumps({"text_config": {"eos_token_id": 9}, "eos_token_id": None})
    )
    assert folder_eos_ids(tmp_path) == {2, 7, 9}
    assert folder_eos_ids(tmp_path / "missing") == frozenset()


def test_the_recorded_end_tokens_round_trip_and_a_bad_file_is_refused(tmp_path):
    assert read_end_ids(tmp_path) is None  # a model trained elsewhere records none
    ((name, text),) = end_ids_file([NL, END, END]).items()
    assert name == SCORED_POSITION_FILE
    (tmp_path / name).write_text(text)
    assert read_end_ids(tmp_path) == {END, NL}
    assert "last end token" in json.loads(text)["rule"]
    for bad in ("not json", '{"ids": [1]}', '{"end_token_ids": [true]}', '{"end_token_ids": 3}'):
        (tmp_path / name).write_text(bad)
        with pytest.raises(ValueError, match=SCORED_POSITION_FILE):
            read_end_ids(tmp_path)
