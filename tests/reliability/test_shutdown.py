"""Graceful shutdown. Each of the four services, as a real process, SIGTERMed: health flips to
NOT_SERVING first (while its RPCs still answer), and only after ``shutdown_delay_s`` does the
port refuse; the process exits 0. In-process, with a slow test servicer on the shared server:
in-flight calls finish inside the grace period, new calls are refused meanwhile, and a call
longer than the grace period is cut when it ends."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llamafleet.data.v1 import data_service_pb2 as data_pb
from llamafleet.data.v1 import data_service_pb2_grpc as data_grpc
from llamafleet.reward.v1 import reward_service_pb2 as reward_pb
from llamafleet.reward.v1 import reward_service_pb2_grpc as reward_grpc
from llamafleet.rollout.v1 import rollout_service_pb2 as rollout_pb
from llamafleet.rollout.v1 import rollout_service_pb2_grpc as rollout_grpc
from llamafleet.training.v1 import training_service_pb2 as training_pb
from llamafleet.training.v1 import training_service_pb2_grpc as training_grpc
from reliability_harness import report, start_service, wait_serving

from services.common.config import ServerConfig
from services.common.server import ServiceHost, register_servicer

DELAY_S, GRACE_S = 2.0, 3.0
# One cheap RPC per service, to show calls are still answered while health says NOT_SERVING.
PROBES = {
    "data": lambda ch: data_grpc.DataServiceStub(ch).ListDatasets(
        data_pb.ListDatasetsRequest(), timeout=5
    ),
    "training": lambda ch: training_grpc.TrainingServiceStub(ch).ListTrainingJobs(
        training_pb.ListTrainingJobsRequest(), timeout=5
    ),
    "rollout": lambda ch: rollout_grpc.RolloutServiceStub(ch).ListAdapters(
        rollout_pb.ListAdaptersRequest(), timeout=5
    ),
    "reward": lambda ch: reward_grpc.RewardServiceStub(ch).ScoreRollouts(
        reward_pb.ScoreRolloutsRequest(), timeout=5
    ),
}


def probe_code(name: str, channel: grpc.Channel) -> grpc.StatusCode:
    try:
        PROBES[name](channel)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def refuses(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_each_service_drains_on_sigterm(tmp_path, procs):
    args = [f"shutdown_delay_s={DELAY_S}", f"grace_s={GRACE_S}"]
    for name in PROBES:
        procs.append(start_service(name, tmp_path / name, *args))
    for svc in procs:
        wait_serving(svc)
    channels = {svc.name: grpc.insecure_channel(svc.address) for svc in procs}
    for svc in procs:
        assert probe_code(svc.name, channels[svc.name]) != grpc.StatusCode.UNAVAILABLE
    timeline = {svc.name: {} for svc in procs}

    sent = time.monotonic()
    for svc in procs:
        svc.proc.send_signal(signal.SIGTERM)
    deadline = sent + DELAY_S + GRACE_S + 60
    while time.monotonic() < deadline and not all("exit" in t for t in timeline.values()):
        for svc in procs:
            t, now = timeline[svc.name], time.monotonic() - sent
            if "exit" in t:
                continue
            if svc.proc.poll() is not None:
                t["exit"], t["rc"] = now, svc.proc.returncode
                continue
            status = health_status(channels[svc.name])
            if status == "NOT_SERVING" and "not_serving" not in t:
                t["not_serving"] = now
                t["probe_while_draining"] = probe_code(svc.name, channels[svc.name]).name
            elif status == "UNAVAILABLE" and "refused" not in t and refuses(svc.address):
                t["refused"] = now
            elif status == "SERVING" and "not_serving" in t:
                t["serving_again"] = now
        time.sleep(0.05)
    for channel in channels.values():
        channel.close()

    rounded = {
        n: {k: round(v, 2) if isinstance(v, float) else v for k, v in t.items()}
        for n, t in timeline.items()
    }
    report("graceful_shutdown_processes", delay_s=DELAY_S, grace_s=GRACE_S, timeline=rounded)
    for name, t in timeline.items():
        assert t.get("rc") == 0, (name, t, [s.tail() for s in procs if s.name == name])
        assert "not_serving" in t, (name, t)  # health flipped before the port went away
        assert "serving_again" not in t, (name, t)
        assert t["probe_while_draining"] != "UNAVAILABLE", (name, t)  # still answering
        refused_at = t.get("refused", t["exit"])
        assert t["not_serving"] < refused_at, (name, t)
        assert refused_at >= DELAY_S * 0.9, (name, t)  # stayed up through the delay
        assert refuses(procs[list(PROBES).index(name)].address), name


def health_status(channel: grpc.Channel) -> str:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=1
        )
    except grpc.RpcError as err:
        return err.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


# -- in-flight calls, in-process ------------------------------------------------------------

SERVICE = data_pb.DESCRIPTOR.services_by_name["DataService"].full_name


class SlowServicer(data_grpc.DataServiceServicer):
    """ListDatasets sleeps as long as the call's ``x-sleep-s`` metadata says."""

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0
        self.cancelled = 0

    async def ListDatasets(self, request, context):
        sleep_s = float(dict(context.invocation_metadata()).get("x-sleep-s", "0"))
        self.started += 1
        try:
            await asyncio.sleep(sleep_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        return data_pb.ListDatasetsResponse()


def test_in_flight_calls_finish_within_grace_and_new_calls_are_refused():
    delay_s, grace_s, short_s = 0.5, 4.0, 2.5

    async def scenario():
        servicer = SlowServicer()
        config = replace(ServerConfig(), shutdown_delay_s=delay_s, grace_s=grace_s)
        host = ServiceHost(
            "slow",
            config,
            register_servicer(data_grpc.add_DataServiceServicer_to_server, servicer, SERVICE),
        )
        await host.start()
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = data_grpc.DataServiceStub(channel)

            async def call(sleep_s: float):
                started = time.monotonic()
                try:
                    await stub.ListDatasets(
                        data_pb.ListDatasetsRequest(),
                        timeout=60,
                        metadata=[("x-sleep-s", str(sleep_s))],
                    )
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as err:
                    code = err.code()
                return code, time.monotonic() - started

            short = [asyncio.create_task(call(short_s)) for _ in range(3)]
            long = asyncio.create_task(call(60))
            while servicer.started < 4:
                await asyncio.sleep(0.01)
            t0 = time.monotonic()
            stopping = asyncio.create_task(host.stop())
            # New calls are answered through the delay, then refused while the others finish.
            served_during_delay = 0
            while True:
                code, _ = await call(0)
                if code != grpc.StatusCode.OK:
                    break
                served_during_delay += 1
                await asyncio.sleep(0.02)
            refused_at, refused_code = time.monotonic() - t0, code
            short_done_when_refused = sum(t.done() for t in short)
            results = await asyncio.gather(*short, long)
            await stopping
            stop_s = time.monotonic() - t0
        return {
            "served_during_delay": served_during_delay,
            "refused_at_s": round(refused_at, 2),
            "refused_code": refused_code.name,
            "short_done_when_refused": short_done_when_refused,
            "short": [(c.name, round(s, 2)) for c, s in results[:3]],
            "long": (results[3][0].name, round(results[3][1], 2)),
            "stop_s": round(stop_s, 2),
            "cancelled": servicer.cancelled,
        }

    out = asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    report("graceful_shutdown_in_flight", delay_s=delay_s, grace_s=grace_s, **out)
    assert out["served_during_delay"] >= 1
    # UNAVAILABLE once the port refuses; CANCELLED for a call that reached the server in the
    # instant it stopped (grpc cancels calls it had accepted but not started; seen once under load)
    assert out["refused_code"] in ("UNAVAILABLE", "CANCELLED")
    assert out["refused_at_s"] >= delay_s * 0.9
    assert out["short_done_when_refused"] == 0  # refused while in-flight calls still ran
    assert all(code == "OK" for code, _s in out["short"])  # and those finished
    assert out["long"][0] != "OK" and out["cancelled"] == 1  # past the grace: cut
    assert delay_s + grace_s * 0.9 <= out["stop_s"] <= delay_s + grace_s + 10
