"""Graceful shutdown with real work in hand (issue 9, item 8), on rollout service processes.

- A queue worker generating a task when SIGTERM arrives stops taking tasks at once (while health
  says NOT_SERVING), finishes and commits the one in hand, and the process exits 0; the next
  task stays in the stream, undelivered, for the other workers.
- A ``Generate`` stream in flight at SIGTERM runs to its end within the grace period (every
  token, then its ``finished``), while a new call is refused."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest
from llamafleet.common.v1 import common_pb2
from llamafleet.redis_local import LocalRedis, free_port
from llamafleet.rollout.v1 import rollout_pb2
from llamafleet.rollout.v1 import rollout_service_pb2 as api
from llamafleet.rollout.v1 import rollout_service_pb2_grpc as rpc
from reliability_harness import health, report, start_service, stop_services, wait_for, wait_serving

from services.common import queues
from services.rollout.worker import GROUP

MAX_TOKENS = 200  # a second or more of work (a random tiny model rarely stops early)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from services.training.tiny.model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=3)


@pytest.fixture
def redis_server(tmp_path):
    server = LocalRedis(tmp_path / "redis", free_port()).start()
    yield server
    server.stop()


def task(i: int) -> rollout_pb2.RolloutTask:
    return rollout_pb2.RolloutTask(
        item_id=f"drain:1:0:0:{i}",
        job_id="drain",
        policy_version=1,
        prompt_ids=[1, 10 + i, 20 + i],
        sampling=rollout_pb2.SamplingParams(temperature=1.0, seed=i, max_tokens=MAX_TOKENS),
        adapter=common_pb2.AdapterRef(),
    )


def test_sigterm_lets_the_task_in_hand_commit_and_takes_no_new_one(
    tiny_model, redis_server, tmp_path
):
    svc = start_service(
        "rollout", tmp_path / "rollout", f"base_model={tiny_model}",
        f"redis_url={redis_server.url}", "shutdown_delay_s=1", "grace_s=20",
        "worker_max_inflight=1",  # one task in hand; the batch in hand is the same rule
    )  # fmt: skip
    r = queues.connect(redis_server.url)
    try:
        wait_serving(svc)
        for i in range(2):
            queues.publish(r, queues.ROLLOUT_TASKS, task(i).item_id, task(i).SerializeToString())
        wait_for(
            lambda: r.xpending(queues.ROLLOUT_TASKS, GROUP)["pending"] == 1,
            60,
            "the worker to take the first task",
            interval=0.01,
        )
        time.sleep(0.1)  # past the fetch: generating
        signalled = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        status_during_drain = health(svc.address)
        code = svc.proc.wait(timeout=60)
        exited_after = time.monotonic() - signalled
    finally:
        stop_services([svc])
    assert code == 0, svc.tail()
    assert status_during_drain in ("NOT_SERVING", "UNAVAILABLE"), status_during_drain
    results = [f[b"id"].decode() for _e, f in r.xrange(queues.ROLLOUT_RESULTS)]
    group = next(g for g in r.xinfo_groups(queues.ROLLOUT_TASKS) if g["name"] == GROUP.encode())
    report(
        "shutdown_with_a_task_in_hand",
        committed=results,
        pending=group["pending"],
        undelivered=group["lag"],
        health_during_drain=status_during_drain,
        exit_code=code,
        exited_after_s=round(exited_after, 2),
    )
    assert results == [task(0).item_id]  # the task in hand: finished and committed, once
    assert group["pending"] == 0  # nothing left half-done
    assert group["lag"] == 1  # the second task was never taken: it waits for another worker


def test_a_generate_stream_in_flight_at_sigterm_runs_to_its_end(tiny_model, tmp_path):
    svc = start_service(
        "rollout", tmp_path / "rollout", f"base_model={tiny_model}",
        "shutdown_delay_s=0.5", "grace_s=30",
    )  # fmt: skip
    request = api.GenerateRequest(
        prompt_ids=[1, 5, 9],
        sampling=rollout_pb2.SamplingParams(temperature=1.0, seed=7, max_tokens=MAX_TOKENS),
    )
    tokens, finished, first_token = [], [], threading.Event()
    try:
        wait_serving(svc)
        channel = grpc.insecure_channel(svc.address)

        def consume() -> None:
            for reply in rpc.RolloutServiceStub(channel).Generate(request, timeout=120):
                if reply.HasField("tokens"):
                    tokens.extend(reply.tokens.token_ids)
                    first_token.set()
                else:
                    finished.append(reply.finished)

        stream = threading.Thread(target=consume)
        stream.start()
        assert first_token.wait(60), "no token streamed"
        svc.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # past shutdown_delay_s: the server refuses new calls now
        with pytest.raises(grpc.RpcError) as refused:
            rpc.RolloutServiceStub(grpc.insecure_channel(svc.address)).ListAdapters(
                api.ListAdaptersRequest(), timeout=5
            )
        still_streaming = stream.is_alive()  # the drain overlapped the stream (timing)
        stream.join(90)
        code = svc.proc.wait(timeout=60)
    finally:
        stop_services([svc])
    report(
        "shutdown_with_a_generate_stream",
        tokens=len(tokens),
        finish_reason=[rollout_pb2.FinishReason.Name(f.finish_reason) for f in finished],
        new_call=refused.value.code().name,
        streaming_when_refused=still_streaming,
        exit_code=code,
    )
    assert code == 0, svc.tail()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(finished) == 1 and finished[0].completion_tokens == len(tokens) > 0
