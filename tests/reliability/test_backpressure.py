"""Backpressure. A producer that outruns slow worker processes, gated by
``queues.has_capacity``, keeps the group's backlog (lag + pending) under its cap; the same
sampler shows an ungated producer blowing through it. A real service process at its
``max_concurrent_rpcs`` answers RESOURCE_EXHAUSTED and recovers when calls finish."""

from __future__ import annotations

import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llamafleet.data.v1 import data_service_pb2 as data_pb
from llamafleet.data.v1 import data_service_pb2_grpc as data_grpc
from reliability_harness import (
    RESULTS,
    TASKS,
    Fleet,
    audit,
    item_ids,
    report,
    start_service,
    wait_for,
    wait_quiescent,
    wait_serving,
)

from services.common.queues import WorkQueue, backlog, has_capacity, publish

GROUP = "rollout"


class Sampler(threading.Thread):
    """Samples the group's backlog every ``interval`` seconds; keeps the maximum."""

    def __init__(self, r, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.r, self.interval = r, interval
        self.max = self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.max = max(self.max, backlog(self.r, TASKS, GROUP))
            self.samples += 1
            self.stop.wait(self.interval)


def test_gated_producer_keeps_the_backlog_under_its_cap(r, redis_url, tmp_path, fleets):
    cap, batch, n = 20, 5, 200
    bound = cap - 1 + batch  # a batch is admitted while the backlog is at most cap - 1
    WorkQueue(r, TASKS, GROUP).ensure_group()
    fleet = Fleet(redis_url, tmp_path, work_ms={"A": 20.0})
    fleets.append(fleet)
    fleet.start({"A": 2})
    sampler = Sampler(r)
    sampler.start()
    ids, throttled, after_publish = item_ids(n), 0, []
    deadline = time.monotonic() + 120
    started = time.monotonic()
    try:
        k = 0
        while k < n:
            assert time.monotonic() < deadline, "the workers made no room in time"
            if not has_capacity(r, TASKS, GROUP, cap):
                throttled += 1
                time.sleep(0.01)
                continue
            for item in ids[k : k + batch]:
                publish(r, TASKS, item, b"prompt")
            k += batch
            after_publish.append(backlog(r, TASKS, GROUP))
        wait_quiescent(r, timeout=120, stages=("A",))
        elapsed = time.monotonic() - started
        gated_max = max(sampler.max, *after_publish)

        # The same measurement catches a producer that ignores the gate.
        for item in item_ids(100, step=1):
            publish(r, TASKS, item, b"prompt")
        wait_for(lambda: sampler.max > bound, 30, "the sampler to see the ungated burst")
        ungated_max = sampler.max
        wait_quiescent(r, timeout=120, stages=("A",))
    finally:
        sampler.stop.set()
        sampler.join(10)
    fleet.stop()

    result = audit(r, ids + item_ids(100, step=1), final=RESULTS, stages=("A",))
    report(
        "backpressure_gated_producer",
        cap=cap,
        batch=batch,
        bound=bound,
        items=n,
        max_backlog_gated=gated_max,
        max_backlog_ungated=ungated_max,
        throttled_checks=throttled,
        samples=sampler.samples,
        seconds=round(elapsed, 1),
        **result.figures(),
    )
    assert throttled > 0  # the producer really outran the workers
    assert gated_max <= bound
    assert ungated_max > bound
    assert result.problems == []


def test_service_at_its_concurrency_limit_answers_resource_exhausted(tmp_path, procs):
    limit = 4
    svc = start_service("data", tmp_path / "data", f"max_concurrent_rpcs={limit}")
    procs.append(svc)
    wait_serving(svc)
    with grpc.insecure_channel(svc.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        data = data_grpc.DataServiceStub(channel)
        watches = []
        for _ in range(limit):  # Health.Watch streams stay open: each holds one slot
            watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=60)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watches.append(watch)
        codes = []
        for _ in range(5):
            try:
                data.ListDatasets(data_pb.ListDatasetsRequest(), timeout=5)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as err:
                codes.append(err.code())
        watches.pop().cancel()

        def answered() -> bool:
            try:
                data.ListDatasets(data_pb.ListDatasetsRequest(), timeout=5)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False
            return True

        wait_for(answered, 30, "a slot to free up after a call ended")
        for watch in watches:
            watch.cancel()
    report(
        "concurrency_limit_process",
        limit=limit,
        over_limit_calls=len(codes),
        resource_exhausted=codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED),
    )
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 5
