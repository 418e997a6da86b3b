"""The worker-process side of a reward-function call: import, adapt the arguments, check the result.

Runs inside a ``pool.SubprocessPool`` worker, never in the serving process. ``serve`` reads one
JSON call at a time from the pool's pipe, resolves the target (``module:attr``, imported once and
cached), calls it and writes one JSON reply.

The call convention every reward function follows (README "Reward functions")::

    def my_reward(*, prompt: str, completion: str, prompt_ids: list[int],
                  completion_ids: list[int], reference: str, **args) -> float | tuple | dict

A function receives those of the standard keywords it declares (all of them when it takes
``**kwargs``), plus the job's ``args`` for that function. It returns a number (``bool`` counts),
``(score, {"name": sub_score, ...})``, or ``{"score": ..., "sub_scores": {...}, "detail": "..."}``.
Anything else, or a score that is not finite, fails the call with a message saying what came back.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import sys
import traceback
from collections.abc import Callable
from typing import Any

STANDARD = ("prompt", "completion", "prompt_ids", "completion_ids", "reference")
_MAX_DETAIL = 2000
_MAX_SUB_SCORES = 32
_cache: dict[str, tuple[Callable, frozenset[str] | None]] = {}


def resolve(target: str) -> tuple[Callable, frozenset[str] | None]:
    """``module:attr.attr`` -> (callable, the keywords it accepts; None = any)."""
    if target in _cache:
        return _cache[target]
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{target!r} is not of the form module:function")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target} is a {type(obj).__name__}, not a function")
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        accepted = None
    else:
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            accepted = None
        else:
            accepted = frozenset(
                p.name
                for p in params
                if p.kind
                in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            )
    _cache[target] = (obj, accepted)
    return obj, accepted


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, int | float) and not hasattr(value, "__float__"):
        raise TypeError(f"{what} is a {type(value).__name__} ({value!r:.80}), not a number")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{what} is {out}, not a finite number")
    return out


def coerce(value: Any) -> dict:
    """A function's return value as ``{"score", "sub_scores", "detail"}`` (plain JSON)."""
    sub: Any = {}
    detail: Any = ""
    if isinstance(value, dict):
        if "score" not in value:
            raise TypeError(f"returned a dict without 'score' (keys: {sorted(value)[:8]})")
        score, sub, detail = value["score"], value.get("sub_scores") or {}, value.get("detail", "")
    elif isinstance(value, tuple | list):
        if len(value) != 2 or not isinstance(value[1], dict):
            raise TypeError("returned a sequence; expected (score, {name: sub_score})")
        score, sub = value
    else:
        score = value
    if not isinstance(sub, dict) or len(sub) > _MAX_SUB_SCORES:
        raise TypeError(f"sub-scores must be a dict of at most {_MAX_SUB_SCORES} name: number")
    return {
        "score": _number(score, "the score"),
        "sub_scores": {str(k): _number(v, f"sub-score {k!r}") for k, v in sub.items()},
        "detail": str(detail)[:_MAX_DETAIL],
    }


def call(target: str, payload: dict) -> dict:
    """Run ``target`` with the standard fields of ``payload`` and its ``args``."""
    fn, accepted = resolve(target)
    args = dict(payload.get("args") or {})
    clash = sorted(set(args) & set(STANDARD))
    if clash:
        raise TypeError(f"job arguments may not be named {', '.join(clash)} (reserved)")
    kwargs = {k: payload.get(k) for k in STANDARD}
    kwargs.update(args)
    if accepted is not None:
        unknown = sorted(set(args) - accepted)
        if unknown:
            raise TypeError(f"takes no argument {', '.join(map(repr, unknown))}")
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return coerce(fn(**kwargs))


def _limit_memory(mb: int) -> None:
    if mb > 0:
        import resource

        limit = mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def serve(requests, replies, config: dict) -> None:
    """The worker loop: a ready line (with import errors), then one reply line per call."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the service, which closes us
    _die_with_parent()
    sys.path[:0] = [p for p in config.get("python_path", []) if p not in sys.path]
    _limit_memory(int(config.get("memory_mb", 0)))
    for module in config.get("preload", []):
        importlib.import_module(module)  # ours (math_verify, sympy): a failure is a bug, not input
    errors = []
    for target in config.get("targets", []):
        try:
            resolve(target)
        except Exception as exc:  # reported to the pool, which fails start-up with it
            errors.append(f"{target}: {type(exc).__name__}: {exc}")
    _send(replies, {"ready": True, "errors": errors})
    for line in requests:
        message = json.loads(line)
        try:
            reply = {"ok": True, "result": call(message["target"], message["payload"])}
        except BaseException as exc:  # noqa: BLE001 - sys.exit() in a function fails its call only
            where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
            at = f" (at {where[0].filename}:{where[0].lineno})" if where else ""
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}{at}"[:_MAX_DETAIL]}
        _send(replies, reply)


def _send(replies, message: dict) -> None:
    try:
        data = json.dumps(message)
    except (TypeError, ValueError) as exc:
        data = json.dumps({"ok": False, "error": f"result is not JSON: {exc}"})
    replies.write(data.encode() + b"\n")
    replies.flush()


def main(argv: list[str]) -> int:
    """``python -m services.reward.functions.invoke CALL_FD REPLY_FD CONFIG_JSON`` (the pool)."""
    import os

    os.dup2(2, 1)  # a function's print() goes to the log, never into the reply pipe
    with open(int(argv[0]), "rb") as requests, open(int(argv[1]), "wb") as replies:
        serve(requests, replies, json.loads(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
