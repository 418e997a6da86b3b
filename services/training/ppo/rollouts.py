"""The PPO trainer's rollout planner: which rollouts each step trains on, and getting them.

``RolloutPlanner`` is the part of the ``ppo`` recipe that talks to the fleets, an object with its
own state (plans, buffer, counts, consumed ids, lost versions, the prompt stream's position); the
trainer hands it the step and the policy's adapter version as arguments:

- **Planning.** Steps are planned in order from the prompt stream (``batches_per_step`` batches
  each), with the stream position before and after, so a checkpoint can say where to resume.
- **Admission.** ``admit(step, adapter_version)`` publishes the tasks of steps
  ``step .. step + max_staleness - 1``; a task names the adapter version the policy had when its
  step was admitted. A step that a crashed run had published (under a version saved after the
  checkpoint) is re-published under that version, so its tasks are de-duplicated, not doubled.
  Every task asks the engines to stop at the trainer's end tokens (``stop_token_ids``: the
  template's end of turn and the base model's eos), where its episode will end.
- **Groups.** A prompt's ``samples_per_prompt`` samples go out as ONE task with
  ``num_samples`` = n (``sample_index`` 0, the id of its sample 0): the rollout worker makes it one
  engine request with n samples and names sample k ``...:<prompt>:k``, exactly the ids of the n
  one-sample tasks this planner used to publish, so ``collect`` waits for the same ids (above
  ``MAX_GROUP`` samples, ``group_size`` splits them into equal groups, task j naming samples
  ``j * size .. j * size + size - 1``). With a seed, each task's seed is distinct and
  reproducible, and the engines still make a group's samples distinct (``hf``: n rows drawn from
  one generator seeded with it; vLLM: sample k seeded with it + k). ``counts.published`` counts samples (scored rollouts expected),
  not tasks, so it still equals ``consumed`` once every step is trained.
  A group is generated and committed atomically (one worker commit publishes all n rollouts,
  once: the commit marks the task done), so the n samples a step trains on normally come from
  one delivery. Should a task ever be generated twice (its done mark lost, e.g. a Redis failover),
  ``collect`` keeps the first copy of each sample id, so a group may mix samples of two
  deliveries. That is accepted: both deliveries sample the same prompt from the same adapter
  version (the task names it), so the mix is still n independent samples of that policy, and a
  step still trains on each sample id exactly once and only when all of its ids are in.
- **Collecting.** ``collect(step)`` waits for one step's scored rollouts through
  ``RolloutExchange``, keeps later steps' for later, skips and acks what a checkpoint had already
  used, never acks early what this run used since its last checkpoint, drops (acks, counts, logs)
  strays, and fails the job on a task dead-lettered upstream instead of waiting for it forever.
- **Refilling.** ``refill(step, batches)`` (the ``grpo`` recipe's dynamic sampling, with
  ``max_staleness`` 1) plans more prompt batches into the admitted step and publishes their tasks
  under its version; ``collect(step, prompts)`` then waits for those prompts' rollouts only.
- **Consuming.** ``consumed(step, received)`` moves the prompt stream's checkpointed position past
  the trained step; ``checkpoint_state`` and ``ack_consumed`` are what a checkpoint records and,
  once it is written, lets Redis forget.

No model code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field

from llamafleet.common.v1 import common_pb2
from llamafleet.data.v1 import data_pb2
from llamafleet.rollout.v1 import rollout_pb2

from services.training.loop.batches import BatchSource, StreamRequest
from services.training.ppo.exchange import Received, RolloutExchange, parse_task_id, task_id
from services.training.spec.settings import Settings

logger = logging.getLogger(__name__)

WAIT_LOG_S = 10.0  # how often a trainer waiting for rollouts says so
MAX_GROUP = 16  # samples per task at most: the rollout service's default max_n


def group_size(samples_per_prompt: int) -> int:
    """How many of a prompt's samples one task asks for: all of them, up to ``MAX_GROUP``;
    above it the largest divisor of ``samples_per_prompt`` that is at most ``MAX_GROUP`` (the
    worker names sample k of group task j ``j * size + k``, so the groups must be equal)."""
    return max(d for d in range(1, min(samples_per_prompt, MAX_GROUP) + 1)
               if samples_per_prompt % d == 0)  # fmt: skip


@dataclass
class StepPlan:
    """The prompts of one PPO step and where the prompt stream stood before them."""

    prompts: list[data_pb2.PromptExample]
    start: tuple[int, str]  # (epoch, cursor) of the prompt stream before this step
    end: tuple[int, str]  # and after them
    version: int | None = None  # adapter version its tasks name, once admitted
    sent: bool = False  # published by this process


@dataclass
class Counts:
    published: int = 0  # tasks admitted (each counted once, however often it is re-sent)
    consumed: int = 0  # scored rollouts trained on
    redelivered: int = 0  # scored rollouts delivered again after being used: acked, skipped
    stray: int = 0  # scored rollouts of no outstanding task: acked, logged, not used
    # item id -> stream entry id of what was consumed since the last checkpoint (acked by it)
    unacked: dict[str, str] = field(default_factory=dict)

    def totals(self) -> dict[str, int]:
        return {
            "published": self.published,
            "consumed": self.consumed,
            "redelivered": self.redelivered,
            "stray": self.stray,
        }


def prompt_request(settings: Settings, epoch: int, cursor: str = "") -> StreamRequest:
    """The prompt stream's request (one rank: PPO runs on one process)."""
    return StreamRequest(
        split=data_pb2.SPLIT_TRAIN, epoch=epoch, seed=settings.seed,
        batch_rows=settings.batch_rows, cursor=cursor,
    )  # fmt: skip


class RolloutPlanner:
    """Plans, admits and collects the rollouts of PPO steps (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        source: BatchSource,
        exchange: RolloutExchange,
        *,
        job_id: str,
        batches_per_step: int,
        total_steps: int,
        should_stop: Callable[[], bool] = lambda: False,
        stop_token_ids: Collection[int] = (),
    ) -> None:
        self.settings, self.source, self.exchange = settings, source, exchange
        self.stop_token_ids = sorted(set(stop_token_ids))  # added to every task's sampling
        self.job_id = job_id
        self.batches_per_step, self.total_steps = batches_per_step, total_steps
        self.should_stop = should_stop
        self.start: tuple[int, str] = (0, "")  # prompt stream before the next step to train
        self.counts = Counts()
        self.consumed_before: set[str] = set()  # ids the resumed-from checkpoint had used
        self.buffer: dict[str, Received] = {}  # scored rollouts of outstanding tasks
        self.plans: dict[int, StepPlan] = {}
        self.published_versions: dict[int, int] = {}  # from the checkpoint resumed from
        self.lost_versions: list[int] = []
        self._next_plan = 0  # steps are planned in order: the next one to plan
        self.prompts: Iterator[tuple[data_pb2.Batch, int, str]] | None = None

    # --- the checkpoint -------------------------------------------------------------------

    def restore(self, state: dict) -> None:
        """What ``checkpoint_state`` recorded (before ``open``)."""
        self.start = (state["prompt_epoch"], state["prompt_cursor"])
        self.consumed_before = set(state["consumed_ids"])
        self.published_versions = {int(k): v for k, v in state["published"].items()}
        for name in ("published", "consumed", "redelivered", "stray"):
            setattr(self.counts, name, state["counts"][name])

    def checkpoint_state(self) -> dict:
        """The planner's part of a checkpoint: where the prompts stand, which steps went out
        under which version, which scored rollouts were used since the last checkpoint."""
        return {
            "prompt_epoch": self.start[0],
            "prompt_cursor": self.start[1],
            "published": {str(k): v.version for k, v in self.plans.items() if v.version},
            "consumed_ids": sorted(self.counts.unacked),
            "counts": self.counts.totals(),
        }

    def ack_consumed(self) -> None:
        """Ack every scored rollout consumed since the last checkpoint (which records them)."""
        self.exchange.ack(list(self.counts.unacked.values()))
        self.counts.unacked = {}

    def open(self, step: int, lost_versions: list[int], *, fresh: bool) -> None:
        """Start planning at ``step``; ``lost_versions`` (newest first) are adapter versions a
        crashed run saved after its checkpoint. A ``fresh`` job refuses leftovers in Redis."""
        if fresh and (left := self.exchange.leftovers()):
            raise RuntimeError(
                f"Redis still holds work of an earlier PPO job with the id {self.job_id!r} "
                f"({left}); a fresh job under that id would wait for rollouts that are never "
                "generated again. Use another job id, resume that job, or delete its keys "
                f"(llamafleet:reward:results:{self.job_id} and "
                f"llamafleet:published:{self.exchange.tasks}:{self.job_id}:*) first"
            )
        self.exchange.ensure_group()
        self.lost_versions = lost_versions
        self._next_plan = step
        self.prompts = self._prompt_stream(*self.start)

    # --- prompts and tasks --------------------------------------------------------------------

    def _prompt_stream(self, epoch: int, cursor: str) -> Iterator[tuple[data_pb2.Batch, int, str]]:
        """Prompt batches from ``(epoch, cursor)`` on, with the stream position after each."""
        while True:
            yielded = False
            for batch, next_cursor in self.source.stream(
                prompt_request(self.settings, epoch, cursor)
            ):
                if not batch.prompts:
                    raise ValueError(
                        f"batch {batch.index} of epoch {batch.epoch} has no prompts: STAGE_PPO "
                        "needs a prompt dataset (DATASET_FORMAT_PROMPT, or any SFT format "
                        "prepared with example kind EXAMPLE_KIND_PROMPT)"
                    )
                yielded = True
                yield batch, batch.epoch, next_cursor
            if not yielded and not cursor:
                raise ValueError(f"epoch {epoch} of the prompt dataset is empty")
            epoch, cursor = epoch + 1, ""

    def _plan(self, step: int) -> StepPlan:
        """The prompts of ``step`` (steps are planned in order, each once)."""
        while step not in self.plans:
            planned = self._next_plan
            start = self.plans[planned - 1].end if planned - 1 in self.plans else self.start
            prompts, end = [], start
            for _ in range(self.batches_per_step):
                batch, epoch, cursor = next(self.prompts)
                prompts.extend(batch.prompts)
                end = (epoch, cursor)
            version = self.published_versions.get(planned)
            self.plans[planned] = StepPlan(prompts, start, end, version)
            self._next_plan += 1
        return self.plans[step]

    def _tasks(self, step: int, plan: StepPlan, first: int = 0) -> list[rollout_pb2.RolloutTask]:
        p = self.settings.ppo
        sampling = rollout_pb2.SamplingParams.FromString(p.sampling)
        extra = [t for t in self.stop_token_ids if t not in sampling.stop_token_ids]
        sampling.stop_token_ids.extend(extra)  # the template's end of turn: where episodes end
        settings = (
            common_pb2.RewardSettings.FromString(p.reward_settings) if p.reward_settings else None
        )
        size = group_size(p.samples_per_prompt)
        tasks = []
        for i, prompt in enumerate(plan.prompts):
            if i < first:
                continue
            for j in range(p.samples_per_prompt // size):  # one task per group of ``size``
                task = rollout_pb2.RolloutTask(
                    item_id=task_id(self.job_id, plan.version, step, i, j),
                    job_id=self.job_id,
                    policy_version=plan.version,
                    step=step,
                    shard=i,
                    sample_index=j,
                    prompt_ids=prompt.prompt_ids,
                    sampling=sampling,
                    adapter=common_pb2.AdapterRef(id=self.job_id, version=plan.version),
                    reference_answer=prompt.reference_answer,
                    scorer=p.reward_scorer,
                    num_samples=size if size > 1 else 0,
                )
                if sampling.HasField("seed"):  # distinct, reproducible seeds per task (the
                    # engines keep a group's samples distinct: see the module doc)
                    task.sampling.seed = sampling.seed + step * 1_000_003 + i * 1009 + j
                if p.reward_adapter:
                    task.reward_adapter.id, task.reward_adapter.version = p.reward_adapter
                if settings is not None:
                    task.reward_settings.CopyFrom(settings)
                task.create_time.GetCurrentTime()
                tasks.append(task)
        return tasks

    def admit(self, current: int, adapter_version: int) -> None:
        """Publish the tasks of every step within ``max_staleness`` of ``current``; steps not
        yet admitted name ``adapter_version`` (the policy's now)."""
        last = min(current + self.settings.ppo.max_staleness, self.total_steps)
        for step in range(current, last):
            plan = self._plan(step)
            if plan.version is None:
                # A run that crashed after the checkpoint may have published this step already,
                # under a version it saved after it: reuse those tasks rather than doubling them.
                buffered = [v[1] for v in map(parse_task_id, self.buffer) if v and v[2] == step]
                lost = self.lost_versions
                found = self.exchange.published_version(step, lost) if lost else None
                plan.version = max(buffered, default=None) or found or adapter_version
                self.counts.published += len(plan.prompts) * self.settings.ppo.samples_per_prompt
            if not plan.sent:  # idempotent: tasks already in the stream are not added again
                self.exchange.publish_tasks(self._tasks(step, plan))
                plan.sent = True

    def refill(self, step: int, batches: int) -> range:
        """Plan ``batches`` more prompt batches into the admitted ``step`` (dynamic sampling) and
        publish their tasks under the step's version; returns the new prompts' indices. Only
        with ``max_staleness`` 1: the prompts come from the stream after the step's."""
        plan = self.plans[step]
        if self._next_plan != step + 1 or plan.version is None:
            raise RuntimeError(
                f"step {step} cannot be refilled: later steps are already planned (dynamic "
                "sampling needs max_staleness 1)"
            )
        first = len(plan.prompts)
        for _ in range(batches):
            batch, epoch, cursor = next(self.prompts)
            plan.prompts.extend(batch.prompts)
            plan.end = (epoch, cursor)
        added = range(first, len(plan.prompts))
        self.counts.published += len(added) * self.settings.ppo.samples_per_prompt
        self.exchange.publish_tasks(self._tasks(step, plan, first))
        return added

    def _expected(self, step: int, prompts: range | None = None) -> list[str]:
        plan = self.plans[step]
        n = self.settings.ppo.samples_per_prompt
        return [
            task_id(self.job_id, plan.version, step, i, j)
            for i in (prompts if prompts is not None else range(len(plan.prompts)))
            for j in range(n)
        ]

    # --- collecting ---------------------------------------------------------------------------

    def collect(self, step: int, prompts: range | None = None) -> list[Received] | None:
        """Wait for the scored rollouts of ``step`` (of its ``prompts`` only, when given), in
        task order; None if a stop was requested meanwhile."""
        expected = self._expected(step, prompts)
        outstanding = {i for t in self.plans if t >= step and self.plans[t].version is not None
                       for i in self._expected(t)}  # fmt: skip
        last_log = last_dead_check = time.monotonic()
        while True:
            missing = [i for i in expected if i not in self.buffer]
            if not missing:
                return [self.buffer.pop(i) for i in expected]
            if self.should_stop():
                return None
            now = time.monotonic()
            if now - last_dead_check > 2.0:
                last_dead_check = now
                dead = [d for d in self.exchange.dead_letters() if d.item_id in outstanding]
                if dead:
                    d = dead[0]
                    raise RuntimeError(
                        f"rollout task {d.item_id} was dead-lettered by the {d.group!r} workers "
                        f"after {d.deliveries} deliveries ({len(dead)} task(s) in all): "
                        f"{d.reason}. Fix the cause, replay it from llamafleet:deadletter, and "
                        "resume the job"
                    )
            if now - last_log > WAIT_LOG_S:
                last_log = now
                logger.info(
                    "step %d: waiting for %d of %d scored rollouts", step, len(missing),
                    len(expected),
                )  # fmt: skip
                if not self.exchange.task_consumers():
                    logger.warning(
                        "no rollout worker reads %s, where this job's tasks go: no rollout "
                        "service serves its base model %s yet (`llamafleet add-base %s`, or "
                        "start rollout workers for it)", self.exchange.tasks,
                        self.settings.base_model, self.settings.base_model,
                    )  # fmt: skip
            for got in self.exchange.read(block_ms=500):
                if got.item_id in self.counts.unacked:
                    continue  # used by this run, read again after a Redis outage: the next
                    # checkpoint acks it (acking it now would lose it if this run crashed first)
                if got.item_id in self.consumed_before:
                    self.counts.redelivered += 1  # used before a crash, delivered again
                    self.exchange.ack([got.entry_id])
                    continue
                parsed = parse_task_id(got.item_id)
                if got.item_id in outstanding or (
                    parsed is not None and parsed[0] == self.job_id and parsed[2] >= step
                ):  # this step's, or a later step's (published before a crash): keep it
                    if got.scored is None:
                        raise ValueError(f"scored rollout {got.item_id}: payload does not decode")
                    self.buffer.setdefault(got.item_id, got)
                else:
                    self._drop(got, "matches no task of this job that is still to be trained")

    def _drop(self, got: Received, why: str) -> None:
        """Ack a scored rollout that will not be used, and say so (never silently)."""
        self.counts.stray += 1
        logger.warning("scored rollout %s %s: acked, not used", got.item_id, why)
        self.exchange.ack([got.entry_id])

    def consumed(self, step: int, received: list[Received]) -> None:
        """``step`` was trained on ``received``: the prompt stream's checkpointed position moves
        past it, its rollouts wait for the next checkpoint's ack, and buffered rollouts of it or
        earlier steps that it did not use (published under another version before a crash) are
        dropped."""
        self.start = self.plans.pop(step).end
        self.counts.consumed += len(received)
        self.counts.unacked.update((r.item_id, r.entry_id) for r in received)
        for item_id in list(self.buffer):
            parsed = parse_task_id(item_id)
            if parsed is not None and parsed[2] <= step:
                self._drop(self.buffer.pop(item_id), f"belongs to step {parsed[2]}, trained")
