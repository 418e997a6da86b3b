"""``llamafleet reward list | test`` and the web UI's reward API against a real reward service
(in-process, on a loopback port) with an owner-registered function."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import pytest
from llamafleet import cli, cluster
from llamafleet.client import Client
from llamafleet.web.app import WebApi

from services.common.server import ServiceHost
from services.reward.config import RewardConfig
from services.reward.server import build_app

USER_DIR = Path(__file__).parents[1] / "reward" / "user_rewards"


@pytest.fixture(scope="module")
def reward_run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward-cli")
    functions = root / "functions.yaml"
    functions.write_text(
        f"python_path: [{USER_DIR}]\npool: {{workers: 1}}\nfunctions:\n"
        "  length: {call: 'sample_rewards:length_score', description: 'near a target length'}\n"
        "  flaky: {call: 'sample_rewards:raises'}\n",
        encoding="utf-8",
    )
    config = RewardConfig(functions_file=str(functions), shutdown_delay_s=0.0, grace_s=0.5,
                          worker_threads=0)  # fmt: skip
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict = {}

    async def serve():
        app = build_app(config)
        host = ServiceHost("reward", config, app.register)
        await host.start()
        holder.update(app=app, host=host, stop=asyncio.Event())
        started.set()
        await holder["stop"].wait()
        await host.stop(grace=0)
        app.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(60)
    run_dir = root / "run"
    run_dir.mkdir()
    address = holder["host"].address
    cluster.ClusterState(
        run_dir=str(run_dir), redis_url="redis://127.0.0.1:1/0",
        services={"reward": cluster.ServiceProcess("reward", os.getpid(), address)},
    ).save()  # fmt: skip
    yield str(run_dir), address
    loop.call_soon_threadsafe(holder["stop"].set)
    thread.join(30)


def test_reward_list_shows_what_a_job_may_name(reward_run_dir, capsys):
    run_dir, _ = reward_run_dir
    assert cli.main(["reward", "list", "--run-dir", run_dir, "--json"]) == 0
    listed = {f["name"]: f for f in json.loads(capsys.readouterr().out)}
    assert {"length", "flaky", "math_verify", "code_tests", "exact_match"} <= set(listed)
    assert listed["length"]["kind"] == "user"
    assert listed["length"]["description"] == "near a target length"
    assert listed["math_verify"]["kind"] == "builtin" and listed["math_verify"]["available"]
    assert cli.main(["reward", "list", "--run-dir", run_dir]) == 0
    assert "near a target length" in capsys.readouterr().out


def test_reward_test_previews_functions_on_one_completion(reward_run_dir, capsys, tmp_path):
    run_dir, _ = reward_run_dir
    argv = ["reward", "test", "--run-dir", run_dir, "--json", "--function", "length",
            "--args", '{"target": 4}', "--completion", "abcdef"]  # fmt: skip
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["score"] == pytest.approx(-0.5)  # -|6 - 4| / 4
    spec = tmp_path / "fns.yaml"
    spec.write_text(
        "reward_functions:\n  - {name: math_verify, weight: 2.0, args: {extractor: boxed}}\n"
        "  - {name: exact_match, label: exact}\n",
        encoding="utf-8",
    )
    answer = tmp_path / "answer.md"
    answer.write_text("so \\boxed{\\frac{6}{4}}", encoding="utf-8")
    argv = ["reward", "test", "--run-dir", run_dir, "--json", "--functions", str(spec),
            "--completion", f"@{answer}", "--reference", "1.5"]  # fmt: skip
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["score"] == pytest.approx(2.0)
    assert [c["label"] for c in out["components"]] == ["math_verify", "exact"]


def test_a_failing_function_is_one_line_and_exit_2(reward_run_dir, capsys):
    run_dir, _ = reward_run_dir
    argv = ["reward", "test", "--run-dir", run_dir, "--function", "flaky", "--completion", "boom"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "REWARD_FUNCTION_RAISED" in err or "raised ValueError: cannot score 'boom'" in err
    assert "Traceback" not in err
    assert cli.main(["reward", "test", "--run-dir", run_dir, "--completion", "x"]) == 2
    assert "name a function with --function" in capsys.readouterr().err


def test_the_web_api_lists_and_tests_functions(reward_run_dir):
    _, address = reward_run_dir
    with Client({"reward": address}, timeout=60) as client:
        web = WebApi(client)
        names = {f["name"] for f in web.reward_functions()}
        assert {"length", "code_tests"} <= names
        got = web.reward_test({"function": "length", "args": {"target": 2}, "completion": "ab"})
        assert got["score"] == 0.0 and got["components"][0]["name"] == "length"
