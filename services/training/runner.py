"""The training process of one job: ``python -m services.training.runner --job-dir DIR
--data-address ADDR`` (one per rank under ``torchrun`` / ``deepspeed``).

The job directory protocol, as the service expects it:
- reads ``<job_dir>/spec.binpb`` (a serialized ``TrainingJobSpec``); the data service token comes
  from the ``LLAMAFLEET_TOKEN`` environment variable (never argv);
- rank 0 appends events to ``<job_dir>/events.jsonl``: RUNNING at the start, metrics every
  ``logging_steps``, log lines, ``checkpoint_saved``, ``adapter_published``; never a terminal
  state (the service writes that after the process exits);
- rank 0 writes ``<job_dir>/result.json`` ``{"state", "message", "step"}`` atomically at the end:
  SUCCEEDED, CANCELLED (after SIGTERM: the current optimizer step finishes, a checkpoint is saved,
  exit 0) or FAILED (one line saying what and where; the traceback goes to stderr, i.e.
  ``runner.log``; exit 1). After SIGKILL there is no result.json.

``--data-address file://DIR`` reads rows from ``DIR/train.binpb`` / ``DIR/eval.binpb`` instead of
a data service (offline runs and tests).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from llamafleet.bases import base_name
from llamafleet.training.v1 import training_pb2 as tpb

from services.common import queues
from services.training.jobs.events import EventLog
from services.training.jobs.process import DEFAULT_BASE_ENV, PPO_REDIS_URL_ENV
from services.training.loop.batches import open_source
from services.training.loop.trainer import TrainResult
from services.training.ppo import exchange
from services.training.recipes import RECIPES
from services.training.spec.settings import INIT_ADAPTER_DIR, settings
from services.training.spec.validation import validate

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"
SPEC_FILE = "spec.binpb"
LEVELS = {
    logging.DEBUG: tpb.LOG_LEVEL_DEBUG,
    logging.INFO: tpb.LOG_LEVEL_INFO,
    logging.WARNING: tpb.LOG_LEVEL_WARNING,
    logging.ERROR: tpb.LOG_LEVEL_ERROR,
}


def write_result(job_dir: Path, state: str, message: str, step: int) -> None:
    """``result.json``, written to a temporary file and renamed."""
    tmp = job_dir / f".{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps({"state": state, "message": message, "step": step}) + "\n")
    os.replace(tmp, job_dir / RESULT_FILE)


def one_line(exc: BaseException) -> str:
    """``Type: message (at file.py:LINE in function)`` for the innermost project frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "services" in f.filename] or frames
    where = (
        f" (at {Path(ours[-1].filename).name}:{ours[-1].lineno} in {ours[-1].name})" if ours else ""
    )
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}{where}"


class EventReporter:
    """The trainer's ``Reporter`` writing job events (rank 0)."""

    def __init__(self, log: EventLog) -> None:
        self.log = log

    def metrics(self, record: dict) -> None:
        m = tpb.TrainingMetrics(step=record["step"])
        for name, value in record.items():
            if "/" in name:  # stage-specific, e.g. "eval_rewards/accuracy"
                m.extra[name] = value
        if record.get("eval_only"):  # an evaluation: eval loss and/or benchmark accuracies
            if "eval_loss" in record:
                m.eval_loss = record["eval_loss"]
        else:
            m.epoch = record["epoch"]
            m.loss = record["loss"]
            m.learning_rate = record["learning_rate"]
            if record["grad_norm"] == record["grad_norm"]:  # not NaN
                m.grad_norm = record["grad_norm"]
            m.tokens_per_second = record["tokens_per_second"]
            m.eta.FromMilliseconds(int(record["eta_seconds"] * 1000))
            if record.get("eval_loss") is not None:
                m.eval_loss = record["eval_loss"]
        self.log.append(tpb.TrainingEvent(metrics=m))

    def checkpoint(self, step: int, path: Path, adapter_version: int) -> None:
        ckpt = tpb.Checkpoint(step=step, path=str(path), adapter_version=adapter_version)
        ckpt.create_time.GetCurrentTime()
        self.log.append(tpb.TrainingEvent(checkpoint_saved=ckpt))

    def adapter(self, version: int, step: int, path: Path, size_bytes: int) -> None:
        published = tpb.AdapterVersion(version=version, step=step, size_bytes=size_bytes)
        published.create_time.GetCurrentTime()
        self.log.append(tpb.TrainingEvent(adapter_published=published))


class EventLogHandler(logging.Handler):
    """Log records of the training code (INFO and up) as ``log`` events."""

    def __init__(self, log: EventLog, rank: int) -> None:
        super().__init__(logging.INFO)
        self.log, self.rank = log, rank

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = tpb.LogLine(
                level=LEVELS.get(record.levelno, tpb.LOG_LEVEL_ERROR),
                message=record.getMessage(),
                rank=self.rank,
                logger=record.name,
            )
            self.log.append(tpb.TrainingEvent(log=line))
        except Exception:  # a log line must never kill training
            self.handleError(record)


def recipe_arguments(recipe: str, job_id: str, base_model: str = "") -> dict:
    """What a recipe needs beyond the data: ``ppo`` its exchange with the fleets, over the
    work-queue Redis the service names in the environment (never argv: it may hold a password),
    publishing to the rollout tasks stream of the job's base (``base_model``'s name; the
    single-base stream unless the cluster's default base, also in the environment, is another)."""
    if recipe not in ("ppo", "grpo"):
        return {}
    url = os.environ.get(PPO_REDIS_URL_ENV, "")
    if not url:
        raise RuntimeError(
            f"STAGE_{recipe.upper()} needs the work-queue Redis: {PPO_REDIS_URL_ENV} is not set (the training "
            "service sets it from its redis_url; configure LLAMAFLEET_TRAINING_REDIS_URL)"
        )
    base = base_name(base_model) if base_model else ""
    stream = queues.rollout_tasks_stream(base, os.environ.get(DEFAULT_BASE_ENV, ""))
    return {"exchange": exchange.connect(url, job_id, tasks_stream=stream), "job_id": job_id}


def run(job_dir: Path, data_address: str) -> int:
    """Train the job in ``job_dir``; returns the process exit code."""
    rank = int(os.environ.get("RANK", "0"))
    stop = {"requested": False}

    def on_sigterm(signum, frame) -> None:
        logger.info("SIGTERM: finishing the current step, then saving and stopping")
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_sigterm)
    events = EventLog(job_dir)
    step = 0
    try:
        spec = tpb.TrainingJobSpec()
        spec.ParseFromString((job_dir / SPEC_FILE).read_bytes())
        validate(spec)
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        resolved = settings(spec, device)
        if spec.HasField("init_adapter") or spec.adapter_path:  # the copy made at creation
            imported = job_dir / INIT_ADAPTER_DIR
            if not (imported / "adapter_config.json").is_file():
                raise ValueError(f"the job's starting adapter is missing: no {imported}")
            resolved = dataclasses.replace(resolved, init_adapter=str(imported))
        if rank == 0:
            events.append(
                tpb.TrainingEvent(
                    state_change=tpb.StateChange(
                        previous_state=tpb.JOB_STATE_QUEUED, state=tpb.JOB_STATE_RUNNING
                    )
                )
            )
            logging.getLogger("services.training").addHandler(EventLogHandler(events, rank))
        from services.training.loop.distributed import init_world, shutdown

        world = init_world(resolved)
        job_id = spec.job_id or job_dir.name
        source = open_source(spec, data_address, job_id, os.environ.get("LLAMAFLEET_TOKEN", ""))
        output_dir = Path(spec.output_dir) if spec.output_dir else job_dir / "output"
        result: TrainResult = RECIPES[resolved.recipe](
            resolved,
            source,
            job_dir,
            output_dir=output_dir,
            world=world,
            reporter=EventReporter(events) if rank == 0 else None,
            should_stop=lambda: stop["requested"],
            **recipe_arguments(resolved.recipe, job_id, spec.base_model),
        )
        step = result.step
        if rank == 0:
            write_result(job_dir, result.state, result.message, result.step)
        shutdown(world)
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure must reach result.json
        logger.error("training failed:\n%s", traceback.format_exc())
        if rank == 0:
            write_result(job_dir, "FAILED", one_line(exc), step)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.training.runner")
    parser.add_argument("--job-dir", required=True, type=Path, help="the job directory")
    parser.add_argument(
        "--data-address", default="", help="data service host:port, or file://DIR of rows"
    )
    args = parser.parse_args(argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
    )
    return run(args.job_dir.resolve(), args.data_address)


if __name__ == "__main__":
    sys.exit(main())
