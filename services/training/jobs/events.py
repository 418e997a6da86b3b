"""A job's event log: ``<job_dir>/events.jsonl``, one ``TrainingEvent`` per line.

The log is the job's history and the source of ``WatchTrainingJob``: an event's ``sequence`` is
its 1-based line number, so a watcher that reconnects with ``after_sequence=N`` resumes exactly
after the last event it saw, even across a service restart. One writer at a time: the service
appends QUEUED and the final state, the job's rank-0 process everything in between. Each line is
written with one ``write`` call and flushed, so a reader never sees half an event unless the
writer died mid-line (such a last line is ignored until it is complete).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from google.protobuf import json_format
from llamafleet.training.v1 import training_pb2

EVENTS_FILE = "events.jsonl"


class EventLog:
    def __init__(self, job_dir: str | os.PathLike) -> None:
        self.path = Path(job_dir) / EVENTS_FILE
        self._known: tuple[int, int] = (-1, 0)  # (file size, line count) after our last look

    def count(self) -> int:
        size = self.path.stat().st_size if self.path.exists() else 0
        if size != self._known[0]:  # someone else appended: count again
            self._known = (size, sum(1 for _ in self._complete_lines()))
        return self._known[1]

    def append(self, event: training_pb2.TrainingEvent) -> training_pb2.TrainingEvent:
        """Stamp ``event`` with the next sequence number and time, and append it."""
        stamped = training_pb2.TrainingEvent()
        stamped.CopyFrom(event)
        stamped.sequence = self.count() + 1
        if not stamped.HasField("time"):
            stamped.time.GetCurrentTime()
        line = json.dumps(json_format.MessageToDict(stamped), separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
        self._known = (self.path.stat().st_size, stamped.sequence)
        return stamped

    def read(self, after_sequence: int = 0) -> Iterator[training_pb2.TrainingEvent]:
        """Events with ``sequence > after_sequence``, in order."""
        for number, line in enumerate(self._complete_lines(), start=1):
            if number > after_sequence:
                yield json_format.ParseDict(json.loads(line), training_pb2.TrainingEvent())

    def _complete_lines(self) -> Iterator[str]:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                if line.endswith("\n"):
                    yield line
