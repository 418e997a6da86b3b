"""A job's runner as a process: how it is launched, recorded, checked and signalled.

The runner runs in its own session (its pid is its process group id), so a cancel reaches every
process it started (torchrun / deepspeed workers). ``runner.pid`` records the pid with the
process's start time, so a service that restarts re-attaches only to the very same process, never
to an unrelated one that reused the pid. ``default_launcher`` is ``launch.runner_command`` once a
data service is configured; tests inject others.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from llamafleet.training.v1 import training_pb2 as pb

from services.common.errors import FailedPrecondition
from services.training.jobs import launch

logger = logging.getLogger(__name__)

PID_FILE = "runner.pid"
# The work-queue Redis of a STAGE_PPO runner (the service's redis_url; never argv: it may hold a
# password).
PPO_REDIS_URL_ENV = "LLAMAFLEET_REDIS_URL"
# ... and the cluster's default base (the service's default_base): which rollout queue is whose.
DEFAULT_BASE_ENV = "LLAMAFLEET_DEFAULT_BASE"
LOG_FILE = "runner.log"

# (spec, job_dir, data_address, token) -> (argv, extra environment)
Launcher = Callable[[pb.TrainingJobSpec, Path, str, str], tuple[list[str], dict[str, str]]]


def default_launcher(spec, job_dir, data_address, token):
    """The runner command of ``launch.runner_command``, once a data service is configured."""
    if not data_address:
        raise FailedPrecondition(
            "this training service has no data service to read the job's batches from: set "
            "data_address (LLAMAFLEET_TRAINING_DATA_ADDRESS, host:port)",
            reason="NO_DATA_SERVICE",
        )
    return launch.runner_command(spec, job_dir, data_address, token)


def proc_start(pid: int) -> str | None:
    """The process's start time (clock ticks after boot), or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


class RunnerProcess:
    """The runner process of one job, owned (Popen) or re-attached after a restart (pid)."""

    def __init__(self, pid: int, start: str | None, proc: subprocess.Popen | None = None):
        self.pid, self.start, self.proc = pid, start, proc
        self.kill_at: float | None = None
        self.killed = False

    def exit_code(self) -> tuple[bool, int | None]:
        """(alive, returncode when known)."""
        if self.proc is not None:
            code = self.proc.poll()
            return code is None, code
        return self.start is not None and proc_start(self.pid) == self.start, None

    def signal(self, sig: int) -> None:
        if self.proc is None and proc_start(self.pid) != self.start:
            return  # not our process any more
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def spawn(job_dir: Path, argv: list[str], env: dict[str, str]) -> RunnerProcess:
    """Start the runner in a new session with its output in ``runner.log``; record its pid.

    Raises OSError when the command cannot be started."""
    with open(job_dir / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )
    run = RunnerProcess(proc.pid, proc_start(proc.pid), proc)
    tmp = job_dir / (PID_FILE + ".tmp")
    tmp.write_text(json.dumps({"pid": run.pid, "start": run.start}))
    tmp.replace(job_dir / PID_FILE)
    return run


def attach(job_dir: Path) -> RunnerProcess | None:
    """The runner recorded in ``runner.pid`` if that very process is still alive."""
    try:
        data = json.loads((job_dir / PID_FILE).read_text())
        run = RunnerProcess(int(data["pid"]), data.get("start"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return run if run.exit_code()[0] else None


def death_message(code: int | None) -> str:
    if code is None:
        return "the runner died (exit status unknown: an earlier service instance started it)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the runner died (killed by {name})"
    if code == 0:
        return "the runner exited without writing result.json"
    return f"the runner died (exit code {code})"
