"""``math_verify`` on a table of equivalent and non-equivalent answers written here (each row:
completion, reference, extractor, expected score), called directly and through the reward
service's subprocess pool (same answers)."""

from __future__ import annotations

import pytest

from services.reward.functions import math_verify
from services.reward.functions.pool import SubprocessPool
from services.reward.functions.registry import MATH_VERIFY_TARGET, POOL_PRELOAD

EQUIVALENT = [
    ("So the answer is \\boxed{\\frac{1}{2}}.", "0.5", "auto"),  # fraction = decimal
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", "auto"),  # simplified radical
    ("We get \\boxed{x^2+2x+1}", "(x+1)^2", "auto"),  # expanded polynomial
    ("\\boxed{\\{1,2\\}}", "\\{2,1\\}", "auto"),  # sets ignore order
    ("\\boxed{50\\%}", "0.5", "auto"),  # percent
    ("so x = 2", "2", "auto"),  # an equation's right-hand side
    ("The result is 12.", "12", "auto"),
    ("1/2", "\\frac12", "auto"),
    ("first 7, then \\boxed{8}", "8", "boxed"),  # only the boxed answer counts
    ("I tried 3 and 5; it is 1,000 in the end", "1000", "last_number"),  # thousands separator
    ("ANSWER=42 (checked)", "42", "regex"),
]
NOT_EQUIVALENT = [
    ("I think 13", "12", "auto"),
    ("\\boxed{0.333}", "\\frac{1}{3}", "auto"),  # rounded to 6 places it differs
    ("\\boxed{\\pi}", "3.14159", "auto"),
    ("\\boxed{2}", "-2", "auto"),  # sign
    ("answer: 7, no box", "7", "boxed"),  # no \boxed: nothing extracted
    ("it is 12 or maybe 13", "12", "last_number"),  # the last number is the answer
    ("no numbers here", "4", "last_number"),
]


def _args(extractor: str) -> dict:
    return {
        "extractor": extractor,
        **({"pattern": r"ANSWER=(\d+)"} if extractor == "regex" else {}),
    }


@pytest.mark.parametrize(("completion", "reference", "extractor"), EQUIVALENT)
def test_equivalent_answers_score_1(completion, reference, extractor):
    got = math_verify.score(completion=completion, reference=reference, **_args(extractor))
    assert got["score"] == 1.0, got["detail"]


@pytest.mark.parametrize(("completion", "reference", "extractor"), NOT_EQUIVALENT)
def test_different_answers_score_0(completion, reference, extractor):
    got = math_verify.score(completion=completion, reference=reference, **_args(extractor))
    assert got["score"] == 0.0, got["detail"]


def test_nothing_extracted_is_said_and_a_bad_reference_or_extractor_raises():
    got = math_verify.score(completion="no numbers", reference="4", extractor="last_number")
    assert got == {"score": 0.0, "sub_scores": {"extracted": 0.0}, "detail": "no answer found"}
    with pytest.raises(ValueError, match="no reference answer"):
        math_verify.score(completion="1", reference=" ")
    with pytest.raises(ValueError, match="extractor 'boxd'"):
        math_verify.score(completion="1", reference="1", extractor="boxd")


def test_the_pool_gives_the_same_answers_as_a_direct_call():
    pool = SubprocessPool(1, preload=POOL_PRELOAD)
    try:
        for completion, reference, extractor in EQUIVALENT + NOT_EQUIVALENT:
            payload = {"completion": completion, "reference": reference,
                       "args": _args(extractor)}  # fmt: skip
            direct = math_verify.score(
                completion=completion, reference=reference, **_args(extractor)
            )
            assert pool.call(MATH_VERIFY_TARGET, payload, 10.0) == direct
    finally:
        pool.close()
