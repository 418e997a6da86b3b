"""``code_tests``' sandbox: the completion's code runs with no network, nothing writable but a
private /tmp, and limits on CPU, memory, processes and file size; what it tries beyond them is
refused or killed and the test scores 0 with the reason. Without the privileges to isolate, the
sandbox refuses to run anything."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from services.reward.functions import sandbox
from services.reward.functions.sandbox import INIT, Sandbox, SandboxError, SandboxLimits

LIMITS = SandboxLimits(cpu_s=2, wall_s=4.0, memory_mb=256, processes=16, file_mb=4, tmpfs_mb=16)


@pytest.fixture(scope="module")
def box():
    b = Sandbox(LIMITS)
    reason = b.unavailable_reason()
    if reason:
        pytest.skip(f"the sandbox cannot isolate on this machine: {reason}")
    return b


def run(box: Sandbox, code: str, tests=("",)) -> dict:
    ref = json.dumps([{"stdin": t} if isinstance(t, str) else t for t in tests])
    return sandbox.score(box, completion=f"```python\n{code}\n```", reference=ref)


def uid_processes(base: int, count: int) -> list[str]:
    """``"<uid> <pid> <state> <name>"`` of every process whose real uid is in the range (from
    /proc, zombies included)."""
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
        except OSError:
            continue  # it ended while we looked
        uid = int(fields.get("Uid", "-1").split()[0])
        if base <= uid < base + count:
            out.append(
                f"{uid} {status.parent.name} {fields['State'].strip()} {fields['Name'].strip()}"
            )
    return out


def test_the_fraction_of_tests_passed_is_the_score(box):
    completion = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    tests = ["assert add(1, 2) == 3", {"assert": "assert add(2, 2) == 5"},
             {"stdin": "", "stdout": ""}, {"assert": "assert add(-1, 1) == 0"}]  # fmt: skip
    got = sandbox.score(box, completion=completion, reference=json.dumps({"tests": tests}))
    assert got["score"] == 0.75
    assert got["sub_scores"] == {"passed": 3.0, "tests": 4.0}
    assert "test 1: exit code 1: AssertionError" in got["detail"]
    io = run(box, "print(int(input()) * 2)", [{"stdin": "21\n", "stdout": "42"},
                                              {"stdin": "1\n", "stdout": "3"}])  # fmt: skip
    assert io["score"] == 0.5 and "wrong output: expected '3', got '2\\n'" in io["detail"]


def test_network_access_is_refused_even_to_this_machines_loopback(box):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    accepted = []
    server.settimeout(3.0)

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"
        got = run(box, code)
        outside = run(box, "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)")
    finally:
        thread.join()
        server.close()
    assert not accepted, "the sandboxed code reached a server on the host's loopback"
    assert got["score"] == 0.0 and "Network is unreachable" in got["detail"]
    assert outside["score"] == 0.0 and "Network is unreachable" in outside["detail"]


def test_writes_outside_its_private_tmp_are_refused(box, tmp_path):
    here = Path(__file__).resolve().parent / f"escape-{uuid.uuid4().hex}"
    target = tmp_path / "escape"
    for path in (here, target, Path("/dev/shm") / f"escape-{uuid.uuid4().hex}"):
        got = run(box, f"open({str(path)!r}, 'w').write('x')")
        assert got["score"] == 0.0, got
        assert "Read-only file system" in got["detail"] or "No such file" in got["detail"]
        assert not path.exists()
    ok = run(box, "open('/tmp/scratch', 'w').write('x'); open('rel', 'w').write('y')")
    assert ok["score"] == 1.0, ok["detail"]  # its own /tmp (the cwd) is writable


def test_a_fork_bomb_is_contained_killed_and_scored_0(box):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    got = run(box, code)
    assert got["score"] == 0.0
    assert "wall time limit of 4.0 s" in got["detail"] or "CPU time limit" in got["detail"]
    assert uid_processes(LIMITS.uid_base, LIMITS.uid_count) == []  # nothing outlived the test


def test_a_memory_blow_up_fails_its_test_with_the_reason(box):
    got = run(box, "x = bytearray(2 * 1024 ** 3)")
    assert got["score"] == 0.0
    assert "MemoryError (memory limit 256 MiB)" in got["detail"]


def test_cpu_time_and_wall_time_and_file_size_are_limited(box):
    from dataclasses import replace

    roomy = Sandbox(replace(LIMITS, cpu_s=1, wall_s=20.0))  # the wall limit must not come first
    cpu = run(roomy, "while True:\n    pass")
    assert cpu["score"] == 0.0 and "CPU time limit of 1 s" in cpu["detail"]
    wall = run(box, "import time\ntime.sleep(60)")
    assert wall["score"] == 0.0 and "wall time limit of 4.0 s" in wall["detail"]
    big = run(box, "open('big', 'wb').write(b'x' * (8 * 1024 * 1024))")
    assert big["score"] == 0.0 and "File too large" in big["detail"]


def test_a_background_process_does_not_outlive_its_test(box):
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(300)\n"
    got = run(box, code)
    assert got["score"] == 1.0
    assert uid_processes(LIMITS.uid_base, LIMITS.uid_count) == []


def test_a_completion_without_code_or_a_reference_without_tests(box):
    got = sandbox.score(box, completion="no code here", reference='["assert True"]')
    assert got == {"score": 0.0, "sub_scores": {"passed": 0.0}, "detail": "no code block"}
    with pytest.raises(ValueError, match="not JSON"):
        sandbox.score(box, completion="```\nx=1\n```", reference="add(1, 2) is 3")
    with pytest.raises(ValueError, match="holds no tests"):
        sandbox.score(box, completion="```\nx=1\n```", reference="[]")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
def test_without_the_privilege_to_isolate_nothing_is_run(tmp_path):
    marker = Path("/tmp") / f"llamafleet-sandbox-ran-{uuid.uuid4().hex}"
    spec = {
        "parent_pid": os.getpid(), "code": f"open({str(marker)!r}, 'w')", "tests": [{}],
        "uid": 200_900, "gid": 200_900, "tmpfs_mb": 4, "cpu_s": 1, "wall_s": 2, "memory_mb": 64,
        "nproc": 4, "fsize_mb": 1, "nofile": 16, "python": sys.executable, "max_output": 1000,
    }  # fmt: skip

    def drop():  # an ordinary user: no CAP_SYS_ADMIN, so unshare must fail
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)

    done = subprocess.run(
        [sandbox.default_python(), "-I", "-S", str(INIT)],  # one an ordinary user may run
        input=json.dumps(spec), capture_output=True, text=True, timeout=30, preexec_fn=drop,
    )  # fmt: skip
    messages = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 3
    assert "unshare(CLONE_NEWNET|CLONE_NEWNS)" in messages[0]["unavailable"]
    assert len(messages) == 1 and not marker.exists()


def test_an_unavailable_sandbox_refuses_with_its_reason():
    b = Sandbox(LIMITS)
    b._probed, b._unavailable = True, "unshare(CLONE_NEWNET|CLONE_NEWNS) failed: EPERM"
    with pytest.raises(SandboxError, match="unavailable on this reward worker: unshare"):
        b.run("print(1)", [{}])
