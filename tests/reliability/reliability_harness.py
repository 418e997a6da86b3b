"""What the reliability tests share: worker processes, the two-stage pipeline, the audit, and
service processes (``python -m services.<name>`` on a free loopback port).

The pipeline is the design's (DESIGN.md section 2) with synthetic handlers: stage A (group
``rollout``) consumes ``llamafleet:rollout:tasks`` and publishes to ``llamafleet:rollout:results``;
stage B (group ``reward``) consumes those and publishes to ``llamafleet:reward:results:<job>``.

:func:`audit` is the one checker every fault test uses, and the deliberately broken workers
(``worker_proc.py --mode``) are run through the same checker to prove it can fail.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import queues

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker_proc.py")
JOB = "reljob"
TASKS = queues.ROLLOUT_TASKS
RESULTS = queues.ROLLOUT_RESULTS
FINAL = queues.reward_results_stream(JOB)
DEADLETTER = queues.DEADLETTER
STAGES = {  # stage -> (input stream, group, output stream)
    "A": (TASKS, "rollout", RESULTS),
    "B": (RESULTS, "reward", FINAL),
}


def wait_for(pred: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Poll ``pred`` until it is truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def item_ids(n: int, step: int = 0) -> list[str]:
    """Deterministic ids as the design names them: ``job:policy_version:step:shard:sample``."""
    return [f"{JOB}:0:{step}:{k % 4}:{k}" for k in range(n)]


def ids_in(r: redis.Redis, stream: str) -> list[str]:
    out, start = [], "-"
    while batch := r.xrange(stream, min=start, max="+", count=1000):
        out += [fields[b"id"].decode() for _eid, fields in batch]
        start = "(" + batch[-1][0].decode()
    return out


def report(name: str, **figures) -> None:
    """Print a test's figures; append them to $LLAMAFLEET_RELIABILITY_OUT (JSON lines) if set."""
    line = json.dumps({"test": name, **figures}, sort_keys=True)
    print(f"\nFIGURES {line}")
    path = os.environ.get("LLAMAFLEET_RELIABILITY_OUT")
    if path:
        with open(path, "a") as fh:
            fh.write(line + "\n")


# -- the audit ------------------------------------------------------------------------------


@dataclass
class Audit:
    tried: int
    delivered: int  # distinct expected ids in the final stream
    missing: list[str]
    duplicates: int  # entries beyond the first per id
    unexpected: list[str]
    pending: dict[str, int]  # group -> delivered, not acked
    lag: dict[str, int]  # group -> not delivered
    deadlettered: int

    @property
    def problems(self) -> list[str]:
        out = []
        if self.missing:
            out.append(f"{len(self.missing)} lost (e.g. {self.missing[:3]})")
        if self.duplicates:
            out.append(f"{self.duplicates} doubled")
        if self.unexpected:
            out.append(f"{len(self.unexpected)} unexpected ids (e.g. {self.unexpected[:3]})")
        for group in self.pending:
            if self.pending[group] or self.lag[group]:
                out.append(f"group {group}: {self.pending[group]} pending, {self.lag[group]} lag")
        if self.deadlettered:
            out.append(f"{self.deadlettered} dead-lettered")
        return out

    def figures(self) -> dict:
        return {
            "tried": self.tried,
            "lost": len(self.missing),
            "doubled": self.duplicates,
            "pending": sum(self.pending.values()),
            "dead_lettered": self.deadlettered,
        }


def audit(
    r: redis.Redis,
    expected: Iterable[str],
    final: str = FINAL,
    stages: Iterable[str] = ("A", "B"),
) -> Audit:
    """Exactly one output per expected id in ``final``; nothing pending, lagging or dead."""
    expected = list(expected)
    counts = Counter(ids_in(r, final))
    pending, lag = {}, {}
    for stage in stages:
        stream, group, _out = STAGES[stage]
        g = {s.name: s for s in queues.stats(r, stream).groups}.get(group)
        pending[group] = g.pending if g else 0
        lag[group] = g.lag if g else 0
    return Audit(
        tried=len(expected),
        delivered=sum(1 for i in set(expected) if counts[i]),
        missing=sorted(set(expected) - set(counts)),
        duplicates=sum(c - 1 for c in counts.values() if c > 1),
        unexpected=sorted(set(counts) - set(expected)),
        pending=pending,
        lag=lag,
        deadlettered=r.xlen(DEADLETTER),
    )


def quiescent(r: redis.Redis, stages: Iterable[str] = ("A", "B")) -> bool:
    """Every stage's group has delivered everything and has nothing pending."""
    for stage in stages:
        stream, group, _out = STAGES[stage]
        try:
            if queues.backlog(r, stream, group):
                return False
        except ValueError:  # the group does not exist yet
            return False
    return True


def wait_quiescent(r: redis.Redis, timeout: float, stages=("A", "B"), settle: float = 0.6):
    """Quiescent twice, ``settle`` seconds apart, with no new final output in between."""

    def settled() -> bool:
        if not quiescent(r, stages):
            return False
        before = r.xlen(FINAL)
        time.sleep(settle)
        return quiescent(r, stages) and r.xlen(FINAL) == before

    wait_for(settled, timeout, "the pipeline to drain", interval=0.1)


# -- worker processes -----------------------------------------------------------------------


@dataclass
class Worker:
    stage: str
    proc: subprocess.Popen
    consumer: str
    log: Path


@dataclass
class Fleet:
    """Worker processes of the pipeline's stages; kill, stop and replace them."""

    url: str
    workdir: Path
    mode: str = "correct"
    lease_ms: int = 1500
    work_ms: dict[str, float] = field(default_factory=lambda: {"A": 10.0, "B": 5.0})
    post_ms: float = 0.0
    max_deliveries: int = 50
    extra: list[str] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    retired: list[Worker] = field(default_factory=list)
    _serial: int = 0

    def spawn(self, stage: str) -> Worker:
        in_stream, group, out = STAGES[stage]
        self._serial += 1
        consumer = f"{stage}{self._serial}"
        log = self.workdir / f"worker-{consumer}.log"
        args = [
            sys.executable, str(WORKER), "--url", self.url, "--in", in_stream,
            "--group", group, "--out", out, "--log", str(log), "--consumer", consumer,
            "--mode", self.mode, "--lease-ms", str(self.lease_ms),
            "--max-deliveries", str(self.max_deliveries),
            "--work-ms", str(self.work_ms[stage]), "--post-ms", str(self.post_ms), *self.extra,
        ]  # fmt: skip
        with open(self.workdir / f"worker-{consumer}.out", "wb") as out_file:
            proc = subprocess.Popen(
                args, cwd=REPO, stdout=out_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        worker = Worker(stage, proc, consumer, log)
        self.workers.append(worker)
        return worker

    def start(self, per_stage: dict[str, int]) -> Fleet:
        for stage, n in per_stage.items():
            for _ in range(n):
                self.spawn(stage)
        return self

    def live(self, stage: str | None = None) -> list[Worker]:
        return [w for w in self.workers if (stage is None or w.stage == stage)]

    def kill(self, worker: Worker, sig: int = signal.SIGKILL) -> None:
        """Send ``sig``; a SIGKILLed worker is reaped and retired (its log is kept)."""
        worker.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            worker.proc.wait(timeout=30)
            self.workers.remove(worker)
            self.retired.append(worker)

    def stop(self, timeout: float = 20.0) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGCONT)
                w.proc.terminate()
        deadline = time.monotonic() + timeout
        for w in self.workers:
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(timeout=10)
        self.retired += self.workers
        self.workers = []

    def outcomes(self) -> Counter:
        """(outcome, stage) counts from every worker's commit log, dead or alive."""
        counts: Counter = Counter()
        for w in self.retired + self.workers:
            for outcome, _item in read_log(w.log):
                counts[(outcome, w.stage)] += 1
        return counts

    def committed(self, stage: str) -> set[str]:
        """Items whose commit Redis acknowledged to some worker of ``stage``."""
        return {
            item
            for w in self.retired + self.workers
            if w.stage == stage
            for outcome, item in read_log(w.log)
            if outcome == "committed"
        }

    def committed_records(self, stage: str) -> Counter:
        """How many times each item's commit was reported 'committed' to ``stage``'s workers."""
        return Counter(
            item
            for w in self.retired + self.workers
            if w.stage == stage
            for outcome, item in read_log(w.log)
            if outcome == "committed"
        )

    def output_tail(self, n: int = 3) -> str:
        texts = []
        for w in (self.retired + self.workers)[-n:]:
            path = self.workdir / f"worker-{w.consumer}.out"
            text = path.read_text(errors="replace")[-1500:] if path.exists() else ""
            texts.append(f"--- {w.consumer}\n{text}")
        return "\n".join(texts)


def read_log(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split(" ")
        if len(parts) == 2:
            rows.append((parts[0], parts[1]))
    return rows


def held_by(r: redis.Redis, stage: str, consumer: str) -> list[str]:
    """Item ids of ``stage``'s group pending on ``consumer`` (what a kill orphans)."""
    stream, group, _out = STAGES[stage]
    entries = r.xpending_range(stream, group, "-", "+", 100, consumername=consumer)
    items = []
    for entry in entries:
        eid = entry["message_id"]
        for _eid, fields in r.xrange(stream, eid, eid):
            items.append(fields[b"id"].decode())
    return items


def chaos_kills(
    r: redis.Redis,
    fleet: Fleet,
    *,
    kills: int,
    rng: random.Random,
    done: Callable[[], bool],
    budget_s: float,
) -> dict:
    """SIGKILL random workers of both stages mid-item and replace each at once.

    A kill waits until the victim starts a new item (its ``rel:inhand`` changes), then a
    random part of that item's work time, so kills land inside handlers and around commits.
    Stops after ``kills`` kills, when ``done()``, or after ``budget_s``. Returns the counts
    and the (stage, item id) pairs the kills left pending, for :func:`recovered`.
    """
    made = leaving_pending = 0
    orphaned: list[tuple[str, str]] = []
    deadline = time.monotonic() + budget_s
    while made < kills and not done() and time.monotonic() < deadline:
        stage = rng.choice(["A", "B"])
        candidates = fleet.live(stage)
        victim = rng.choice(candidates)
        before = r.hget("rel:inhand", victim.consumer)
        start = time.monotonic()
        while r.hget("rel:inhand", victim.consumer) == before and time.monotonic() - start < 2.0:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 1.5) * fleet.work_ms[stage] / 1000)
        fleet.kill(victim)
        held = held_by(r, stage, victim.consumer)
        made += 1
        leaving_pending += bool(held)
        orphaned += [(stage, item) for item in held]
        fleet.spawn(stage)
        time.sleep(rng.uniform(0.05, 0.25))
    return {"kills": made, "kills_leaving_pending": leaving_pending, "orphaned": orphaned}


def recovered(r: redis.Redis, orphaned: list[tuple[str, str]]) -> int:
    """How many orphaned items another worker finished: their output is in the stage's stream."""
    outputs = {stage: set(ids_in(r, out)) for stage, (_in, _g, out) in STAGES.items()}
    return sum(item in outputs[stage] for stage, item in orphaned)


# -- service processes ----------------------------------------------------------------------


@dataclass
class ServiceProc:
    name: str
    proc: subprocess.Popen
    address_file: Path
    log: Path
    address: str = ""

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""


def service_args(name: str, workdir: Path) -> list[str]:
    """Keys that keep a service's files inside ``workdir`` (each service has its own)."""
    return {
        "data": [
            f"datasets_dir={workdir / 'datasets'}",
            f"registry_dir={workdir / 'registry'}",
            f"dataset_roots={workdir.parent}",
            f"model_roots={workdir.parent}",
        ],
        "training": [f"jobs_dir={workdir / 'jobs'}"],
        "rollout": [f"adapter_cache_dir={workdir / 'adapters'}"],
        "reward": ["rule_threads=1"],
    }[name]


def start_service(name: str, workdir: Path, *args: str) -> ServiceProc:
    """``python -m services.<name>`` on a free loopback port; returns before it serves."""
    workdir.mkdir(parents=True, exist_ok=True)
    address_file = workdir / f"{name}.addr"
    log = workdir / f"{name}.out"
    cmd = [
        sys.executable, "-m", f"services.{name}", "host=127.0.0.1", "port=0",
        f"address_file={address_file}", *service_args(name, workdir), *args,
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    [str(REPO), str(REPO / "clients" / "python"), os.environ.get("PYTHONPATH", "")]
                ),
            },
        )
    return ServiceProc(name, proc, address_file, log)


def health(address: str, credentials=None, timeout: float = 2.0) -> str:
    """The overall health status name, or the gRPC code name if the call failed."""
    channel = (
        grpc.secure_channel(address, credentials)
        if credentials is not None
        else grpc.insecure_channel(address)
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as err:
            return err.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_serving(svc: ServiceProc, timeout: float = 90.0, credentials=None) -> str:
    def ready() -> str | None:
        if svc.proc.poll() is not None:
            raise AssertionError(f"{svc.name} exited with {svc.proc.returncode}:\n{svc.tail()}")
        if not svc.address_file.exists():
            return None
        address = svc.address_file.read_text().strip()
        return address if health(address, credentials, timeout=1.0) == "SERVING" else None

    svc.address = wait_for(ready, timeout, f"{svc.name} to serve", interval=0.1)
    return svc.address


def stop_service(svc: ServiceProc, timeout: float = 30.0) -> None:
    stop_services([svc], timeout)


def stop_services(svcs: Iterable[ServiceProc], timeout: float = 30.0) -> None:
    """SIGTERM them all at once (they drain in parallel), then wait; SIGKILL stragglers."""
    svcs = [s for s in svcs if s.proc.poll() is None]
    for svc in svcs:
        svc.proc.send_signal(signal.SIGCONT)
        svc.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for svc in svcs:
        try:
            svc.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            svc.proc.kill()
            svc.proc.wait(timeout=10)
