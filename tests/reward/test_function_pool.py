"""The subprocess pool that runs owner-registered reward functions: same results as a direct
call, and a function that raises, overruns its deadline or kills its process fails that call
only (with its reason) while the pool goes on with fresh workers."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from user_rewards import sample_rewards

from services.reward.functions.invoke import coerce
from services.reward.functions.pool import CallError, PoolStartError, SubprocessPool

USER_DIR = str(Path(__file__).parent / "user_rewards")
T = "sample_rewards:"


@pytest.fixture(scope="module")
def pool():
    p = SubprocessPool(2, targets=[T + "length_score"], python_path=[USER_DIR])
    yield p
    p.close()


def payload(completion: str, reference: str = "", **args) -> dict:
    return {"prompt": "p", "completion": completion, "prompt_ids": [1, 2],
            "completion_ids": [3, 4, 5], "reference": reference, "args": args}  # fmt: skip


def test_a_registered_function_scores_the_same_as_a_direct_call(pool):
    for text, target in (("hello", 10.0), ("a" * 25, 5.0), ("", 3.0)):
        got = pool.call(T + "length_score", payload(text, target=target), 5.0)
        assert got == coerce(sample_rewards.length_score(completion=text, target=target))
    got = pool.call(T + "keyword_hits", payload("the cat sat", "cat", keywords=["cat", "dog"]), 5)
    direct = sample_rewards.keyword_hits("the cat sat", "cat", keywords=["cat", "dog"])
    assert got == coerce(direct) == {
        "score": 0.5, "sub_scores": {"hits": 1.0, "ref_in": 1.0}, "detail": ""
    }  # fmt: skip
    # only the keywords it declares are passed; ids arrive as lists
    got = pool.call(T + "uses_ids", payload("x"), 5.0)
    assert got == {"score": 1.0, "sub_scores": {}, "detail": "prompt 'p'"}


def test_an_exception_fails_the_call_with_its_reason_and_the_worker_serves_on(pool):
    before = set(pool.pids())
    with pytest.raises(CallError) as err:
        pool.call(T + "raises", payload("boom"), 5.0)
    assert err.value.kind == "raised"
    assert "ValueError: cannot score 'boom'" in err.value.message
    assert "sample_rewards.py" in err.value.message  # where it raised
    assert pool.call(T + "raises", payload("fine"), 5.0)["score"] == 1.0
    assert set(pool.pids()) == before  # nobody was replaced


def test_an_infinite_loop_is_killed_at_its_deadline_and_its_worker_replaced(pool):
    before = set(pool.pids())
    start = time.monotonic()
    with pytest.raises(CallError) as err:
        pool.call(T + "spins", payload("spin"), 0.5)
    took = time.monotonic() - start
    assert err.value.kind == "timeout"
    assert "deadline of 0.5 s" in err.value.message
    assert took < 0.5 + 1.0, f"the caller waited {took:.2f}s"
    # the other worker answers meanwhile, and a replacement joins
    assert pool.call(T + "spins", payload("ok"), 5.0)["score"] == 1.0
    deadline = time.monotonic() + 30
    while len(pool.pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    after = set(pool.pids())
    assert len(after) == 2 and len(before - after) == 1  # exactly the looping one went
    assert pool.stats.timeouts >= 1


def test_a_worker_that_dies_fails_its_call_and_others_continue(pool):
    with pytest.raises(CallError) as err:
        pool.call(T + "exits", payload("x"), 5.0)
    assert err.value.kind == "crashed"
    assert "exited with code 3" in err.value.message
    assert pool.call(T + "length_score", payload("abc"), 5.0)["score"] == pytest.approx(-0.7)


def test_a_result_that_is_not_a_score_fails_the_call(pool):
    with pytest.raises(CallError) as err:
        pool.call(T + "not_a_number", payload("x"), 5.0)
    assert "is a str ('high'), not a number" in err.value.message
    with pytest.raises(CallError) as err:
        pool.call(T + "length_score", payload("x", bogus=1), 5.0)
    assert "takes no argument 'bogus'" in err.value.message


def test_functions_run_in_other_processes_than_the_caller(pool):
    import os

    pids = {pool.call(T + "pid", payload("x"), 5.0)["score"] for _ in range(4)}
    assert float(os.getpid()) not in pids


def test_an_import_error_fails_the_pools_start_naming_the_function():
    with pytest.raises(PoolStartError) as err:
        SubprocessPool(1, targets=["sample_rewards:missing"], python_path=[USER_DIR])
    assert "sample_rewards:missing: AttributeError" in str(err.value)
    with pytest.raises(PoolStartError) as err:
        SubprocessPool(1, targets=["no_such_module_here:f"])
    assert "ModuleNotFoundError" in str(err.value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS semantics")
def test_a_memory_limit_turns_a_blow_up_into_a_failed_call():
    p = SubprocessPool(1, targets=[], python_path=[USER_DIR], memory_mb=400)
    try:
        with pytest.raises(CallError) as err:
            p.call("builtins:bytearray", {"args": {}}, 5.0)  # not a reward function
        assert err.value.kind == "raised"
    finally:
        p.close()
