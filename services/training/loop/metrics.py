"""The human-facing outputs of a job in its output folder: ``metrics.jsonl``, TensorBoard event
files (``tensorboard/``) and ``loss_curve.png``, and the experiment trackers a job names
(LLaMA-Factory's ``report_to``), through their own packages, never a network service:
``wandb`` in offline mode (``<output>/wandb/``, ``wandb sync`` uploads it later) and ``mlflow`` with
a local file store (``<output>/mlruns``, ``mlflow ui --backend-store-uri``). A named tracker whose
package is missing is an error, never skipped (``spec.validation`` refuses it before launch).

``metrics.jsonl`` is appended to (a resumed job continues it); a step logged twice, before a kill
and again after the resume, is plotted once (the later record wins). TensorBoard and matplotlib
are optional imports: without them the job still trains and says which extra to install.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "loss_curve.png"


class MetricsWriter:
    """Appends metric records to ``metrics.jsonl`` and TensorBoard (rank 0 only)."""

    def __init__(
        self, output_dir: str | Path, report_to: tuple[str, ...] = (), run_name: str = ""
    ) -> None:
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / METRICS_FILE
        self.trackers = [open_tracker(name, self.dir, run_name or self.dir.parent.name)
                         for name in report_to if name not in ("none", "tensorboard")]  # fmt: skip
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"))
        except ImportError:
            logger.warning("tensorboard is not installed (pip install llamafleet[train])")

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        if self._tb is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self._tb.add_scalar(f"train/{key}" if "/" not in key else key, value, step)
            self._tb.flush()
        numbers = {k: float(v) for k, v in record.items()
                   if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip
        for tracker in self.trackers:
            tracker.log(numbers, int(record["step"]))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


TRACKERS = {"wandb": "wandb", "mlflow": "mlflow"}  # report_to name -> the module it needs


class WandbTracker:
    """wandb in offline mode: the run is written under ``<output>/wandb`` and never uploaded."""

    def __init__(self, folder: Path, name: str) -> None:
        import wandb

        self.run = wandb.init(project="llamafleet", name=name, dir=str(folder), mode="offline",
                              reinit="create_new")  # fmt: skip

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """mlflow with a local file store (``<output>/mlruns``): no tracking server."""

    def __init__(self, folder: Path, name: str) -> None:
        from mlflow.tracking import MlflowClient

        # mlflow 3 keeps the file store in maintenance mode behind this opt-in; a job writes
        # its own folder and needs neither a server nor a database
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=(folder / "mlruns").resolve().as_uri())
        experiment = self.client.get_experiment_by_name("llamafleet")
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment("llamafleet")
        )
        self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]  # "/" is allowed
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def open_tracker(name: str, folder: Path, run_name: str):
    """The tracker ``name`` writing under ``folder``; an unknown or uninstalled one is an error
    naming it (never a silent no-op)."""
    if name not in TRACKERS:
        raise ValueError(
            f"report_to: unknown tracker {name!r}; use none, tensorboard, {', '.join(TRACKERS)}"
        )
    try:
        tracker = {"wandb": WandbTracker, "mlflow": MlflowTracker}[name](folder, run_name)
    except ImportError as exc:
        raise RuntimeError(
            f"report_to: {name} is not installed on the training machine ({exc}); "
            "pip install 'llamafleet[trackers]'"
        ) from None
    logger.info("report_to %s: writing under %s", name, folder)
    return tracker


def read_metrics(output_dir: str | Path) -> list[dict]:
    """The records of ``metrics.jsonl``, one per step (the last one logged for each step)."""
    path = Path(output_dir) / METRICS_FILE
    if not path.exists():
        return []
    by_step: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_step.setdefault(int(record["step"]), {}).update(record)
    return [by_step[s] for s in sorted(by_step)]


def plot_loss_curve(output_dir: str | Path) -> Path | None:
    """Draw train (and eval) loss against step into ``loss_curve.png``."""
    records = read_metrics(output_dir)
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in records if r.get("eval_loss") is not None]
    if not train and not evals:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install llamafleet[train]): no plot")
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per trained token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(output_dir) / CURVE_FILE
    fig.savefig(path)
    plt.close(fig)
    return path
