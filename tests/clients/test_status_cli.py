"""``llamafleet status`` exit codes, as the README's CLI section documents them.

``--json`` prints the report and exits 0 whatever the cluster's health, which is in the report
(``healthy``, ``problems``): a script reads one JSON document and never special-cases the exit
code. The table form exits 1 when a service process is dead or not SERVING or Redis does not
answer. Both exit 2 (one line on stderr) when no cluster was started in the run directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading

import pytest
from llamafleet import cli, cluster

from services.common.server import ServiceHost
from services.data.config import DataConfig
from services.data.server import make_register


@pytest.fixture
def serving(tmp_path):
    """A real data service on a loopback port (health SERVING), in this process."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    config = DataConfig(datasets_dir=str(tmp_path / "datasets"), shutdown_delay_s=0.0)
    host = ServiceHost("data", config, make_register(config))
    asyncio.run_coroutine_threadsafe(host.start(), loop).result(30)
    yield host.address
    asyncio.run_coroutine_threadsafe(host.stop(0), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def run_dir_with(tmp_path, redis_url: str, **services: tuple[int, str]) -> str:
    folder = tmp_path / "run"
    folder.mkdir(exist_ok=True)
    state = cluster.ClusterState(run_dir=str(folder), redis_url=redis_url)
    for name, (pid, address) in services.items():
        state.services[name] = cluster.ServiceProcess(name, pid, address)
    state.save()
    return str(folder)


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def status(capsys, run_dir: str, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["status", "--run-dir", run_dir, *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_healthy_cluster_exits_0_in_both_forms(tmp_path, capsys, redis_url, serving):
    run_dir = run_dir_with(tmp_path, redis_url, data=(os.getpid(), serving))
    code, out, _ = status(capsys, run_dir, "--json")
    report = json.loads(out)
    assert code == 0 and report["healthy"] is True and report["problems"] == []
    assert report["services"]["data"]["health"] == "SERVING"
    code, out, _ = status(capsys, run_dir)
    assert code == 0 and "healthy" in out and "unhealthy" not in out


def test_a_dead_worker_is_reported_inside_the_json_and_fails_the_table_form(
    tmp_path, capsys, redis_url, serving
):
    pid, port = dead_pid(), cluster.free_port()
    run_dir = run_dir_with(
        tmp_path, redis_url, data=(os.getpid(), serving), **{"reward-2": (pid, f"127.0.0.1:{port}")}
    )
    code, out, _ = status(capsys, run_dir, "--json")
    report = json.loads(out)  # the whole report, on exit 0
    assert code == 0 and report["healthy"] is False
    assert report["problems"] == [
        f"reward-2: process {pid} is not running",
        "reward-2: health UNREACHABLE",
    ]
    assert report["services"]["data"]["health"] == "SERVING" and report["redis"] == "up"
    code, out, _ = status(capsys, run_dir)
    assert code == 1
    assert "unhealthy" in out and f"reward-2: process {pid} is not running" in out


def test_an_unreachable_redis_is_unhealthy(tmp_path, capsys):
    run_dir = run_dir_with(tmp_path, f"redis://127.0.0.1:{cluster.free_port()}/0")
    code, out, _ = status(capsys, run_dir, "--json")
    report = json.loads(out)
    assert code == 0 and report["healthy"] is False
    assert [p.split(":")[0] for p in report["problems"]] == ["redis"]
    assert report["redis"].startswith("unreachable")
    assert status(capsys, run_dir)[0] == 1


@pytest.mark.parametrize("form", [["--json"], []])
def test_no_cluster_in_the_run_dir_exits_2_with_one_line(tmp_path, capsys, form):
    code, out, err = status(capsys, str(tmp_path / "nothing"), *form)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "llamafleet up" in err
