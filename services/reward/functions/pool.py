"""A pool of worker processes that run reward-function calls with a deadline each.

The owner's reward functions (and ``math_verify``) never run in the serving process: a call is
sent to one idle worker process, which imports the function (``module:attr``) and runs it; the
caller waits at most the call's deadline. When the deadline passes, the worker is SIGKILLed and a
fresh one takes its place, so an infinite loop costs one deadline and one process start, and the
other calls in flight are untouched. A worker that dies on its own (segfault, out of memory, a
function calling ``os._exit``) fails its call with how it died and is replaced the same way.

Why not ``concurrent.futures.ProcessPoolExecutor``: a future's ``result(timeout)`` stops waiting
but leaves the call running in its worker forever, the executor cannot kill one worker, and a
worker that dies breaks the whole executor (``BrokenProcessPool``) and every call in it.
``multiprocessing.Pool`` has the same limits. What is needed, killing and replacing exactly the
worker that overran, is this small module over ``subprocess.Popen`` and a pipe pair each.

Workers are plain ``python -m services.reward.functions.invoke`` processes (not forks of the
threaded gRPC server, and not ``multiprocessing`` children, which re-import the parent's main
module), talking newline-delimited JSON over a pipe pair of their own: the serving process never
unpickles what a worker wrote, and a function printing to stdout cannot corrupt the protocol
(a worker's stdout goes to its stderr, the service's log). Each worker adds the owner's
``python_path``, imports ``preload`` and the ``targets`` up front (an import error fails the
pool's start with the function's name), then serves calls. Workers die with the serving process
(``PR_SET_PDEATHSIG``) and may be given an address-space limit (``RLIMIT_AS``), so a leaking
function gets ``MemoryError`` rather than the machine.

This module knows nothing about rewards: a target is any ``module:attr`` that ``invoke.call``
can run, and results are whatever JSON it returns.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import IO

logger = logging.getLogger(__name__)

_READY_TIMEOUT_S = 120.0
_RESTART_BACKOFF_S = (0.5, 10.0)


class CallError(Exception):
    """A call that did not return: ``kind`` is "raised", "timeout", "crashed" or "busy"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class PoolStartError(RuntimeError):
    """The pool's workers could not start (an import error in a target, or no process)."""


@dataclass
class PoolStats:
    calls: int = 0
    raised: int = 0
    timeouts: int = 0
    crashes: int = 0
    restarts: int = 0


@dataclass(eq=False)
class _Worker:
    process: subprocess.Popen
    requests: IO[bytes]  # we write calls here
    replies: IO[bytes]  # and read answers here
    calls: int = 0
    started: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.process.poll() is None

    def read_reply(self, timeout_s: float | None) -> dict | None:
        """The next JSON line; None when nothing came within ``timeout_s``; EOFError when the
        worker closed its end (it died) or wrote something that is not a reply."""
        ready, _, _ = select.select([self.replies], [], [], timeout_s)
        if not ready:
            return None
        line = self.replies.readline()
        if not line.endswith(b"\n"):
            raise EOFError("no reply")
        try:
            return json.loads(line)
        except ValueError:
            raise EOFError("not a reply") from None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            logger.error("reward-function worker %d did not die after SIGKILL", self.process.pid)
        for pipe in (self.requests, self.replies):
            try:
                pipe.close()
            except OSError:
                pass


def _how_it_died(exitcode: int | None) -> str:
    if exitcode is None:
        return "its process stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = (
            " (out of memory? the kernel's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
        )
        return f"its process was killed by {name}{hint}"
    return f"its process exited with code {exitcode}"


class SubprocessPool:
    """``size`` worker processes; ``call`` is thread-safe (one call per worker at a time)."""

    def __init__(
        self,
        size: int,
        *,
        targets: Sequence[str] = (),
        python_path: Sequence[str] = (),
        preload: Sequence[str] = (),
        memory_mb: int = 0,
        name: str = "reward-fn",
    ) -> None:
        if size < 1:
            raise ValueError(f"pool size must be >= 1, got {size}")
        self.size = size
        self._preload = list(preload)
        self.name = name
        self._targets = list(targets)
        self._python_path = list(python_path)
        self._memory_mb = memory_mb
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._workers: set[_Worker] = set()
        self._closed = False
        self.stats = PoolStats()
        # Every worker is started by this one long-lived thread: PR_SET_PDEATHSIG fires when the
        # *thread* that started a process ends, so a worker started by a short-lived thread (a
        # restart, a caller's) would be killed with it.
        self._spawns: queue.Queue[Future | None] = queue.Queue()
        threading.Thread(target=self._spawner, name=f"{name}-spawner", daemon=True).start()
        started = [self._spawn() for _ in range(size)]
        errors = []
        for worker in started:
            try:
                self._await_ready(worker)
            except PoolStartError as exc:
                errors.append(str(exc))
                worker.kill()
            else:
                self._add(worker)
        if errors:
            self.close()
            raise PoolStartError(errors[0])

    # -- workers --------------------------------------------------------------------------------

    def _spawner(self) -> None:
        while (request := self._spawns.get()) is not None:
            try:
                request.set_result(self._start_process())
            except BaseException as exc:  # handed to the caller
                request.set_exception(exc)

    def _spawn(self) -> _Worker:
        request: Future = Future()
        self._spawns.put(request)
        return request.result()

    def _start_process(self) -> _Worker:
        call_r, call_w = os.pipe()
        reply_r, reply_w = os.pipe()
        config = {
            "python_path": self._python_path, "preload": self._preload,
            "targets": self._targets, "memory_mb": self._memory_mb,
        }  # fmt: skip
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "services.reward.functions.invoke",
                 str(call_r), str(reply_w), json.dumps(config)],
                stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(), pass_fds=(call_r, reply_w),
            )  # fmt: skip
        finally:
            os.close(call_r)
            os.close(reply_w)
        return _Worker(process, os.fdopen(call_w, "wb", buffering=0), os.fdopen(reply_r, "rb"))

    def _await_ready(self, worker: _Worker) -> None:
        try:
            message = worker.read_reply(_READY_TIMEOUT_S)
        except EOFError:
            message = None
        if isinstance(message, dict) and message.get("ready"):
            errors = message.get("errors") or []
            if errors:
                raise PoolStartError("; ".join(str(e) for e in errors))
            return
        try:
            worker.process.wait(0.5)
        except subprocess.TimeoutExpired:
            pass
        raise PoolStartError(
            f"a {self.name} worker did not start: {_how_it_died(worker.process.poll())}"
        )

    def _add(self, worker: _Worker) -> None:
        with self._lock:
            if self._closed:
                worker.kill()
                return
            self._workers.add(worker)
        self._idle.put(worker)

    def _discard(self, worker: _Worker) -> None:
        with self._lock:
            self._workers.discard(worker)
        worker.kill()

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` and start another in the background (the caller does not wait)."""
        self._discard(worker)
        self.stats.restarts += 1
        threading.Thread(target=self._restart, name=f"{self.name}-restart", daemon=True).start()

    def _restart(self) -> None:
        delay = _RESTART_BACKOFF_S[0]
        while not self._closed:
            try:
                worker = self._spawn()
                self._await_ready(worker)
            except (OSError, PoolStartError) as exc:
                logger.error("%s: could not start a replacement worker: %s", self.name, exc)
                time.sleep(delay)
                delay = min(delay * 2, _RESTART_BACKOFF_S[1])
                continue
            self._add(worker)
            return

    # -- calls ----------------------------------------------------------------------------------

    def call(self, target: str, payload: dict, timeout_s: float, *, queue_s: float = 60.0) -> dict:
        """Run ``target`` on ``payload`` in a worker; its JSON result, or ``CallError``.

        ``timeout_s`` bounds the run itself; ``queue_s`` bounds waiting for a free worker.
        """
        deadline = time.monotonic() + queue_s
        while True:
            try:
                worker = self._idle.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise CallError(
                    "busy", f"all {self.size} {self.name} workers were busy for {queue_s:g} s"
                ) from None
            if worker.alive():
                break
            self._replace(worker)  # died while idle (killed from outside): not this call's fault
        self.stats.calls += 1
        try:
            message = json.dumps({"target": target, "payload": payload}).encode() + b"\n"
            worker.requests.write(message)
        except (OSError, ValueError) as exc:
            self._replace(worker)
            self.stats.crashes += 1
            raise CallError("crashed", f"could not send the call to its worker: {exc}") from None
        try:
            reply = worker.read_reply(timeout_s)
        except EOFError:
            try:
                worker.process.wait(1.0)
            except subprocess.TimeoutExpired:
                pass
            how = _how_it_died(worker.process.poll())
            self._replace(worker)
            self.stats.crashes += 1
            raise CallError("crashed", f"did not return: {how}") from None
        if reply is None:
            self._replace(worker)
            self.stats.timeouts += 1
            raise CallError(
                "timeout",
                f"took longer than its deadline of {timeout_s:g} s; its worker process was "
                "killed and replaced",
            )
        worker.calls += 1
        self._idle.put(worker)
        if not reply.get("ok"):
            self.stats.raised += 1
            raise CallError("raised", str(reply.get("error", "failed")))
        return reply.get("result") or {}

    def pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._workers]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._workers)
            self._workers.clear()
        self._spawns.put(None)
        for worker in workers:
            worker.kill()
