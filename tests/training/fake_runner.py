"""A stand-in for the training core's runner that follows the job-folder protocol, without ML.

``python fake_runner.py JOB_DIR`` reads ``spec.binpb`` and, for ``hyperparameters.max_steps``
steps (``FAKE_STEP_S`` seconds each): appends RUNNING, a metrics event per step (and a log line),
and every ``save_steps`` a checkpoint ``checkpoints/step-N/`` and an adapter version
``adapters/vK/`` (both renamed into place), each announced by an event; then ``result.json``.
With ``resume`` it starts after the latest checkpoint. SIGTERM: checkpoint, CANCELLED, exit.
``FAKE_MODE``: ``ok``; ``crash`` (exit 3 after step 2, no result.json); ``fail`` (result FAILED);
``ignore_term`` (SIGTERM is ignored, so the service must SIGKILL). ``FAKE_ADAPTER_SRC``: a
PEFT folder copied as each adapter version instead of made-up bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from llamafleet.training.v1 import training_pb2 as pb

from services.training.jobs.events import EventLog

job_dir = Path(sys.argv[1])
spec = pb.TrainingJobSpec.FromString((job_dir / "spec.binpb").read_bytes())
mode = os.environ.get("FAKE_MODE", "ok")
step_s = float(os.environ.get("FAKE_STEP_S", "0.02"))
adapter_bytes = int(os.environ.get("FAKE_ADAPTER_BYTES", "3000000"))
total = spec.hyperparameters.max_steps or 4
save_every = spec.hyperparameters.save_steps or total
log = EventLog(job_dir)
stop = {"requested": False}

if mode == "ignore_term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))


def emit(**kw) -> None:
    log.append(pb.TrainingEvent(**kw))


def publish(path: Path, write) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    write(tmp)
    tmp.rename(path)


def save(step: int) -> None:
    adapters = job_dir / "adapters"
    version = 1 + max((int(p.name[1:]) for p in adapters.glob("v*")), default=0)

    def write_adapter(folder: Path) -> None:
        if os.environ.get("FAKE_ADAPTER_SRC"):  # a real PEFT folder made by the test
            for src in Path(os.environ["FAKE_ADAPTER_SRC"]).iterdir():
                (folder / src.name).write_bytes(src.read_bytes())
            return
        (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "step": step}))
        seed = hashlib.sha256(f"{spec.job_id}:{step}".encode()).digest()
        weights = (seed * (adapter_bytes // len(seed) + 1))[:adapter_bytes]
        (folder / "adapter_model.safetensors").write_bytes(weights)

    def write_checkpoint(folder: Path) -> None:
        (folder / "state.json").write_text(json.dumps({"step": step}))

    publish(job_dir / "checkpoints" / f"step-{step}", write_checkpoint)
    emit(checkpoint_saved=pb.Checkpoint(step=step, adapter_version=version))
    publish(adapters / f"v{version}", write_adapter)
    emit(adapter_published=pb.AdapterVersion(version=version, step=step))


def finish(state: str, message: str, step: int) -> None:
    (job_dir / "result.json").write_text(
        json.dumps({"state": state, "message": message, "step": step})
    )
    sys.exit(0)


start = 0
if spec.resume:
    steps = [int(p.name[5:]) for p in (job_dir / "checkpoints").glob("step-*")]
    start = max(steps, default=0)
emit(state_change=pb.StateChange(previous_state=pb.JOB_STATE_QUEUED, state=pb.JOB_STATE_RUNNING))
print(f"fake runner pid {os.getpid()} from step {start}", flush=True)
step = start
for step in range(start + 1, total + 1):
    time.sleep(step_s)
    metrics = pb.TrainingMetrics(
        step=step, epoch=step / total, loss=1.0 / step, learning_rate=1e-4, grad_norm=0.5,
        tokens_per_second=1000.0 + step,
    )  # fmt: skip
    metrics.eta.seconds = int((total - step) * step_s)
    metrics.extra["total_steps"] = total
    emit(metrics=metrics)
    emit(log=pb.LogLine(level=pb.LOG_LEVEL_INFO, message=f"step {step} done", logger="fake"))
    if step % save_every == 0 or step == total:
        save(step)
    if mode == "crash" and step == 2:
        os._exit(3)
    if mode == "fail" and step == 2:
        finish("FAILED", "loss became NaN at step 2", step)
    if stop["requested"]:
        if step % save_every:
            save(step)
        finish("CANCELLED", f"cancelled at step {step}", step)
finish("SUCCEEDED", "", step)
