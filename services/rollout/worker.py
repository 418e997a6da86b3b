"""The rollout queue worker: ``RolloutTask``s from ``llamafleet:rollout:tasks`` -> ``Rollout``s.

Consumes the stream in the ``rollout`` consumer group with ``services.common.queues.WorkQueue``
(at-least-once delivery; each task takes effect once because the commit marks ``task.item_id``
done, publishes its ``Rollout``s to ``llamafleet:rollout:results`` and acks, in one Lua script).
In a cluster with several base models the streams are those of the worker's base
(``RolloutConfig.tasks_stream``/``results_stream``: ``llamafleet:rollout:tasks:<base>`` ...), so
a worker never sees a task meant for another base.

**Batching.** A worker keeps up to ``max_inflight`` tasks in its engine at once: free slots are
filled with one fetch (``XAUTOCLAIM`` + ``XREADGROUP COUNT``), every task's request goes to an
``EngineScheduler`` at once (continuous batching on ``vllm``; static batches with left padding
and a KV cache on ``hf``), new tasks stream in as others finish, and the finished ones are
committed together in one pipelined round trip (each still its own atomic script). One
``queues.LeaseKeeper`` thread renews the leases of all tasks in hand in one pipelined round
trip per third of the lease (not a thread per task). A worker SIGKILLed with a batch in hand
commits nothing of it: the entries stay pending and are re-claimed after the lease.

**Groups.** A task with ``num_samples`` = n > 1 is one engine request with n samples; each sample
becomes its own ``Rollout`` with its own deterministic id (``sample_ids``), all committed in the
task's one atomic commit, each carrying ``group_id``/``group_size``/``group_index``.

A task whose adapter version is missing has it fetched from training first; a task that keeps
failing (an adapter version training does not have, an adapter trained on another base model:
ADAPTER_BASE_MISMATCH, a malformed payload, bad sampling parameters) is dead-lettered with the
reason after ``max_deliveries`` attempts.
"""

from __future__ import annotations

import logging
import queue as queue_mod
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError
from llamafleet.rollout.v1 import rollout_pb2
from redis import exceptions as rexc

from services.common import queues
from services.common.errors import FieldViolation, InvalidArgument
from services.common.queues import Delivery, LeaseKeeper, Outcome, Output, WorkQueue
from services.rollout.convert import FINISH_REASONS
from services.rollout.engines import Completion, GenerationRequest
from services.rollout.generator import Generator, Pinned
from services.rollout.scheduler import EngineScheduler

logger = logging.getLogger(__name__)

GROUP = "rollout"
_BACKOFF_MIN_S = 0.2
_BACKOFF_MAX_S = 5.0


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(max(0, int(seconds * 1e9)))
    return d


def sample_ids(task: rollout_pb2.RolloutTask, n: int) -> list[tuple[str, int]]:
    """``(item_id, sample_index)`` of each sample of ``task`` generated as a group of ``n``.

    One sample: the task's own id and index. A group: sample k is numbered
    ``sample_index * n + k`` and named by the task's id with its last ``:<sample_index>``
    replaced, so the group task ``job:v:step:prompt:0`` with n = 8 gives the ids of the eight
    one-sample tasks ``job:v:step:prompt:0`` .. ``:7`` (ids stay deterministic and unchanged
    for consumers)."""
    if n == 1:
        return [(task.item_id, task.sample_index)]
    prefix, sep, last = task.item_id.rpartition(":")
    if not sep or last != str(task.sample_index):
        raise InvalidArgument(
            f"task {task.item_id!r} asks for num_samples={n} but its item_id does not end in "
            f"':{task.sample_index}' (its sample_index); a group task's samples are named "
            "'<prefix>:<sample_index * num_samples + k>'",
            reason="BAD_TASK",
            violations=[FieldViolation("item_id", "must end in ':<sample_index>'")],
        )
    first = task.sample_index * n
    return [(f"{prefix}:{first + k}", first + k) for k in range(n)]


@dataclass(eq=False)
class _Job:
    """One delivery in hand: from fetch to commit."""

    delivery: Delivery
    picked_up: float = field(default_factory=time.time)
    task: rollout_pb2.RolloutTask | None = None
    ids: list[tuple[str, int]] = field(default_factory=list)
    pinned: Pinned | None = None
    future: Future | None = None
    started: float = 0.0
    finished: float = 0.0
    error: Exception | None = None


class RolloutWorker:
    """Turns deliveries into rollouts, ``max_inflight`` at a time; ``start``/``stop`` run the
    loop in a thread."""

    def __init__(
        self,
        queue: WorkQueue,
        generator: Generator,
        *,
        max_inflight: int = 1,
        block_ms: int = 500,
        on_fatal: Callable[[str], object] | None = None,
        results_stream: str = queues.ROLLOUT_RESULTS,
    ) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self.queue = queue
        self.generator = generator
        self.results_stream = results_stream  # where the rollouts go (the base's own stream)
        self.max_inflight = max_inflight
        self.block_ms = block_ms
        self.on_fatal = on_fatal  # told why, when the loop ends by itself (the process stops)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failure: Exception | None = None  # why the loop ended by itself, if it did
        self._scheduler: EngineScheduler | None = None
        self._lock = threading.Lock()
        self._inflight: dict[str, _Job] = {}  # entry id -> job, from fetch to commit
        self._done: queue_mod.Queue[_Job] = queue_mod.Queue()
        self.committed = 0  # tasks committed by this worker (figures)
        self.commit_batches = 0  # pipelined commit round trips
        self.fetch_s = 0.0  # time in fetch + checks + pins + submit (figures)
        self.commit_s = 0.0  # time building rollouts and committing them (figures)

    # --- one task -----------------------------------------------------------------------------

    def _scheduler_for(self) -> EngineScheduler:
        engine = self.generator.require_engine()
        if self._scheduler is None or self._scheduler.engine is not engine:
            self._scheduler = EngineScheduler(engine)
        return self._scheduler

    def _begin(self, job: _Job) -> GenerationRequest:
        """Parse and check the task and pin its adapter: the request to hand to the engine."""
        delivery = job.delivery
        try:
            task = rollout_pb2.RolloutTask.FromString(delivery.payload)
        except DecodeError:
            raise InvalidArgument(
                f"payload of {delivery.item_id} is not a RolloutTask", reason="BAD_TASK"
            ) from None
        if task.item_id != delivery.item_id:
            raise InvalidArgument(
                f"entry id {delivery.item_id!r} differs from task.item_id {task.item_id!r}",
                reason="BAD_TASK",
            )
        gen = self.generator
        gen.require_engine()
        n = task.num_samples or 1
        if not 1 <= n <= gen.config.max_n:
            raise InvalidArgument(
                f"task {task.item_id}: num_samples={task.num_samples} is outside "
                f"1..{gen.config.max_n} (the rollout service's max_n)",
                reason="BAD_TASK",
                violations=[FieldViolation("num_samples", f"must be in 0..{gen.config.max_n}")],
            )
        params = rollout_pb2.SamplingParams()
        params.CopyFrom(task.sampling)
        params.n = n  # RolloutTask ignores sampling.n: num_samples is the group
        sampling = gen.sampling(params, allow_n=True)
        job.ids = sample_ids(task, n)
        prompt = gen.check_prompt(task.prompt_ids)
        job.task = task
        job.pinned = gen.pin(task.adapter)
        return GenerationRequest(prompt, sampling, job.pinned.name)

    def _outputs(self, job: _Job, completions: list[Completion]) -> list[Output]:
        task, pinned = job.task, job.pinned
        assert task is not None and pinned is not None
        engine = self.generator.require_engine()
        created = task.create_time.ToNanoseconds() / 1e9
        queue_s = job.picked_up - created if created else 0.0
        timings = rollout_pb2.RolloutTimings(
            queue_time=_duration(queue_s),
            adapter_load_time=_duration(pinned.load_time_s),
            generation_time=_duration(job.finished - job.started),
        )
        outputs = []
        for k, (completion, (item_id, index)) in enumerate(zip(completions, job.ids, strict=True)):
            if completion.finish_reason is None:  # pragma: no cover - engines always finish
                raise RuntimeError(f"engine {engine.name} ended {item_id} without a reason")
            sample = rollout_pb2.RolloutTask()
            sample.CopyFrom(task)
            sample.item_id, sample.sample_index = item_id, index
            rollout = rollout_pb2.Rollout(
                task=sample,
                completion_ids=completion.token_ids,
                logprobs=completion.logprobs,
                finish_reason=FINISH_REASONS[completion.finish_reason],
                completion_text=completion.text,
                engine=engine.name,
                adapter_version=task.adapter.version if task.adapter.id else 0,
                worker=self.queue.consumer,
                timings=timings,
                group_id=task.item_id,
                group_size=len(job.ids),
                group_index=k,
            )
            outputs.append((self.results_stream, item_id, rollout.SerializeToString()))
        return outputs

    def handle(self, delivery: Delivery) -> list[Output]:
        """One delivery alone, to its outputs (the loop batches; this is for direct use)."""
        job = _Job(delivery)
        try:
            request = self._begin(job)
            job.started = time.perf_counter()
            completions = self._scheduler_for().submit(request).result()
            job.finished = time.perf_counter()
            return self._outputs(job, completions)
        finally:
            if job.pinned is not None and job.task is not None:
                self.generator.unpin(job.task.adapter)

    # --- the loop -----------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rollout-worker", daemon=True)
        self._thread.start()
        logger.info(
            "rollout worker %s consuming %s (group %s), up to %d tasks in flight",
            self.queue.consumer,
            self.queue.stream,
            self.queue.group,
            self.max_inflight,
        )

    def _run(self) -> None:
        try:
            with LeaseKeeper(self.queue, self._held, self._lost):
                self._loop()
        except queues.RedisUnusable as exc:  # wrong password, ACL, not Redis: no retry helps
            self.failure = exc
            logger.error("rollout worker stopped: %s", exc)
        except Exception as exc:
            self.failure = exc
            logger.exception("rollout worker stopped on an unexpected error")
        if self.failure is not None and self.on_fatal is not None:
            self.on_fatal(f"rollout worker stopped: {self.failure}")

    def _held(self) -> list[Delivery]:
        with self._lock:
            return [job.delivery for job in self._inflight.values()]

    def _lost(self, delivery: Delivery) -> None:
        with self._lock:
            held = delivery.entry_id in self._inflight
        if held:  # else it was committed meanwhile
            logger.warning(
                "lost the lease on %s (entry %s): its result will be discarded",
                delivery.item_id,
                delivery.entry_id,
            )

    def _start_jobs(self, deliveries: list[Delivery]) -> None:
        """Check and pin each, then hand all their requests to the engine together."""
        ready: list[tuple[_Job, GenerationRequest]] = []
        for delivery in deliveries:
            job = _Job(delivery)
            with self._lock:
                self._inflight[delivery.entry_id] = job  # the lease keeper renews it from now on
            try:
                ready.append((job, self._begin(job)))
            except Exception as exc:
                job.error = exc
                self._done.put(job)
        if not ready:
            return
        try:
            futures = self._scheduler_for().submit_many([request for _job, request in ready])
        except Exception as exc:
            for job, _request in ready:
                job.error = exc
                self._done.put(job)
            return
        now = time.perf_counter()
        for (job, _request), future in zip(ready, futures, strict=True):
            job.started, job.future = now, future
            future.add_done_callback(lambda _f, job=job: self._finished(job))

    def _finished(self, job: _Job) -> None:
        job.finished = time.perf_counter()
        self._done.put(job)

    def _collect(self, wait_s: float) -> list[_Job]:
        """Finished jobs: the first waited for up to ``wait_s``, then all that are ready."""
        out: list[_Job] = []
        try:
            out.append(self._done.get(timeout=wait_s) if wait_s > 0 else self._done.get_nowait())
        except queue_mod.Empty:
            return out
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue_mod.Empty:
                return out

    def _settle(self, jobs: list[_Job]) -> None:
        """Commit the finished ``jobs`` in one pipelined round trip; fail the ones that raised.
        Raises RedisError with nothing forgotten: the caller keeps ``jobs`` and retries."""
        commits: list[tuple[_Job, list[Output]]] = []
        failures: list[tuple[_Job, Exception]] = []
        for job in jobs:
            if job.error is None and job.future is not None:
                try:
                    commits.append((job, self._outputs(job, job.future.result())))
                    continue
                except Exception as exc:
                    job.error = exc
            failures.append((job, job.error or RuntimeError("no result")))
        outcomes = self.queue.commit_many([(job.delivery, outs) for job, outs in commits])
        for (job, _outs), outcome in zip(commits, outcomes, strict=True):
            if outcome is Outcome.LOST:
                logger.warning(
                    "result for %s discarded: its lease was lost to another consumer",
                    job.delivery.item_id,
                )
            elif outcome is Outcome.DUPLICATE:
                logger.info("%s was already done by %s; acked the duplicate", job.delivery.item_id,
                            self.queue.group)  # fmt: skip
        for job, exc in failures:
            d = job.delivery
            logger.warning(
                "task %s failed (delivery %d of at most %d): %s: %s",
                d.item_id, d.times_delivered, self.queue.max_deliveries, type(exc).__name__, exc,
            )  # fmt: skip
            self.queue.fail(d, f"{type(exc).__name__}: {exc}")
        if commits:
            self.commit_batches += 1
            self.committed += len(commits)
        for job in jobs:
            self._forget(job)

    def _forget(self, job: _Job) -> None:
        with self._lock:
            self._inflight.pop(job.delivery.entry_id, None)
        if job.pinned is not None and job.task is not None:
            self.generator.unpin(job.task.adapter)
            job.pinned = None

    def _loop(self) -> None:
        q = self.queue
        backoff = _BACKOFF_MIN_S
        need_group = True
        ready: list[_Job] = []  # finished, not yet committed (kept across Redis outages)
        while True:
            stopping = self._stop.is_set()
            with self._lock:
                in_hand = len(self._inflight)
            if stopping and not in_hand:
                return
            try:
                if need_group:
                    q.ensure_group()
                    need_group = False
                room = self.max_inflight - in_hand
                if not stopping and room > 0:
                    fetched = []
                    for delivery in q.fetch(room, None if in_hand else self.block_ms):
                        if self._stop.is_set():
                            q.release(delivery)  # not started: others may take it right away
                            continue
                        fetched.append(delivery)
                    if fetched:
                        began = time.perf_counter()
                        self._start_jobs(fetched)
                        self.fetch_s += time.perf_counter() - began
                with self._lock:
                    in_hand = len(self._inflight)
                if in_hand > len(ready):
                    # a free slot is refilled within 50 ms; a full worker just waits for results
                    wait = 0.05 if (room > 0 and not stopping) else 0.5
                    ready.extend(self._collect(wait if not ready else 0))
                if ready:
                    began = time.perf_counter()
                    self._settle(ready)
                    self.commit_s += time.perf_counter() - began
                    ready = []
                backoff = _BACKOFF_MIN_S
            except rexc.RedisError as exc:
                if isinstance(exc, rexc.ResponseError) and "NOGROUP" in str(exc):
                    logger.warning("group %s on %s is gone (%s); recreating", q.group, q.stream,
                                   exc)  # fmt: skip
                    need_group = True
                    self._stop.wait(backoff)
                    continue
                if not queues.is_transient(exc):
                    raise q.unusable(exc) from exc
                # Unreachable, restarting, loading, full, read-only or busy: nothing is lost
                # (commits are all-or-nothing scripts); finished results wait in ``ready`` and
                # are committed when the server accepts work again.
                logger.warning(
                    "redis unavailable for %s/%s (%s: %s); retrying in %.1fs",
                    q.stream, q.group, type(exc).__name__, exc, backoff,
                )  # fmt: skip
                time.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop fetching; tasks in hand finish and commit first (up to ``timeout``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._scheduler is not None and not self._scheduler.continuous:
            self._scheduler.close(timeout=1.0)
            self._scheduler = None


def make_worker(
    generator: Generator,
    redis_url: str,
    *,
    lease_ms: int,
    max_deliveries: int,
    max_inflight: int = 1,
    on_fatal: Callable[[str], object] | None = None,
    tasks_stream: str = queues.ROLLOUT_TASKS,
    results_stream: str = queues.ROLLOUT_RESULTS,
):
    """A worker on the rollout tasks stream (of its base: ``tasks_stream``) with the service's
    delivery policy, publishing to ``results_stream``."""
    r = queues.connect(redis_url, client_name="rollout-worker")
    queue = WorkQueue(
        r,
        stream=tasks_stream,
        group=GROUP,
        lease_ms=lease_ms,
        max_deliveries=max_deliveries,
    )
    return RolloutWorker(
        queue,
        generator,
        max_inflight=max_inflight,
        on_fatal=on_fatal,
        results_stream=results_stream,
    )
