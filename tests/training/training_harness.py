"""A training service in a background thread, with the fake runner: for job, service and CLI tests.

The service runs on a real ``ServiceHost`` (loopback, port 0) in its own event loop thread, so tests
talk to it with the ordinary synchronous ``llamafleet.client.Client``. ``fake_launcher`` starts
``fake_runner.py``; its behaviour is chosen by the job id's prefix (``crash-``, ``fail-``,
``slow-``, ``stubborn-``), so one service can run every kind of job.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from llamafleet.client import Client
from llamafleet.data.v1 import data_pb2
from llamafleet.training.v1 import training_pb2 as pb

from services.common.server import ServiceHost
from services.training.config import TrainingConfig
from services.training.jobs.manager import JobManager
from services.training.server import make_register

FAKE_RUNNER = Path(__file__).with_name("fake_runner.py")
MODES = {"crash": "crash", "fail": "fail", "slow": "ok", "stubborn": "ignore_term"}


def fake_launcher(spec, job_dir, data_address, token):
    prefix = spec.job_id.split("-", 1)[0]
    env = {"FAKE_MODE": MODES.get(prefix, "ok")}
    env["FAKE_STEP_S"] = "0.4" if prefix in ("slow", "stubborn") else "0.01"
    return [sys.executable, str(FAKE_RUNNER), str(job_dir)], env


def config(jobs_dir: Path, **kw) -> TrainingConfig:
    """A test service: base models may come from the pytest session's temporary folder (where
    the tiny models are built), outputs and exports go under the test's own folder."""
    jobs_dir = Path(jobs_dir)
    base = TrainingConfig(
        jobs_dir=str(jobs_dir), cancel_grace_s=1.5, poll_interval_s=0.05,
        shutdown_delay_s=0.0, grace_s=0.5,
        model_roots=str(jobs_dir.parent.parent), export_roots=str(jobs_dir.parent),
    )  # fmt: skip
    return replace(base, **kw)


def make_spec(base_model: Path, job_id: str = "", steps: int = 4, save_steps: int = 2):
    spec = pb.TrainingJobSpec(job_id=job_id, base_model=str(base_model), stage=pb.STAGE_SFT)
    source = spec.dataset.spec.sources.add()
    source.registry.CopyFrom(data_pb2.RegistryEntry(dataset_dir="data", name="alpaca_en_demo"))
    spec.hyperparameters.max_steps = steps
    spec.hyperparameters.save_steps = save_steps
    return spec


def fake_base_model(folder: Path) -> Path:
    """A folder that passes the service's checks (the fake runner never loads it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


class TrainingService:
    """The service (and its job manager) running until ``stop``; restartable on the same dir."""

    def __init__(self, cfg: TrainingConfig, launcher=fake_launcher, validator=lambda spec: None):
        self.config = cfg
        self.manager = JobManager(cfg, launcher=launcher, validator=validator).start()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.host = ServiceHost("training", cfg, make_register(cfg, self.manager))
        self._run(self.host.start())
        self.client = Client({"training": self.host.address}, timeout=30)

    def _run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def training(self):
        return self.client.training

    def stop(self) -> None:
        """Stop serving and watching; runners keep running (as after a service crash)."""
        self.client.close()
        self._run(self.host.stop(grace=0))
        self.manager.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def kill_runners(jobs_dir: Path) -> None:
    """Test teardown: SIGKILL the process group of every runner still recorded in a pid file."""
    import json
    import os
    import signal

    for pid_file in Path(jobs_dir).glob("*/runner.pid"):
        try:
            os.killpg(json.loads(pid_file.read_text())["pid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass
