"""Incremental detokenization with stop strings (shared by both engines), on a toy decoder
where token id i decodes to the i-th piece."""

from __future__ import annotations

from services.rollout.engines import TextTracker

PIECES = ["Hel", "lo", " wo", "rld", " EN", "D!", "\ufffd", "é"]


def decode(ids) -> str:
    text = "".join(PIECES[i] for i in ids)
    return text.replace("\ufffdé", "é")  # an incomplete character completed by the next token


def stream(ids, stop=()):
    tracker, out, stopped = TextTracker(decode, stop), [], False
    for k in range(1, len(ids) + 1):
        new, stopped = tracker.update(ids[:k])
        out.append(new)
        if stopped:
            break
    if not stopped:
        out.append(tracker.flush())
    return out, stopped, tracker.text


def test_plain_text_streams_as_it_completes():
    out, stopped, text = stream([0, 1, 2, 3])
    assert out[:4] == ["Hel", "lo", " wo", "rld"] and not stopped and text == "Hello world"


def test_stop_string_across_tokens_is_cut_and_never_streamed():
    out, stopped, text = stream([0, 1, 2, 3, 4, 5], stop=("END",))
    assert stopped and text == "Hello world "
    assert "".join(out) == "Hello world "
    assert not any("E" in piece for piece in out)


def test_prefix_of_a_stop_string_is_held_back_then_released():
    out, stopped, _ = stream([0, 1, 2], stop=("lo wx",))
    assert not stopped
    # a trailing "l", then "lo", could start the stop string: held back until ruled out
    assert out[:2] == ["He", "l"]
    assert "".join(out) == "Hello wo"


def test_incomplete_character_waits_for_its_rest():
    out, _, text = stream([0, 6, 7])
    assert out[1] == "" and out[2] == "é" and text == "Helé"
