"""Reward functions an owner might register, used by the reward-function tests (through the
functions_file's ``python_path``; never imported by the serving process)."""

import os
import time


def length_score(*, completion: str, target: float = 10.0) -> float:
    """Closer to ``target`` characters is better: -|len - target| / target."""
    return -abs(len(completion) - target) / target


def keyword_hits(completion, reference, *, keywords=()):
    """(fraction of keywords present, {"hits": count, "ref_in": reference in completion})."""
    hits = sum(1 for k in keywords if k in completion)
    return hits / max(len(keywords), 1), {"hits": hits, "ref_in": float(reference in completion)}


def uses_ids(*, prompt_ids, completion_ids, prompt):
    return {"score": len(completion_ids) - len(prompt_ids), "detail": f"prompt {prompt!r}"}


def raises(completion):
    if "boom" in completion:
        raise ValueError(f"cannot score {completion!r}")
    return 1.0


def spins(completion):
    if "spin" in completion:
        while True:
            pass
    return 1.0


def sleeps(completion, seconds: float = 0.0):
    time.sleep(seconds)
    return 1.0


def exits(completion):
    os._exit(3)


def not_a_number(completion):
    return "high"


def pid(completion):
    return float(os.getpid())
