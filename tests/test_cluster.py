"""`llamafleet up / status / down` on a clean run directory, through the real CLI entry point."""

from __future__ import annotations

import json

import pytest
import redis
from llamafleet import cli, cluster


def test_up_status_down(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    assert cli.main(["up", "--run-dir", run_dir]) == 0
    try:
        state = cluster.ClusterState.load(run_dir)
        assert set(state.services) == {"data", "training", "rollout", "reward"}
        assert state.redis_pid and cluster.pid_alive(state.redis_pid)

        # a second `up` on the same run dir is refused, not doubled
        assert cli.main(["up", "--run-dir", run_dir]) == 2
        assert "already running" in capsys.readouterr().err

        # the Redis `up` started keeps an AOF and refuses to evict
        r = redis.Redis.from_url(state.redis_url)
        assert r.config_get("appendonly")["appendonly"] in ("yes", b"yes")
        assert r.config_get("maxmemory-policy")["maxmemory-policy"] in ("noeviction", b"noeviction")

        # queue rows appear in status: lag, pending and dead letters are counted
        r.xgroup_create("llamafleet:rollout:tasks", "rollout", id="0", mkstream=True)
        for i in range(3):
            r.xadd("llamafleet:rollout:tasks", {"id": f"j:0:0:0:{i}", "payload": b""})
        r.xreadgroup("rollout", "w1", {"llamafleet:rollout:tasks": ">"}, count=1)
        r.xadd("llamafleet:deadletter", {"id": "poison", "reason": "test"})

        capsys.readouterr()
        assert cli.main(["status", "--run-dir", run_dir, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert {s["health"] for s in report["services"].values()} == {"SERVING"}
        assert report["redis"] == "up"
        assert report["dead_letters"] == 1
        tasks = [q for q in report["queues"] if q["stream"] == "llamafleet:rollout:tasks"]
        assert tasks == [
            {
                "stream": "llamafleet:rollout:tasks",
                "length": 3,
                "group": "rollout",
                "consumers": 1,
                "pending": 1,
                "lag": 2,
            }
        ]
        assert cli.main(["status", "--run-dir", run_dir]) == 0  # the table form renders
        assert "SERVING" in capsys.readouterr().out
        pids = [s.pid for s in state.services.values()] + [state.redis_pid]
    finally:
        assert cli.main(["down", "--run-dir", run_dir]) == 0

    assert not any(cluster.pid_alive(pid) for pid in pids)
    assert not (tmp_path / "run" / "cluster.json").exists()
    for name in ("data", "training", "rollout", "reward"):
        log = (tmp_path / "run" / "logs" / f"{name}.log").read_text()
        assert "serving on 127.0.0.1:" in log and "stopped" in log  # drained, not killed

    capsys.readouterr()
    assert cli.main(["status", "--run-dir", run_dir]) == 2
    assert "llamafleet up" in capsys.readouterr().err


def test_up_with_an_unreachable_redis_url_is_a_clear_error(tmp_path, capsys):
    port = cluster.free_port()
    code = cli.main(
        ["up", "--run-dir", str(tmp_path / "run"), "--redis-url", f"redis://127.0.0.1:{port}/0"]
    )
    assert code == 2
    assert "cannot reach Redis" in capsys.readouterr().err


def test_service_with_bad_config_exits_2_with_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "services.data", "prot=1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown key 'prot'" in proc.stderr and "did you mean 'port'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv", [["frobnicate"], ["up", "--timeout", "soon"]])
def test_bad_cli_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2


def test_several_bases_are_named_by_their_folders_and_must_differ(tmp_path):
    for name in ("a/tiny", "b/tiny", "Tiny B"):
        (tmp_path / name).mkdir(parents=True)
    bases = cluster._bases([str(tmp_path / "a/tiny")], [str(tmp_path / "Tiny B")])
    assert list(bases) == ["tiny", "tiny-b"] and bases["tiny-b"] == str(tmp_path / "Tiny B")
    with pytest.raises(cluster.ClusterError, match="base name 'tiny' .* is taken by"):
        cluster._bases([str(tmp_path / "a/tiny")], [str(tmp_path / "b/tiny")])
    assert cluster.worker_name("rollout", 2, "tiny-b", "tiny") == "rollout-2@tiny-b"
    assert cluster.worker_name("rollout", 1, "tiny", "tiny") == "rollout"
    assert cluster.kind_of("reward-2@tiny-b") == "reward" and cluster.kind_of("data") == "data"


def test_a_state_file_from_before_several_bases_still_loads(tmp_path):
    """cluster.json written by an older `up` has base_model but no bases: one base, default."""
    (tmp_path / "cluster.json").write_text(
        json.dumps({"run_dir": str(tmp_path), "redis_url": "redis://x", "base_model": "/m/tiny"})
    )
    state = cluster.ClusterState.load(tmp_path)
    assert state.bases == {"tiny": "/m/tiny"} and state.default_base == "tiny"
    assert not state.routes_by_base  # its services were not told the default base
    assert cluster.worker_name("rollout", 1, "tiny", state.default_base) == "rollout"
    assert state.base() == ("tiny", "/m/tiny") == state.base("base") == state.base("/m/tiny")
    with pytest.raises(cluster.ClusterError, match=r"'other' is not served .* tiny \(/m/tiny\)"):
        state.base("other")
