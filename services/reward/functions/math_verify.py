"""``math_verify``: is the completion's final answer mathematically equal to the reference?

Built on Hugging Face's ``math-verify`` (PyPI): the answer is extracted from the completion,
parsed to a SymPy expression (LaTeX or plain), and compared with the parsed reference
symbolically (``\\frac{1}{2}`` = ``0.5`` = ``1/2``; ``2\\sqrt{2}`` = ``\\sqrt{8}``; ``x=2`` = ``2``;
sets compare as sets). Score 1.0 when equal, else 0.0; the detail says what was extracted.

Arguments (a job's ``args`` for the function):
- ``extractor``: ``"auto"`` (default: math-verify's own search: "final answer is", ``\\boxed``,
  then any LaTeX or expression, the last one winning), ``"boxed"`` (only ``\\boxed{...}``),
  ``"last_number"`` (the last number in the completion), or ``"regex"`` (group 1, else the whole
  match, of ``pattern``'s last match);
- ``pattern``: the pattern of ``extractor: regex`` (compiled with the ``regex`` package, with a
  timeout);
- ``timeout_s``: the time math-verify may spend parsing and comparing (default 5; it uses
  ``SIGALRM``, which works here because this runs in a pool worker's main thread; the pool's
  deadline bounds the whole call in any case);
- ``float_rounding``: decimal places numbers are rounded to before comparing (default 6).

It runs in the reward service's subprocess pool (``pool.py``): SymPy on adversarial input can
take unbounded time and memory, which must not stall the serving process.
"""

from __future__ import annotations

import math

import regex

EXTRACTORS = ("auto", "boxed", "last_number", "regex")
_NUMBER = regex.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_MAX_PATTERN = 512


def _configs(extractor: str):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    if extractor == "boxed":
        return [LatexExtractionConfig(try_extract_without_anchor=False, boxed_match_priority=0)]
    return [LatexExtractionConfig(), ExprExtractionConfig()]


def _candidate(completion: str, extractor: str, pattern: str, timeout_s: float) -> str | None:
    """The text the answer is parsed from (None: nothing to extract)."""
    if extractor in ("auto", "boxed"):
        return completion
    if extractor == "last_number":
        numbers = _NUMBER.findall(completion)
        return numbers[-1].replace(",", "") if numbers else None
    if not pattern or len(pattern) > _MAX_PATTERN:
        raise ValueError(f"extractor 'regex' needs a pattern of 1..{_MAX_PATTERN} characters")
    matches = list(regex.compile(pattern).finditer(completion, timeout=timeout_s))
    if not matches:
        return None
    last = matches[-1]
    return last.group(1) if last.re.groups >= 1 and last.group(1) is not None else last.group(0)


def _parse_reference(reference: str, seconds: int):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    gold = parse(reference, configs, parsing_timeout=seconds)
    if not gold:
        gold = parse(f"${reference}$", configs, parsing_timeout=seconds)
    return gold


def score(
    *,
    completion: str,
    reference: str,
    extractor: str = "auto",
    pattern: str = "",
    timeout_s: float = 5.0,
    float_rounding: float = 6,
) -> dict:
    from math_verify import parse, verify

    if extractor not in EXTRACTORS:
        raise ValueError(f"extractor {extractor!r}: use one of {', '.join(EXTRACTORS)}")
    if not reference.strip():
        raise ValueError("the item has no reference answer to compare with")
    seconds = max(1, math.ceil(float(timeout_s)))
    gold = _parse_reference(reference, seconds)
    if not gold:
        raise ValueError(f"the reference answer {reference!r:.200} does not parse as math")
    text = _candidate(completion, extractor, pattern, float(timeout_s))
    answer = parse(text, _configs(extractor), parsing_timeout=seconds) if text else []
    if not answer:
        return {"score": 0.0, "sub_scores": {"extracted": 0.0}, "detail": "no answer found"}
    equal = verify(gold, answer, float_rounding=int(float_rounding), timeout_seconds=seconds)
    shown = answer[-1] if isinstance(answer[-1], str) else str(answer[0])
    want = gold[-1] if isinstance(gold[-1], str) else str(gold[0])
    verdict = "equals" if equal else "differs from"
    return {
        "score": float(equal),
        "sub_scores": {"extracted": 1.0},
        "detail": f"answer {shown[:200]} {verdict} the reference {want[:200]}",
    }
