"""Reward functions: scores/s of math_verify and of the code sandbox per reward worker, with 1 and
2 workers, and the subprocess pool's overhead against a direct in-process call.

    python bench/bench_rewards.py --items 200 --code-items 40 --repeats 3

- **math_verify**: ``--items`` (completion, reference) pairs (a mix of boxed fractions, radicals,
  plain numbers, equal and unequal) scored through ``RewardFunctions`` (the engine's ``functions``
  scorer path) with a pool of W worker processes and W concurrent callers (the reward worker's
  threads), W = 1 and 2; the peer is the same function called directly in this process, one
  thread (what a library would do, unsafe for the service: no deadline, no isolation).
- **code_tests**: ``--code-items`` completions (a correct function, a wrong one, one that raises)
  each with 3 assert tests, run in the sandbox with 1 and 2 concurrent runs.
- **pool overhead**: per-call latency of a trivial function (``len``-based) and of math_verify,
  through the pool vs a direct call (median of ``--calls`` calls).

Each configuration runs ``--repeats`` times; the summary gives medians and the 1-minute load
average before each run (the machine is shared). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "clients" / "python")]

from services.reward.functions import FunctionCall, math_verify  # noqa: E402
from services.reward.functions.pool import SubprocessPool  # noqa: E402
from services.reward.functions.registry import (  # noqa: E402
    MATH_VERIFY_TARGET,
    POOL_PRELOAD,
    FunctionsConfig,
    builtins,
)
from services.reward.functions.runtime import RewardFunctions  # noqa: E402
from services.reward.functions.sandbox import SandboxLimits  # noqa: E402
from services.reward.scorers import ScoreInput  # noqa: E402

TRIVIAL = "bench_trivial_reward:score"


def math_items(n: int, seed: int = 0) -> list[ScoreInput]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 50), rng.randint(2, 50)
        kind = rng.randrange(4)
        if kind == 0:
            completion, reference = (
                f"so the answer is \\boxed{{\\frac{{{a}}}{{{b}}}}}",
                f"{a / b:.8f}",
            )
        elif kind == 1:
            completion, reference = f"\\boxed{{{a}\\sqrt{{2}}}}", f"\\sqrt{{{2 * a * a}}}"
        elif kind == 2:
            completion, reference = f"First {a}, then {a + b}. The result is {a * b}.", str(a * b)
        else:
            completion, reference = f"\\boxed{{{a + 1}}}", str(a)
        out.append(ScoreInput(completion_text=completion, reference_answer=reference))
    return out


def code_items(n: int) -> list[ScoreInput]:
    bodies = ["return a + b", "return a - b", "raise ValueError('no')"]
    tests = json.dumps(["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"])
    return [
        ScoreInput(
            completion_text=f"```python\ndef add(a, b):\n    {bodies[i % 3]}\n```",
            reference_answer=tests,
        )
        for i in range(n)
    ]


def load() -> float:
    return os.getloadavg()[0]


def throughput(fns: RewardFunctions, call: FunctionCall, items, callers: int) -> float:
    scorer = fns.scorer((call,))
    with ThreadPoolExecutor(callers) as ex:
        list(ex.map(lambda it: scorer.score([it]), items[: callers * 2]))  # warm up
        start = time.perf_counter()
        list(ex.map(lambda it: scorer.score([it]), items))
        return len(items) / (time.perf_counter() - start)


def direct_math(items) -> float:
    start = time.perf_counter()
    for it in items:
        math_verify.score(completion=it.completion_text, reference=it.reference_answer,
                          timeout_s=5)  # fmt: skip
    return len(items) / (time.perf_counter() - start)


def runtime(workers: int, concurrent_sandboxes: int) -> RewardFunctions:
    limits = SandboxLimits(uid_base=202_000, uid_count=max(concurrent_sandboxes, 1))
    return RewardFunctions(FunctionsConfig(builtins(10.0), (), workers, 10.0, 0, limits))


def latencies(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--code-items", type=int, default=40)
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    results: dict[str, list] = {}

    def record(key: str, value: float, before: float) -> None:
        results.setdefault(key, []).append({"value": value, "load": before})

    items, codes = math_items(args.items), code_items(args.code_items)
    mv = FunctionCall("math_verify", "math_verify")
    ct = FunctionCall("code_tests", "code_tests")
    for _ in range(args.repeats):
        before = load()
        record("math_verify direct (1 thread, in process)", direct_math(items), before)
        for w in (1, 2):
            fns = runtime(w, w)
            fns.pool()
            before = load()
            record(f"math_verify pool, {w} worker(s)", throughput(fns, mv, items, w), before)
            before = load()
            record(f"code_tests sandbox, {w} concurrent", throughput(fns, ct, codes, w), before)
            fns.close()

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "bench_trivial_reward.py").write_text(
            "def score(completion):\n    return len(completion) / 100\n", encoding="utf-8"
        )
        sys.path.insert(0, tmp)
        import bench_trivial_reward

        pool = SubprocessPool(1, targets=[TRIVIAL], python_path=[tmp], preload=POOL_PRELOAD)
        payload = {"completion": "x" * 50, "reference": "3"}
        fresh = iter(math_items(args.calls * args.repeats * 2, seed=1))  # never a cached input

        def mv_direct():
            it = next(fresh)
            math_verify.score(completion=it.completion_text, reference=it.reference_answer)

        def mv_pool():
            it = next(fresh)
            pool.call(MATH_VERIFY_TARGET, {"completion": it.completion_text,
                                           "reference": it.reference_answer}, 10.0)  # fmt: skip

        for _ in range(args.repeats):
            before = load()
            record("trivial direct, ms/call",
                   latencies(lambda: bench_trivial_reward.score(completion="x" * 50), args.calls), before)  # fmt: skip
            record("trivial pool, ms/call",
                   latencies(lambda: pool.call(TRIVIAL, payload, 5.0), args.calls), before)  # fmt: skip
            record("math_verify direct, ms/call", latencies(mv_direct, args.calls // 3), before)
            record("math_verify pool, ms/call", latencies(mv_pool, args.calls // 3), before)
        pool.close()

    summary = {
        key: {"median": statistics.median(r["value"] for r in runs),
              "runs": [round(r["value"], 3) for r in runs],
              "load_1min": [round(r["load"], 2) for r in runs]}
        for key, runs in results.items()
    }  # fmt: skip
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
