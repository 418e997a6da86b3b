"""A reward model is read on rollouts where it was trained on the data service's rows.

Through the real services: the data service prepares a ChatML preference dataset (every row ends
``<|im_end|> \\n``: template text after the end of turn), the training service trains a LoRA
reward model on it in a runner process, and the reward service (fetching the adapter from
training) scores the held-out pairs twice:

- as the data service's rows, through ``ScoreRollouts`` (completion = the row after the prompt,
  its trailing ``"\\n"`` included, as a demo or an evaluation sends them);
- as rollouts, through the reward worker: ``Rollout`` messages on ``llamafleet:rollout:results``
  whose completions end with ``<|im_end|>``, as the ``hf`` engine produces them (it stops at its
  end token and keeps it), scored into ``llamafleet:reward:results:{job}``.

The same token sequences must get the same scores (1e-5) and so the same pairwise accuracy, which
is also the job's own held-out accuracy. Before the scored position was one rule
(``services.common.scored_position``) the recipe learned the score at the ``"\\n"`` and rollouts
were read at ``<|im_end|>``, a position it never trained on.
"""

from __future__ import annotations

import time

import pytest
from llamafleet.common.v1 import common_pb2
from llamafleet.reward.v1 import reward_pb2, reward_service_pb2
from llamafleet.rollout.v1 import rollout_pb2
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api
from synthetic import digit_task
from test_preference_e2e import (
    Fleet,
    eval_metrics,
    held_out_pairs,
    job_spec,
    split,
    watch,
    write_pairs,
)
from training_harness import kill_runners
from transformers import AutoTokenizer

from services.common import queues
from services.training.tiny.model import build_tiny_model

TEMPLATE = "chatml"
JOB = "rm-chatml"
ROLLOUT_JOB = "ppo-reads"  # the job id the rollouts are published under


def rollout(item_id: str, prompt, completion, adapter: common_pb2.AdapterRef):
    """A rollout as a worker publishes it: the task copied, the completion that stopped."""
    task = rollout_pb2.RolloutTask(
        item_id=item_id, job_id=ROLLOUT_JOB, policy_version=1, prompt_ids=prompt,
        scorer="reward_model", reward_adapter=adapter,
    )  # fmt: skip
    return rollout_pb2.Rollout(
        task=task, completion_ids=completion, logprobs=[-1.0] * len(completion),
        finish_reason=rollout_pb2.FINISH_REASON_STOP, engine="hf", adapter_version=1,
    )  # fmt: skip


def scored_rollouts(r, expected: int, timeout: float = 120.0) -> dict[str, float]:
    stream = queues.reward_results_stream(ROLLOUT_JOB)
    deadline = time.monotonic() + timeout
    while r.xlen(stream) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    out = {}
    for _eid, fields in r.xrange(stream):
        msg = reward_pb2.ScoredRollout.FromString(fields[b"payload"])
        out[msg.rollout.task.item_id] = msg.raw_score
    assert len(out) == expected, f"{len(out)} of {expected} rollouts scored in {timeout}s"
    return out


def accuracy(scores: dict[str, float], n: int) -> float:
    return sum(scores[f"{i}c"] > scores[f"{i}r"] for i in range(n)) / n


@pytest.mark.slow  # a runner process (imports torch) and three services: ~40 s
def test_rollouts_are_scored_where_the_reward_model_was_trained(tmp_path, monkeypatch, redis_url):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    base = build_tiny_model(tmp_path / "base", "tiny", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    held = digit_task(1, 40)
    train = digit_task(2, 400, exclude={p.split()[-1] for p, _ in held})
    train_file = write_pairs(tmp_path / "train.jsonl", train)
    held_file = write_pairs(tmp_path / "held_out.jsonl", held)
    fleet = Fleet(tmp_path, base, redis_url=redis_url, worker_threads=1)
    r = queues.connect(redis_url)
    try:
        client = fleet.client
        spec = job_spec(JOB, base, pb.STAGE_RM, train_file, held_file, steps=120, template=TEMPLATE)
        client.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
        events = watch(client, JOB)
        log = (tmp_path / "jobs" / JOB / "runner.log").read_text()
        assert events[-1].state_change.state == pb.JOB_STATE_SUCCEEDED, log[-3000:]
        (_, job_accuracy, _) = eval_metrics(events)[-1]
        job = client.training.GetTrainingJob(api.GetTrainingJobRequest(job_id=JOB)).job
        adapter = common_pb2.AdapterRef(id=JOB, version=job.adapter_versions[-1].version)

        pairs = held_out_pairs(client, held_file, base, TEMPLATE)
        assert len(pairs) == len(held)
        rows = {}  # item id -> (prompt ids, completion ids) of the data service's row
        for i, pair in enumerate(pairs):
            rows[f"{i}c"], rows[f"{i}r"] = split(pair.chosen), split(pair.rejected)
        for _prompt, completion in rows.values():  # ChatML: text after the end of turn
            assert tokenizer.decode(completion[-2:]) == "<|im_end|>\n"

        # 1. the rows as the data service made them, through ScoreRollouts
        request = reward_service_pb2.ScoreRolloutsRequest(
            scorer="reward_model", reward_adapter=adapter
        )
        for item_id, (prompt, completion) in rows.items():
            request.items.add(item_id=item_id, prompt_ids=prompt, completion_ids=completion)
        as_rows = {s.item_id: s.raw_score for s in client.reward.ScoreRollouts(request).scores}

        # 2. the same pairs as rollouts: the completion stops at <|im_end|> and keeps it
        for n, (prompt, completion) in enumerate(rows.values()):
            stop = completion.index(im_end) + 1
            assert completion[:stop][-1] == im_end and completion[stop:] != []
            ro = rollout(f"{ROLLOUT_JOB}:1:0:{n}:0", prompt, completion[:stop], adapter)
            queues.publish(r, queues.ROLLOUT_RESULTS, ro.task.item_id, ro.SerializeToString())
        scored = scored_rollouts(r, len(rows))
        as_rollouts = {item: scored[f"{ROLLOUT_JOB}:1:0:{n}:0"] for n, item in enumerate(rows)}
    finally:
        r.close()
        fleet.stop()
        kill_runners(tmp_path / "jobs")

    worst = max(abs(as_rows[k] - as_rollouts[k]) for k in rows)
    row_accuracy, rollout_accuracy = (
        accuracy(as_rows, len(pairs)),
        accuracy(as_rollouts, len(pairs)),
    )
    print(
        f"\n{JOB}: held-out accuracy {job_accuracy:.2f} (job), {row_accuracy:.2f} (rows), "
        f"{rollout_accuracy:.2f} (rollouts); largest score difference {worst:.2e}"
    )
    assert worst <= 1e-5  # the same token sequences, read at the same token
    assert rollout_accuracy == row_accuracy
    assert row_accuracy == pytest.approx(job_accuracy, abs=1 / len(pairs))  # the job's own number
    assert row_accuracy >= 0.9  # it learned the preference
