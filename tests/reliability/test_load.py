"""A load smoke test on loopback: rounds of thousands of concurrent small RPCs against a real
service process (the data service: health Check and ListDatasets, both through the shared
server's interceptor), with zero errors, a bounded p99 latency, and no memory growth of the
server from round to round (VmRSS from /proc)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llamafleet.data.v1 import data_service_pb2 as data_pb
from llamafleet.data.v1 import data_service_pb2_grpc as data_grpc
from reliability_harness import report, start_service, wait_serving

ROUNDS = max(7, int(os.environ.get("LLAMAFLEET_LOAD_ROUNDS", "8")))
CALLS = int(os.environ.get("LLAMAFLEET_LOAD_CALLS", "2000"))  # per round
IN_FLIGHT = int(os.environ.get("LLAMAFLEET_LOAD_IN_FLIGHT", "500"))  # concurrent calls
# p99 bounds. The machine is shared, so absolute latency says more about the neighbours than
# about the server: the absolute ceiling only catches stalls. The relative bound is load-proof:
# by Little's law the mean latency is in-flight / throughput, and a fair server keeps its p99
# within a small multiple of that (measured 1.1-2.5x here, loaded or not); head-of-line
# blocking or starved calls break it.
P99_CEILING_S = 5.0
P99_OVER_MEAN = 4.0
# The server's RSS alternates by ~10 MB from round to round (allocator pools) around a steady
# floor; a leak lifts the floor. Growth = floor of the last 3 rounds - floor of rounds 1-3
# (round 0 warms up), about 4 rounds apart: 8000 calls, so a leak of >= 1 KiB a call fails.
RSS_GROWTH_LIMIT_MB = 8.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


async def one_round(channel: grpc.aio.Channel) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    gate = asyncio.Semaphore(IN_FLIGHT)
    health = health_pb2_grpc.HealthStub(channel)
    data = data_grpc.DataServiceStub(channel)

    async def call(k: int) -> None:
        nonlocal errors
        async with gate:
            started = time.perf_counter()
            try:
                if k % 2:
                    await health.Check(health_pb2.HealthCheckRequest(), timeout=30)
                else:
                    await data.ListDatasets(data_pb.ListDatasetsRequest(), timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(call(k) for k in range(CALLS)))
    return latencies, errors, time.perf_counter() - started


async def run_rounds(address: str, pid: int) -> list[dict]:
    rounds = []
    async with grpc.aio.insecure_channel(address) as channel:
        for _ in range(ROUNDS):
            latencies, errors, wall = await one_round(channel)
            rounds.append(
                {
                    "calls": len(latencies),
                    "errors": errors,
                    "p50_ms": round(p(latencies, 0.50) * 1000, 1),
                    "p99_ms": round(p(latencies, 0.99) * 1000, 1),
                    "rps": round(len(latencies) / wall),
                    "p99_over_mean": round(p(latencies, 0.99) / (IN_FLIGHT * wall / CALLS), 2),
                    "rss_mb": round(rss_mb(pid), 1),
                }
            )
    return rounds


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.mark.slow
def test_thousands_of_concurrent_rpcs_without_errors_or_memory_growth(tmp_path, procs):
    svc = start_service("data", tmp_path / "data", f"max_concurrent_rpcs={IN_FLIGHT + 64}")
    procs.append(svc)
    wait_serving(svc)
    rounds = asyncio.run(run_rounds(svc.address, svc.proc.pid))
    rss = [r["rss_mb"] for r in rounds]
    growth = min(rss[-3:]) - min(rss[1:4])
    report(
        "load_smoke",
        rounds=ROUNDS,
        calls_per_round=CALLS,
        in_flight=IN_FLIGHT,
        errors=sum(r["errors"] for r in rounds),
        worst_p99_ms=max(r["p99_ms"] for r in rounds),
        worst_p99_over_mean=max(r["p99_over_mean"] for r in rounds[1:]),
        rss_growth_mb=round(growth, 1),
        per_round=rounds,
    )
    assert all(r["calls"] == CALLS and r["errors"] == 0 for r in rounds), rounds
    assert max(r["p99_ms"] for r in rounds) <= P99_CEILING_S * 1000, rounds
    assert max(r["p99_over_mean"] for r in rounds[1:]) <= P99_OVER_MEAN, rounds
    assert growth <= RSS_GROWTH_LIMIT_MB, rounds
