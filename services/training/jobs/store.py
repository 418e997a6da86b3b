"""A job folder read back into a ``TrainingJob``: the job store's on-disk half.

Everything about a job is derived from its folder, so that its state survives a service restart:
``spec.binpb`` (the normalised spec), ``events.jsonl`` (its history, see ``events``),
``checkpoints/step-<N>/``, ``adapters/v<K>/`` (PEFT folders, each published by an atomic rename)
and the runner's ``result.json``. ``JobView`` folds new event lines into the derived fields as
they appear (``EventTail`` reads only what was appended since its last look). This module knows
nothing about processes; ``manager`` runs them.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from google.protobuf import json_format, timestamp_pb2
from llamafleet.training.v1 import training_pb2 as pb

from services.common.errors import NotFound, invalid
from services.training.adapters import store as adapter_store
from services.training.jobs.events import EVENTS_FILE
from services.training.spec.normalize import TERMINAL_STATES

logger = logging.getLogger(__name__)

SPEC_FILE = "spec.binpb"
RESULT_FILE = "result.json"
CHECKPOINT_DIR = re.compile(r"^step-(\d+)$")
ADAPTER_DIR = re.compile(r"^v(\d+)$")
TOTAL_STEPS_KEY = "total_steps"  # TrainingMetrics.extra key a runner may use for the plan


class EventTail:
    """Reads the complete lines appended to an event log since the last ``poll``."""

    def __init__(self, job_dir: Path, after_sequence: int = 0) -> None:
        self.path = Path(job_dir) / EVENTS_FILE
        self.offset = 0
        self.sequence = 0  # line number of the last complete line read
        self.after = after_sequence

    def poll(self) -> list[pb.TrainingEvent]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        events, pos = [], 0
        while (end := data.find(b"\n", pos)) >= 0:
            line, pos = data[pos:end], end + 1
            self.sequence += 1
            if self.sequence <= self.after:
                continue
            try:
                event = json_format.ParseDict(json.loads(line), pb.TrainingEvent())
            except (ValueError, json_format.ParseError) as exc:
                logger.warning(
                    "%s line %d is not an event (%s); skipped", self.path, self.sequence, exc
                )
                continue
            event.sequence = self.sequence
            events.append(event)
        self.offset += pos
        return events


def repair_event_log(job_dir: Path) -> None:
    """Drop a half-written last line (a writer died mid-line) before the service appends."""
    path = Path(job_dir) / EVENTS_FILE
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        logger.warning("%s: dropping a half-written last line (%d bytes)", path, len(data) - keep)
        with open(path, "r+b") as fh:
            fh.truncate(keep)


def read_spec(job_dir: Path) -> pb.TrainingJobSpec:
    return pb.TrainingJobSpec.FromString((Path(job_dir) / SPEC_FILE).read_bytes())


def write_spec(job_dir: Path, spec: pb.TrainingJobSpec) -> None:
    path = Path(job_dir) / SPEC_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(spec.SerializeToString(deterministic=True))
    tmp.replace(path)


def read_result(job_dir: Path) -> dict | None:
    """The runner's ``result.json``, or None when absent or unreadable."""
    path = Path(job_dir) / RESULT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("%s is unreadable (%s); treated as missing", path, exc)
        return None
    if not isinstance(data, dict) or data.get("state") not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        logger.warning("%s has no final state (SUCCEEDED, FAILED or CANCELLED); ignored", path)
        return None
    return data


def _timestamp_of(path: Path) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(path.stat().st_mtime_ns)
    return ts


class JobView:
    """One job's derived state, kept current by folding in new events."""

    def __init__(self, job_dir: Path) -> None:
        self.dir = Path(job_dir)
        self.spec = read_spec(self.dir)
        self.id = self.spec.job_id
        self.job = pb.TrainingJob(id=self.id)
        self._tail = EventTail(self.dir)
        self._adapter_events: dict[int, pb.AdapterVersion] = {}
        self._checkpoint_versions: dict[int, int] = {}
        self.refresh()

    @property
    def state(self) -> int:
        return self.job.state

    @property
    def terminal(self) -> bool:
        return self.job.state in TERMINAL_STATES

    def set_spec(self, spec: pb.TrainingJobSpec) -> None:
        write_spec(self.dir, spec)
        self.spec = spec

    def refresh(self) -> None:
        for event in self._tail.poll():
            self._apply(event)
        self.job.last_event_sequence = self._tail.sequence

    def _apply(self, event: pb.TrainingEvent) -> None:
        job, kind = self.job, event.WhichOneof("event")
        if kind == "state_change":
            change = event.state_change
            job.state = change.state
            if change.state == pb.JOB_STATE_QUEUED:
                if not job.HasField("create_time"):
                    job.create_time.CopyFrom(event.time)
                for name in ("start_time", "end_time"):
                    job.ClearField(name)
                job.failure_message = ""
            elif change.state == pb.JOB_STATE_RUNNING and not job.HasField("start_time"):
                job.start_time.CopyFrom(event.time)
            elif change.state in TERMINAL_STATES:
                job.end_time.CopyFrom(event.time)
                job.failure_message = change.message if change.state == pb.JOB_STATE_FAILED else ""
        elif kind == "metrics":
            job.latest_metrics.CopyFrom(event.metrics)
            job.latest_step = max(job.latest_step, event.metrics.step)
            total = event.metrics.extra.get(TOTAL_STEPS_KEY)
            if total:
                job.total_steps = int(total)
        elif kind == "checkpoint_saved":
            ckpt = event.checkpoint_saved
            job.latest_step = max(job.latest_step, ckpt.step)
            self._checkpoint_versions[ckpt.step] = ckpt.adapter_version
        elif kind == "adapter_published":
            version = pb.AdapterVersion()
            version.CopyFrom(event.adapter_published)
            if not version.HasField("create_time"):
                version.create_time.CopyFrom(event.time)
            self._adapter_events[version.version] = version

    def checkpoints(self) -> list[pb.Checkpoint]:
        """Checkpoints still on disk, oldest first."""
        out = []
        root = self.dir / "checkpoints"
        steps_to_version = {v.step: k for k, v in self.adapter_dirs_by_version().items()}
        for step, path in _numbered_dirs(root, CHECKPOINT_DIR):
            version = self._checkpoint_versions.get(step) or steps_to_version.get(step, 0)
            out.append(
                pb.Checkpoint(
                    step=step,
                    path=str(path),
                    create_time=_timestamp_of(path),
                    adapter_version=version,
                )
            )
        return out

    def adapter_dirs_by_version(self) -> dict[int, pb.AdapterVersion]:
        """Published versions (folder present) with step and time; sha256 left empty."""
        out = {}
        for version, path in _numbered_dirs(self.dir / "adapters", ADAPTER_DIR):
            known = self._adapter_events.get(version)
            entry = pb.AdapterVersion(version=version, step=known.step if known else 0)
            entry.create_time.CopyFrom(known.create_time if known else _timestamp_of(path))
            out[version] = entry
        return out

    @property
    def publishes_versions(self) -> bool:
        """LoRA jobs publish adapter versions; GRPO jobs with FULL/FREEZE publish full-weights
        policy versions (``common.full_weights``) the same way. Other jobs publish none."""
        return (
            self.spec.finetuning.type == pb.FINETUNING_TYPE_LORA or self.spec.stage == pb.STAGE_GRPO
        )

    def adapter_path(self, version: int) -> Path:
        return self.dir / "adapters" / f"v{version}"

    def resolve_adapter(self, version: int) -> tuple[int, Path, pb.AdapterVersion]:
        """(version, folder, entry) of a published version; 0 = the latest. NotFound otherwise."""
        versions = self.adapter_dirs_by_version()
        if not self.publishes_versions:
            raise NotFound(
                f"job {self.id!r} trains no adapter (finetuning type "
                f"{pb.FinetuningType.Name(self.spec.finetuning.type)})",
                reason="ADAPTER_NOT_FOUND",
            )
        if version < 0:
            raise invalid("adapter.version", "must be >= 0 (0 = the latest)")
        if version == 0:
            if not versions:
                raise NotFound(
                    f"job {self.id!r} has published no adapter version yet",
                    reason="ADAPTER_NOT_FOUND",
                )
            version = max(versions)
        if version not in versions:
            have = ", ".join(str(v) for v in sorted(versions)) or "none"
            raise NotFound(
                f"job {self.id!r} has no adapter version {version} (published: {have})",
                reason="ADAPTER_VERSION_NOT_FOUND",
            )
        return version, self.adapter_path(version), versions[version]

    def hash_adapters(self) -> None:
        """Compute (and cache) the archive sha256 of every published version."""
        for version in self.adapter_dirs_by_version():
            adapter_store.archive_info(self.adapter_path(version))

    def adapter_versions(self) -> list[pb.AdapterVersion]:
        """Published versions, oldest first, with the sha256 and size FetchAdapter serves."""
        out = []
        for version, entry in sorted(self.adapter_dirs_by_version().items()):
            _, info = adapter_store.archive_info(self.adapter_path(version))
            entry.sha256, entry.size_bytes = info.sha256, info.total_size
            out.append(entry)
        return out

    def describe(self) -> pb.TrainingJob:
        self.refresh()
        job = pb.TrainingJob()
        job.CopyFrom(self.job)
        job.spec.CopyFrom(self.spec)
        job.checkpoints.extend(self.checkpoints())
        if not job.total_steps and job.checkpoints:
            job.total_steps = _planned_steps(Path(job.checkpoints[-1].path))
        if self.publishes_versions:
            job.adapter_id = self.id
            job.adapter_versions.extend(self.adapter_versions())
        dataset_file = self.dir / "dataset_id"
        if dataset_file.is_file():
            job.dataset_id = dataset_file.read_text(encoding="utf-8").strip()
        return job


def _numbered_dirs(root: Path, pattern: re.Pattern) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for entry in os.scandir(root):
        match = pattern.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found)


def _planned_steps(checkpoint: Path) -> int:
    """``total_steps`` from a checkpoint's ``state.json`` (the runner's plan), 0 if absent."""
    try:
        return int(json.loads((checkpoint / "state.json").read_text()).get("total_steps") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0
