"""0 lost, 0 doubled: a reward worker SIGKILLed while sandboxed code runs. The sandbox dies with
it (nothing of the sandbox uid survives), its items are re-claimed after the lease by another
worker, and every rollout is scored exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from llamafleet.common.v1 import common_pb2
from test_reward_functions import rollout
from test_sandbox import uid_processes
from test_worker import scored_in, wait_for

from services.common import queues
from services.reward.functions.sandbox import Sandbox, SandboxLimits
from services.reward.worker import GROUP

PROC = Path(__file__).with_name("reward_worker_proc.py")
UID_BASE, UID_COUNT = 201_000, 8
N = 6
CODE = "```python\nimport time\ntime.sleep(0.6)\ndef f():\n    return 1\n```"


def start(url: str, functions: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(PROC), url, str(functions), name])


@pytest.mark.slow
def test_a_worker_killed_mid_sandbox_loses_and_doubles_nothing(redis_url, tmp_path):
    limits = SandboxLimits(uid_base=UID_BASE, uid_count=UID_COUNT, wall_s=10.0)
    if reason := Sandbox(limits).unavailable_reason():
        pytest.skip(f"the sandbox cannot isolate on this machine: {reason}")
    functions = tmp_path / "functions.yaml"
    functions.write_text(
        f"pool: {{workers: 1}}\nsandbox: {{uid_base: {UID_BASE}, uid_count: {UID_COUNT}}}\n",
        encoding="utf-8",
    )
    r = queues.connect(redis_url, socket_timeout=3.0)
    fns = [common_pb2.RewardFunctionRef(name="code_tests")]
    tests = json.dumps(["assert f() == 1", "assert f() + 1 == 2"])
    for step in range(N):
        payload = rollout("kj", step, CODE, fns, tests)
        queues.publish(r, queues.ROLLOUT_RESULTS, f"kj:1:{step}:0:0", payload)

    victim = start(redis_url, functions, "victim")
    survivor = None
    try:
        wait_for(lambda: uid_processes(UID_BASE, UID_COUNT), timeout=60, what="a sandboxed run")
        victim.kill()  # SIGKILL while the completion's code runs
        victim.wait(10)
        in_hand = r.xpending(queues.ROLLOUT_RESULTS, GROUP)["pending"]
        assert in_hand > 0  # it died holding items
        wait_for(lambda: not uid_processes(UID_BASE, UID_COUNT), timeout=10,
                 what="the sandbox to die with its worker")  # fmt: skip
        survivor = start(redis_url, functions, "survivor")
        wait_for(lambda: len(scored_in(r, "kj")) == N, timeout=120, what=f"{N} scored rollouts")
        wait_for(lambda: r.xpending(queues.ROLLOUT_RESULTS, GROUP)["pending"] == 0, what="acks")
        time.sleep(0.5)
    finally:
        for proc in (victim, survivor):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    scored = scored_in(r, "kj")  # raises if an item was published twice
    assert sorted(scored) == sorted(f"kj:1:{s}:0:0" for s in range(N))  # none lost
    assert r.xlen(queues.reward_results_stream("kj")) == N  # none doubled
    assert all(s.raw_score == 1.0 for s in scored.values())
    assert all(s.components[0].detail == "2/2 tests passed" for s in scored.values())
    assert r.xlen(queues.DEADLETTER) == 0
    r.close()
