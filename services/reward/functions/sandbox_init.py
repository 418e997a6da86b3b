"""The sandbox's trusted first process: isolate, then run each test of a completion's code.

Run as a script by ``sandbox.py`` (``python -I -S sandbox_init.py``; stdlib only), with the job
as one JSON object on stdin, as root (or with CAP_SYS_ADMIN). It:

1. asks to be SIGKILLed when the reward worker that started it dies (``PR_SET_PDEATHSIG``);
2. enters a network namespace of its own (only a loopback interface, down: nothing is reachable,
   not even this machine's loopback services) and a mount namespace of its own;
3. makes every mount read-only, nosuid and private, recursively (``mount_setattr``, Linux >= 5.12),
   mounts a fresh size-limited tmpfs on ``/tmp`` (the only writable place, owned by the sandbox
   user) and empty read-only tmpfs over ``/proc`` and ``/run`` (no other processes' command
   lines or environment, no sockets under ``/run``);
4. runs each test as the sandbox user (a uid of its own per concurrent sandbox, no groups), in a
   new session, with rlimits on CPU time, address space, processes, file size and open files,
   stdin/stdout/stderr in memory files, a minimal environment and a wall-clock limit; between
   tests and at the end, every process of that uid is SIGKILLed (``kill(-1)`` as that uid), so a
   fork bomb or a process left in the background does not outlive its test.

If any isolation step fails it prints ``{"unavailable": reason}`` and runs nothing: the code is
never run with network access. Results are JSON lines on stdout, written by this process, which
the tested code cannot reach (another uid). It knows nothing about rewards or scores.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import resource
import signal
import subprocess
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 0x1, 0x2
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
SYS_MOUNT_SETATTR = 442  # same number on every architecture (added after the table unification)
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class Unavailable(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise Unavailable(f"{what} failed: {os.strerror(err)} (errno {err})")


def _mount(source: str, target: str, fstype: str, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()),
        f"mount {fstype} on {target}",
    )


def isolate(spec: dict) -> None:
    """Steps 1-3 of the module docstring; ``Unavailable`` when one is not possible here."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of the tests are reparented here and reaped
    if os.getppid() != spec["parent_pid"]:
        raise Unavailable("the reward worker that started the sandbox is gone")
    _check(
        _libc.unshare(CLONE_NEWNS | CLONE_NEWNET),
        "unshare(CLONE_NEWNET|CLONE_NEWNS) (needs root or CAP_SYS_ADMIN, and a seccomp profile "
        "that allows unshare)",
    )
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, MS_PRIVATE, 0)
    _check(
        _libc.syscall(
            SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr),
            ctypes.sizeof(attr),
        ),
        "mount_setattr(/, read-only, recursive) (needs Linux >= 5.12)",
    )  # fmt: skip
    uid, gid = spec["uid"], spec["gid"]
    _mount(
        "llamafleet-sandbox", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
        f"size={spec['tmpfs_mb']}m,mode=0700,uid={uid},gid={gid}",
    )  # fmt: skip
    for hidden in ("/proc", "/run"):
        if os.path.isdir(hidden):
            _mount("none", hidden, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k")
    try:  # the proof the namespace holds: writing outside /tmp must fail
        with open("/.llamafleet-sandbox-probe", "w"):
            pass
    except OSError:
        pass
    else:
        raise Unavailable("/ is still writable after making the mounts read-only")


def kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (a fork as that uid does ``kill(-1)``), a few times over
    to catch processes forked while the first pass ran."""
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            os._exit(0)
        os.waitpid(pid, 0)


def reap(wait_s: float = 2.0) -> None:
    """Collect the exit status of every descendant (killed orphans are reparented here), waiting
    up to ``wait_s`` for the dying, so no zombie keeps counting against the uid's process limit."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no children left
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)


def _limits(spec: dict):
    def apply() -> None:  # in the test's process, after setuid (Popen's order), before exec
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        mb = 1024 * 1024
        cpu = spec["cpu_s"]
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU first, SIGKILL after
        for res, value in (
            (resource.RLIMIT_AS, spec["memory_mb"] * mb),
            (resource.RLIMIT_NPROC, spec["nproc"]),
            (resource.RLIMIT_FSIZE, spec["fsize_mb"] * mb),
            (resource.RLIMIT_NOFILE, spec["nofile"]),
            (resource.RLIMIT_CORE, 0),
        ):
            resource.setrlimit(res, (value, value))

    return apply


def _memfile(name: str, data: bytes = b"") -> int:
    fd = os.memfd_create(name, 0)
    if data:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read(fd: int, limit: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, limit)
    os.close(fd)
    return data.decode("utf-8", "replace")


def _why(code: int, stderr: str, spec: dict) -> str:
    last = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "")
    if code < 0:
        sig = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else code
        if sig in ("SIGXCPU", "SIGKILL") and not last:
            return f"killed by {sig}: CPU time limit of {spec['cpu_s']} s"
        if sig == "SIGXFSZ":
            return f"killed by SIGXFSZ: file size limit of {spec['fsize_mb']} MiB"
        return f"killed by {sig}"
    if "MemoryError" in last:
        return f"exit code {code}: {last} (memory limit {spec['memory_mb']} MiB)"
    return f"exit code {code}: {last[:300]}" if last else f"exit code {code}"


def _same_output(got: str, want: str) -> bool:
    def lines(text: str) -> list[str]:
        out = [ln.rstrip() for ln in text.strip("\n").splitlines()]
        return out

    return lines(got) == lines(want)


def run_test(index: int, test: dict, spec: dict) -> dict:
    code = spec["code"]
    source = code + ("\n\n" + test["assert"] + "\n" if test.get("assert") else "\n")
    path = f"/tmp/test_{index}.py"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(source)
    os.chown(path, spec["uid"], spec["gid"])
    stdin = _memfile("stdin", test.get("stdin", "").encode())
    stdout, stderr = _memfile("stdout"), _memfile("stderr")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
    proc = subprocess.Popen(
        [spec["python"], "-I", path], stdin=stdin, stdout=stdout, stderr=stderr, cwd="/tmp",
        env=env, user=spec["uid"], group=spec["gid"], extra_groups=[], start_new_session=True,
        preexec_fn=_limits(spec), close_fds=True,
    )  # fmt: skip
    os.close(stdin)
    try:
        code_ = proc.wait(timeout=spec["wall_s"])
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    kill_uid(spec["uid"])
    if timed_out:
        code_ = proc.wait()
    reap()  # after Popen's own wait: reaping its process first would hide the exit code
    out, err = _read(stdout, spec["max_output"]), _read(stderr, spec["max_output"])
    if timed_out:
        return {"test": index, "passed": False, "reason": f"wall time limit of {spec['wall_s']} s"}
    if code_ != 0:
        return {"test": index, "passed": False, "reason": _why(code_, err, spec)}
    if test.get("stdout") is not None and not _same_output(out, test["stdout"]):
        return {
            "test": index, "passed": False,
            "reason": f"wrong output: expected {test['stdout'][:100]!r}, got {out[:100]!r}",
        }  # fmt: skip
    return {"test": index, "passed": True, "reason": ""}


def emit(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> int:
    spec = json.loads(sys.stdin.read())
    try:
        isolate(spec)
    except Unavailable as exc:
        emit({"unavailable": str(exc)})
        return 3
    emit({"isolated": True})
    kill_uid(spec["uid"])  # leftovers of an earlier sandbox on this uid whose worker died
    for index, test in enumerate(spec["tests"]):
        emit(run_test(index, test, spec))
    kill_uid(spec["uid"])
    reap()
    emit({"done": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
