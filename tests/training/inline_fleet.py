"""An in-process stand-in for the rollout and reward fleets, for the PPO recipe's unit tests.

``InlineFleet`` has ``RolloutExchange``'s methods. Publishing a task generates its completions at
once with the rollout service's real ``HFEngine`` (the adapter version it names, loaded from the
job's ``adapters/v<N>`` folder, as a rollout worker would after ``FetchAdapter``: a LoRA
adapter, or a full-weights version of a full / freeze GRPO job): ``num_samples`` of them for a
group task, in one request, named and grouped by the rollout worker's own ``sample_ids``. It
scores each with a plain Python function of the completion ids, queues one ``ScoredRollout`` per
sample for ``read``, and records what was acked. The services' transport is tested end to end
elsewhere; this isolates the trainer's arithmetic and bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llamafleet.reward.v1 import reward_pb2
from llamafleet.rollout.v1 import rollout_pb2

from services.common.full_weights import is_full_weights
from services.rollout.engines import GenerationRequest, Sampling, collect
from services.rollout.engines.hf import HFEngine
from services.rollout.worker import sample_ids
from services.training.loop.batches import InMemorySource
from services.training.ppo.exchange import Received


class InlineFleet:
    def __init__(
        self,
        base_model: Path,
        job_dir: Path,
        score: Callable[[list[int]], float],
        *,
        device: str = "cpu",
        dtype: str = "float32",
        score_task: Callable[[rollout_pb2.RolloutTask, list[int]], float] | None = None,
    ):
        self.engine = HFEngine(base_model, device=device, dtype=dtype)
        self.job_dir = Path(job_dir)
        self.score = score
        self.score_task = score_task  # when given: scores from the task and the completion
        self.queue: list[Received] = []
        self.history: list[Received] = []  # everything ever queued, in order
        self.published: dict[str, rollout_pb2.RolloutTask] = {}
        self.acked: list[str] = []
        self.entries = 0

    def ensure_group(self) -> None:
        pass

    def leftovers(self) -> str:
        return ""

    def publish_tasks(self, tasks: list[rollout_pb2.RolloutTask]) -> int:
        added = 0
        for task in tasks:
            if task.item_id in self.published:
                continue
            self.published[task.item_id] = task
            added += 1
            name = f"{task.adapter.id}@{task.adapter.version}"
            if name not in self.engine.adapters():
                folder = self.job_dir / "adapters" / f"v{task.adapter.version}"
                load = (
                    self.engine.load_weights
                    if is_full_weights(folder)
                    else self.engine.load_adapter
                )
                load(name, folder)
            s = task.sampling
            ids = sample_ids(task, task.num_samples or 1)  # the worker's ids for its samples
            sampling = Sampling(
                temperature=s.temperature if s.HasField("temperature") else 1.0,
                max_tokens=s.max_tokens if s.HasField("max_tokens") else 8,
                seed=s.seed if s.HasField("seed") else None,
                n=len(ids),
            )
            request = GenerationRequest(tuple(task.prompt_ids), sampling, name)
            completions = collect(self.engine.generate(request), len(ids))
            for k, (completion, (item_id, index)) in enumerate(zip(completions, ids, strict=True)):
                sample = rollout_pb2.RolloutTask()
                sample.CopyFrom(task)
                sample.item_id, sample.sample_index = item_id, index
                rollout = rollout_pb2.Rollout(
                    task=sample,
                    completion_ids=completion.token_ids,
                    logprobs=completion.logprobs,
                    engine="hf",
                    adapter_version=task.adapter.version,
                    group_id=task.item_id,
                    group_size=len(ids),
                    group_index=k,
                )
                tokens = list(completion.token_ids)
                raw = self.score_task(sample, tokens) if self.score_task else self.score(tokens)
                scored = reward_pb2.ScoredRollout(
                    rollout=rollout, raw_score=raw, normalized_score=raw
                )
                self.entries += 1
                received = Received(f"{self.entries}-0", item_id, scored)
                self.queue.append(received)
                self.history.append(received)
        return added

    @property
    def samples(self) -> int:
        """Samples asked for by the published tasks (a group task asks for ``num_samples``)."""
        return sum(t.num_samples or 1 for t in self.published.values())

    def task_consumers(self) -> int:
        return 1  # the fleet is this object

    def published_version(self, step: int, versions: list[int]) -> int | None:
        for version in versions:
            if any(t.step == step and t.policy_version == version for t in self.published.values()):
                return version
        return None

    def read(self, block_ms: int) -> list[Received]:
        out, self.queue = self.queue, []
        for received in out:
            if received not in self.history:
                self.history.append(received)  # replayed deliveries count as history too
        return out

    def ack(self, entry_ids: list[str]) -> None:
        self.acked.extend(entry_ids)

    def dead_letters(self) -> list:
        return []


class PublishOnly:
    """An exchange that only records what the planner publishes (no Redis, nothing generated):
    for tests of the tasks themselves."""

    def __init__(self) -> None:
        self.tasks: list[rollout_pb2.RolloutTask] = []

    def leftovers(self) -> str:
        return ""

    def ensure_group(self) -> None:
        pass

    def publish_tasks(self, tasks) -> None:
        self.tasks.extend(tasks)


class PromptSource(InMemorySource):
    """``InMemorySource`` over ``PromptExample``s: batches carry ``batch_rows`` prompts each."""

    def __init__(self, prompts) -> None:
        from llamafleet.data.v1 import data_pb2

        self.rows = {data_pb2.SPLIT_TRAIN: list(prompts), data_pb2.SPLIT_EVAL: []}

    def stream(self, request):
        import json
        from dataclasses import replace

        from llamafleet.data.v1 import data_pb2

        epoch, start = request.epoch, 0
        if request.cursor:
            position = json.loads(request.cursor)
            epoch, start = position["epoch"], position["index"] + 1
        batches = self._batches(replace(request, epoch=epoch))
        for index in range(start, len(batches)):
            batch = data_pb2.Batch(epoch=epoch, index=index, prompts=batches[index])
            yield batch, json.dumps({"epoch": epoch, "index": index})


def yes_no_rows(tokenizer, count: int, seed: int = 0):
    """SFT rows "Is <n> a good number?" -> "yes" or "no" at random: the SFT model then answers
    "yes" about as often as not, and a rule reward for "yes" is met only sometimes."""
    import random

    from synthetic import render

    rng = random.Random(seed)
    return [
        render(
            tokenizer,
            [
                {"role": "user", "content": f"Is {i} a good number?"},
                {"role": "assistant", "content": rng.choice(["yes", "no"])},
            ],
            i,
        )
        for i in range(count)
    ]


def yes_no_prompts(tokenizer, numbers):
    from llamafleet.data.v1 import data_pb2

    out = []
    for i in numbers:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Is {i} a good number?"}],
            tokenize=True,
            add_generation_prompt=True,
            return_dict=True,
        )["input_ids"]
        out.append(data_pb2.PromptExample(example_id=str(i), prompt_ids=list(ids)))
    return out
