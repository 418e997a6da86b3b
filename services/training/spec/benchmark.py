"""What a benchmark's options may be, for ``RunBenchmark`` and a job's ``spec.eval_benchmark``
alike (no files read: ``evaluation.choices`` reads the benchmark; its split folders and prompt
templates are keyed by ``SPLITS`` and ``LANGS``)."""

from __future__ import annotations

import re

SPLITS = ("validation", "test")
LANGS = ("en", "zh")
MAX_N_SHOT = 25
TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def option_violations(task: str, split: str, n_shot: int, lang: str) -> list[tuple[str, str]]:
    """``(field, what is wrong)`` for each option that is wrong (``split``, ``n_shot`` and
    ``lang`` already defaulted)."""
    bad = []
    if not TASK_NAME.match(task):
        bad.append(("task", "a folder name under task_dir ([A-Za-z0-9_.-], e.g. mmlu)"))
    if split not in SPLITS:
        bad.append(("split", f"one of {', '.join(SPLITS)}"))
    if not 0 <= n_shot <= MAX_N_SHOT:
        bad.append(("n_shot", f"must be in 0..{MAX_N_SHOT}"))
    if lang not in LANGS:
        bad.append(("lang", f"one of {', '.join(LANGS)}"))
    return bad
