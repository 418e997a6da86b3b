"""The cross-caller batcher on its own, with a recording scorer (the model path is covered in
test_service.py): merging, splitting, keys kept apart, errors delivered to the right callers."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence

import pytest

from services.reward.batching import Batcher, ClosedError


class Recorder:
    """Scores x -> x * factor and records every call's items."""

    def __init__(self, factor: float = 1.0, fail_on: int | None = None, key: Hashable = "k"):
        self.factor, self.fail_on, self._key = factor, fail_on, key
        self.calls: list[list[int]] = []

    @property
    def key(self) -> Hashable:
        return self._key

    def score(self, items: Sequence[int]) -> list[float]:
        self.calls.append(list(items))
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot score {self.fail_on}")
        return [x * self.factor for x in items]


def test_concurrent_callers_share_batches_and_get_their_own_scores():
    batcher = Batcher(max_batch_size=100, max_wait_s=0.2)
    scorer = Recorder(2.0)
    requests = [list(range(10 * i, 10 * i + i + 1)) for i in range(8)]
    results: dict[int, list[float]] = {}

    def caller(i: int) -> None:
        results[i] = batcher.submit(scorer, requests[i]).result(timeout=5)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(scorer.calls) < 8
    for i, request in enumerate(requests):
        assert results[i] == [2.0 * x for x in request]
    batcher.close()


def test_large_requests_split_at_max_batch_size_and_full_batches_go_at_once():
    batcher = Batcher(max_batch_size=4, max_wait_s=10.0)  # only fullness can trigger early
    scorer = Recorder()
    started = time.monotonic()
    future = batcher.submit(scorer, list(range(8)))
    assert future.result(timeout=5) == [float(x) for x in range(8)]
    assert time.monotonic() - started < 5
    assert scorer.calls == [[0, 1, 2, 3], [4, 5, 6, 7]]
    batcher.close()


def test_a_partial_batch_waits_at_most_max_wait():
    batcher = Batcher(max_batch_size=100, max_wait_s=0.05)
    started = time.monotonic()
    assert batcher.submit(Recorder(), [1]).result(timeout=5) == [1.0]
    assert time.monotonic() - started < 1.0
    batcher.close()


def test_different_keys_are_never_mixed():
    batcher = Batcher(max_batch_size=100, max_wait_s=0.1)
    a, b = Recorder(1.0, key="a"), Recorder(-1.0, key="b")
    fa, fb = batcher.submit(a, [1, 2]), batcher.submit(b, [3])
    assert fa.result(timeout=5) == [1.0, 2.0] and fb.result(timeout=5) == [-3.0]
    assert a.calls == [[1, 2]] and b.calls == [[3]]
    batcher.close()


def test_a_failing_batch_fails_its_callers_only():
    batcher = Batcher(max_batch_size=2, max_wait_s=0.1)
    scorer = Recorder(fail_on=99)
    bad = batcher.submit(scorer, [99, 1, 2])  # split: [99, 1] fails, [2] still runs
    with pytest.raises(ValueError, match="cannot score 99"):
        bad.result(timeout=5)
    assert batcher.submit(scorer, [5]).result(timeout=5) == [5.0]
    batcher.close()
    with pytest.raises(ClosedError):
        batcher.submit(scorer, [1])
