"""Rule scorers and the scorer table: names map to scorers by an explicit table, options are
data, and untrusted patterns are bounded (length cap, compile errors, match timeout)."""

from __future__ import annotations

import time

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.reward import scorers
from services.reward.job_settings import JobSettings
from services.reward.scorers import ScoreInput, ScorerContext
from services.reward.scorers.rules import PatternLimits, compile_pattern, is_json_object


def build(name: str, **settings):
    return scorers.build(name, ScorerContext(settings=JobSettings(**settings)))


def items(*completions: str, reference: str = "") -> list[ScoreInput]:
    return [ScoreInput(completion_text=c, reference_answer=reference) for c in completions]


def test_table_lists_the_scorers_and_unknown_names_are_invalid_argument_with_the_list():
    assert scorers.valid_names() == [
        "contains_answer",
        "exact_match",
        "format_json",
        "regex",
        "reward_model",
    ]
    for name in ["os.system", "services.reward.scorers.rules.ExactMatch", "", "Exact_Match"]:
        with pytest.raises(InvalidArgument) as err:
            build(name)
        assert err.value.reason == "UNKNOWN_SCORER"
        assert err.value.violations[0].field == "scorer"
        assert "valid scorers: contains_answer, exact_match, format_json, regex" in str(err.value)


def test_exact_match_folds_whitespace_and_optionally_case():
    scorer = build("exact_match")
    got = scorer.score(items("42", "  42\n", "4 2", "The answer is 42", "", reference=" 42 "))
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert build("exact_match").score(items("Paris", reference="paris")) == [0.0]
    assert build("exact_match", ignore_case=True).score(items("Paris", reference="paris")) == [1.0]


def test_contains_answer():
    scorer = build("contains_answer")
    got = scorer.score(items("so it is 42.", "it is 24", "42", reference="42"))
    assert got == [1.0, 0.0, 1.0]


def test_reference_scorers_name_every_item_without_a_reference():
    batch = [
        ScoreInput(completion_text="a", reference_answer="a"),
        ScoreInput(completion_text="b"),
        ScoreInput(completion_text="c", reference_answer="  "),
    ]
    with pytest.raises(InvalidArgument) as err:
        build("exact_match").score(batch)
    assert [v.field for v in err.value.violations] == [
        "items[1].reference_answer",
        "items[2].reference_answer",
    ]


def test_regex_scorer_uses_the_job_pattern():
    scorer = build("regex", regex_pattern=r"answer is \d+$")
    assert scorer.score(items("the answer is 12", "the answer is twelve", "")) == [1.0, 0.0, 0.0]
    with pytest.raises(FailedPrecondition, match="set regex_pattern"):
        build("regex")


def test_catastrophic_pattern_times_out_as_invalid_argument():
    ctx = ScorerContext(settings=JobSettings(regex_pattern=r"(a|aa)+$"), regex_timeout_ms=50)
    scorer = scorers.build("regex", ctx)
    started = time.monotonic()
    with pytest.raises(InvalidArgument) as err:
        scorer.score(items("fine", "a" * 60 + "b"))
    assert time.monotonic() - started < 2.0
    assert err.value.reason == "PATTERN_TIMEOUT"
    assert err.value.violations[0].field == "items[1].completion_text"


def test_long_and_broken_patterns_are_invalid_argument():
    limits = PatternLimits(max_chars=20)
    with pytest.raises(InvalidArgument) as err:
        compile_pattern("a" * 21, "jobs.x.regex_pattern", limits)
    assert err.value.reason == "PATTERN_TOO_LONG"
    assert err.value.violations[0].field == "jobs.x.regex_pattern"
    for bad in ["(unclosed", "a{2,1}", "*"]:
        with pytest.raises(InvalidArgument) as err:
            compile_pattern(bad, "regex_pattern", limits)
        assert err.value.reason == "BAD_PATTERN"


def test_format_json_accepts_objects_only():
    assert is_json_object('{"a": 1}')
    assert is_json_object('  ```json\n{"tool": "x", "args": {}}\n```  ')
    assert not is_json_object("[1, 2]")
    assert not is_json_object('{"a": 1')
    assert not is_json_object("not json")
    assert not is_json_object("")
    assert build("format_json").score(items('{"a": 1}', "{}x")) == [1.0, 0.0]


def test_rule_scorers_refuse_a_reward_adapter():
    ctx = ScorerContext(settings=JobSettings(), adapter=("rm", 1))
    with pytest.raises(InvalidArgument) as err:
        scorers.build("exact_match", ctx, field_prefix="task.")
    assert err.value.violations[0].field == "task.reward_adapter"
