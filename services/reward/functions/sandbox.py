"""``code_tests``: run a completion's code against the item's tests in a local sandbox.

Score = the fraction of tests passed; the detail names each failed test and why (wrong output,
exit code with the last line of stderr, CPU/memory/file-size/wall limit). The isolation itself is
``sandbox_init.py`` (a trusted first process run as root); this module prepares its job, gives it
a uid of its own, waits for it with a deadline and reads its results.

**The reference holds the tests** (the task's ``reference_answer``, as a JSON string): a list, or
``{"tests": [...]}``, of tests each of which is ``{"stdin": ..., "stdout": ...}`` (the program is
run with that input; ``stdout``, when given, must match line by line, trailing spaces ignored),
``{"assert": "assert f(2) == 4"}`` (appended to the code; passes when the program exits 0), or a
bare string (an ``assert`` test). Arguments: ``extract`` = ``"last_block"`` (default: the last
fenced code block, python or unlabelled), ``"first_block"`` or ``"whole"`` (the completion is the
code). A completion without a code block scores 0 with the detail "no code block".

**Concurrency and uids.** Each concurrent run takes a uid of its own from ``uid_base ..
uid_base+uid_count-1``, held with an ``flock`` on ``<lock_dir>/uid-<n>.lock`` (so several reward
workers on one machine never share one; the lock dies with its holder). A uid of its own gives
each run its own process limit and means ``kill(-1)`` as that uid reaches only its own processes.

**What this sandbox does not protect against** (README "Code sandbox"): it shares the host
kernel (a kernel exploit escapes it); files readable by everyone stay readable (the code can read
the installed packages, world-readable configs and data, but not root's 0600/0700 files); CPU
is bounded per test but not shared fairly (no cgroup: a busy sandbox slows its neighbours);
``/dev`` device nodes that everyone may open remain usable. For untrusted code at scale, run a
gVisor / Firecracker-class sandbox service and reach it through a remote scorer.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import regex

logger = logging.getLogger(__name__)

INIT = Path(__file__).with_name("sandbox_init.py")
_FENCE = regex.compile(
    r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", regex.DOTALL | regex.IGNORECASE
)
EXTRACTS = ("last_block", "first_block", "whole")


class SandboxError(Exception):
    """The sandbox could not run the code (not: the code failed its tests)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per test: CPU seconds, wall seconds, address space, processes (of the sandbox uid), file
    size, open files; per run: the ``/tmp`` tmpfs size, the number of tests and code size."""

    cpu_s: int = 5
    wall_s: float = 10.0
    memory_mb: int = 512
    processes: int = 32
    file_mb: int = 16
    open_files: int = 64
    tmpfs_mb: int = 64
    max_tests: int = 64
    max_code_chars: int = 100_000
    max_output_chars: int = 65_536
    python: str = ""  # the interpreter the code runs with; default /usr/bin/python3 or this one
    uid_base: int = 200_000
    uid_count: int = 64
    lock_dir: str = ""  # default <tempdir>/llamafleet-sandbox-uids


def default_python() -> str:
    """An interpreter every uid may execute: ``/usr/bin/python3``, else this one's real path."""
    for candidate in ("/usr/bin/python3", shutil.which("python3") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return os.path.realpath(sys.executable)


class _UidSlots:
    """Exclusive uids across the threads and processes of this machine (``flock``)."""

    def __init__(self, base: int, count: int, lock_dir: str) -> None:
        self.base, self.count = base, count
        self.dir = Path(lock_dir or Path(tempfile.gettempdir()) / "llamafleet-sandbox-uids")
        self._lock = threading.Lock()
        self._held: dict[int, int] = {}

    def acquire(self, wait_s: float) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock:
                for uid in range(self.base, self.base + self.count):
                    if uid in self._held:
                        continue
                    fd = os.open(self.dir / f"uid-{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        os.close(fd)
                        continue
                    self._held[uid] = fd
                    return uid
            if time.monotonic() > deadline:
                raise SandboxError(f"all {self.count} sandbox uids were busy for {wait_s:g} s")
            time.sleep(0.05)

    def release(self, uid: int) -> None:
        with self._lock:
            fd = self._held.pop(uid, None)
        if fd is not None:
            os.close(fd)  # closing drops the flock


def extract_code(completion: str, extract: str) -> str | None:
    if extract == "whole":
        return completion
    blocks = _FENCE.findall(completion)
    if not blocks:
        return None
    return blocks[-1] if extract == "last_block" else blocks[0]


def parse_tests(reference: str, max_tests: int) -> list[dict]:
    """The tests in a reference answer (see the module docstring); ValueError says what is wrong."""
    try:
        data = json.loads(reference)
    except ValueError:
        raise ValueError(
            "the reference answer is not JSON; code_tests needs a JSON list of tests, e.g. "
            '[{"stdin": "1 2", "stdout": "3"}] or ["assert add(1, 2) == 3"]'
        ) from None
    if isinstance(data, dict):
        data = data.get("tests")
    if not isinstance(data, list) or not data:
        raise ValueError(
            'the reference answer holds no tests (a non-empty list, or {"tests": [...]})'
        )
    if len(data) > max_tests:
        raise ValueError(f"{len(data)} tests, more than the sandbox's max_tests={max_tests}")
    tests = []
    for i, test in enumerate(data):
        if isinstance(test, str):
            test = {"assert": test}
        if not isinstance(test, dict) or not ({"stdin", "stdout", "assert"} & set(test)):
            raise ValueError(f"test {i} is not a string or an object with stdin/stdout/assert")
        bad = [
            k for k in ("stdin", "stdout", "assert") if k in test and not isinstance(test[k], str)
        ]
        if bad:
            raise ValueError(f"test {i}: {bad[0]} must be a string")
        tests.append({k: test[k] for k in ("stdin", "stdout", "assert") if k in test})
    return tests


class Sandbox:
    """Runs code against tests under ``SandboxLimits``; ``available`` says whether it can."""

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self.python = self.limits.python or default_python()
        self._slots = _UidSlots(self.limits.uid_base, self.limits.uid_count, self.limits.lock_dir)
        self._probe_lock = threading.Lock()
        self._unavailable: str | None = None
        self._probed = False

    def unavailable_reason(self) -> str:
        """ "" when the sandbox works here; else why not (checked once, by running a probe)."""
        with self._probe_lock:
            if not self._probed:
                self._unavailable = self._probe()
                self._probed = True
                if self._unavailable:
                    logger.warning("code sandbox unavailable: %s", self._unavailable)
        return self._unavailable or ""

    def _probe(self) -> str:
        if not sys.platform.startswith("linux"):
            return "the code sandbox needs Linux namespaces"
        try:
            results = self._run("print(6 * 7)", [{"stdout": "42"}])
        except SandboxError as exc:
            return str(exc)
        if not results[0]["passed"]:
            return f"a probe program did not run in the sandbox: {results[0]['reason']}"
        return ""

    def run(self, code: str, tests: list[dict]) -> list[dict]:
        """One result per test (``passed``, ``reason``); ``SandboxError`` if it could not run."""
        reason = self.unavailable_reason()
        if reason:
            raise SandboxError(f"the code sandbox is unavailable on this reward worker: {reason}")
        if len(code) > self.limits.max_code_chars:
            raise SandboxError(f"code of {len(code)} characters, more than max_code_chars")
        return self._run(code, tests)

    def _run(self, code: str, tests: list[dict]) -> list[dict]:
        lim = self.limits
        deadline = len(tests) * (lim.wall_s + 2.0) + 10.0
        uid = self._slots.acquire(wait_s=60.0)
        try:
            spec = {
                "parent_pid": os.getpid(), "code": code, "tests": tests, "uid": uid, "gid": uid,
                "tmpfs_mb": lim.tmpfs_mb, "cpu_s": lim.cpu_s, "wall_s": lim.wall_s,
                "memory_mb": lim.memory_mb, "nproc": lim.processes, "fsize_mb": lim.file_mb,
                "nofile": lim.open_files, "python": self.python,
                "max_output": lim.max_output_chars,
            }  # fmt: skip
            try:
                done = subprocess.run(
                    [sys.executable, "-I", "-S", str(INIT)],
                    input=json.dumps(spec), capture_output=True, text=True, timeout=deadline,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                raise SandboxError(f"the sandbox did not finish within {deadline:g} s") from None
        finally:
            self._slots.release(uid)
        messages = []
        for line in done.stdout.splitlines():
            try:
                messages.append(json.loads(line))
            except ValueError:
                continue
        for message in messages:
            if "unavailable" in message:
                raise SandboxError(str(message["unavailable"]))
        results = [m for m in messages if "test" in m]
        if not any(m.get("done") for m in messages) or len(results) != len(tests):
            tail = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
            raise SandboxError(f"the sandbox stopped early: {tail[0][:300]}")
        return results


def score(
    sandbox: Sandbox, *, completion: str, reference: str, extract: str = "last_block"
) -> dict:
    """``code_tests`` on one item: ``{"score", "sub_scores", "detail"}``."""
    if extract not in EXTRACTS:
        raise ValueError(f"extract {extract!r}: use one of {', '.join(EXTRACTS)}")
    tests = parse_tests(reference, sandbox.limits.max_tests)
    code = extract_code(completion, extract)
    if code is None or not code.strip():
        return {"score": 0.0, "sub_scores": {"passed": 0.0}, "detail": "no code block"}
    results = sandbox.run(code, tests)
    passed = sum(1 for r in results if r["passed"])
    failed = [f"test {r['test']}: {r['reason']}" for r in results if not r["passed"]]
    detail = f"{passed}/{len(results)} tests passed" + ("; " + "; ".join(failed) if failed else "")
    return {
        "score": passed / len(results),
        "sub_scores": {"passed": float(passed), "tests": float(len(results))},
        "detail": detail[:2000],
    }
