"""The job event log: sequence numbers are line numbers, reads resume after a sequence."""

from __future__ import annotations

from llamafleet.training.v1 import training_pb2 as pb

from services.training.jobs.events import EventLog


def _metrics(step: int) -> pb.TrainingEvent:
    return pb.TrainingEvent(metrics=pb.TrainingMetrics(step=step, loss=1.0 / step))


def test_sequences_continue_across_writers_and_resume(tmp_path):
    service = EventLog(tmp_path)
    first = service.append(pb.TrainingEvent(state_change=pb.StateChange(state=pb.JOB_STATE_QUEUED)))
    assert first.sequence == 1 and first.HasField("time")
    runner = EventLog(tmp_path)  # another process's writer
    for step in (1, 2, 3):
        runner.append(_metrics(step))
    last = service.append(
        pb.TrainingEvent(state_change=pb.StateChange(state=pb.JOB_STATE_SUCCEEDED))
    )
    assert last.sequence == 5
    assert [e.sequence for e in EventLog(tmp_path).read()] == [1, 2, 3, 4, 5]
    resumed = list(EventLog(tmp_path).read(after_sequence=2))
    assert [e.metrics.step for e in resumed[:2]] == [2, 3]
    assert resumed[-1].state_change.state == pb.JOB_STATE_SUCCEEDED


def test_a_half_written_last_line_is_not_read(tmp_path):
    log = EventLog(tmp_path)
    log.append(_metrics(1))
    with open(log.path, "a") as fh:
        fh.write('{"sequence": 2, "metr')  # the writer died mid-line
    assert [e.metrics.step for e in log.read()] == [1]
