"""The ``ppo`` recipe on the built tiny model, with the fleets stood in for in-process.

``inline_fleet.InlineFleet`` generates with the rollout service's real HF engine from the adapter
versions the trainer publishes, and scores with a rule: 1 when the answer starts with "yes". The
model first gets a short SFT on questions answered "yes" or "no" at random, so it says "yes" only
sometimes; PPO must make it say so more often.
"""

from __future__ import annotations

import json
import shutil

import pytest
from inline_fleet import InlineFleet, PromptSource, yes_no_prompts, yes_no_rows
from llamafleet.rollout.v1 import rollout_pb2
from synthetic import make_settings

from services.training.loop import checkpoints
from services.training.loop.batches import InMemorySource
from services.training.recipes import ppo, sft
from services.training.spec.settings import LoraSettings, PpoSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def yes_no_model(tiny_random, tokenizer, tmp_path_factory):
    job = tmp_path_factory.mktemp("sft-yes-no")
    settings = make_settings(tiny_random, learning_rate=3e-3, max_steps=30, batch_rows=8)
    sft.run(settings, InMemorySource(yes_no_rows(tokenizer, 200)), job)
    return job / "model"


def yes_first(tokenizer):
    yes = tokenizer("yes", add_special_tokens=False)["input_ids"][0]
    return lambda ids: float(len(ids) > 0 and ids[0] == yes)


def ppo_settings(model, **overrides):
    sampling = rollout_pb2.SamplingParams(max_tokens=3, temperature=1.0, seed=1)
    ppo_fields = {
        "sampling": sampling.SerializeToString(),
        "samples_per_prompt": 4,
        "reward_scorer": "yes",
        "rollout_batch_size": 8,
        "ppo_epochs": 4,
        "kl_coef": 0.05,
    }
    ppo_fields.update(overrides.pop("ppo", {}))
    fields = {
        "recipe": "ppo",
        "method": "lora",
        "lora": LoraSettings(rank=8, alpha=16),
        "learning_rate": 1e-3,
        "batch_rows": 8,
        "max_steps": 12,
        "logging_steps": 1,
        "ppo": PpoSettings(**ppo_fields),
    }
    fields.update(overrides)
    return make_settings(model, **fields)


def metrics(job):
    return [json.loads(x) for x in (job / "output" / "metrics.jsonl").read_text().splitlines()]


def test_ppo_raises_a_reward_the_sft_model_meets_only_sometimes(yes_no_model, tokenizer, tmp_path):
    job = tmp_path / "ppo"
    fleet = InlineFleet(yes_no_model, job, yes_first(tokenizer))
    prompts = PromptSource(yes_no_prompts(tokenizer, range(1000, 1064)))
    result = ppo.run(ppo_settings(yes_no_model), prompts, job, exchange=fleet, job_id="ppo-t")
    assert result.state == "SUCCEEDED" and result.step == 12
    records = metrics(job)
    rewards = [r["reward/mean"] for r in records]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-4:]) / 4
    assert last > first + 0.25, rewards
    # the trainer recomputes exactly what the engine reported (same weights, float32)
    assert all(abs(r["ppo/engine_ratio"] - 1.0) < 1e-3 for r in records)
    # one group task per prompt; every sample was generated once, consumed once, and acked once
    # (after its checkpoint)
    assert len(fleet.published) == 12 * 8
    assert {t.num_samples for t in fleet.published.values()} == {4}
    assert fleet.samples == len(fleet.history) == 12 * 8 * 4
    assert len(fleet.acked) == len(set(fleet.acked)) == fleet.samples
    counts = json.loads((job / "output" / "ppo_counts.json").read_text())
    assert counts["consumed"] == counts["published"] == fleet.samples
    assert counts["redelivered"] == counts["stray"] == 0
    # one adapter version per update, plus v1 (the untrained LoRA) for the first tasks
    versions = sorted(int(p.name[1:]) for p in (job / "adapters").iterdir())
    assert versions == list(range(1, 14))
    assert counts["final_adapter_version"] == 13
    assert {t.adapter.version for t in fleet.published.values()} == set(range(1, 13))
    assert (job / "output" / "adapter" / "adapter_model.safetensors").is_file()
    assert (job / "output" / ppo.VALUE_HEAD_FILE).is_file()


def test_a_resumed_trainer_skips_used_rollouts_and_reuses_unacked_ones(
    yes_no_model, tokenizer, tmp_path
):
    job = tmp_path / "ppo"
    prompts = yes_no_prompts(tokenizer, range(2000, 2032))
    settings = ppo_settings(yes_no_model, max_steps=4, save_steps=2)
    fleet = InlineFleet(yes_no_model, job, yes_first(tokenizer))
    ppo.run(settings, PromptSource(prompts), job, exchange=fleet, job_id="ppo-r")
    assert [s for s, _ in checkpoints.list_checkpoints(job)] == [2, 4]
    # Crash between training step 4 and its checkpoint; the checkpoint at step 2 was written
    # but its ack was lost. Redis redelivers every scored rollout of steps 0-3.
    shutil.rmtree(job / "checkpoints" / "step-4")
    by_step = {}
    for item_id in (r.item_id for r in fleet.history):  # the samples' ids
        by_step.setdefault(int(item_id.split(":")[2]), []).append(item_id)
    replay = InlineFleet(yes_no_model, job, yes_first(tokenizer))
    replay.published = dict(fleet.published)
    delivered = {r.item_id: r for r in fleet.history}
    replay.queue = [delivered[i] for s in range(4) for i in by_step[s]]
    settings = ppo_settings(yes_no_model, max_steps=4, save_steps=2, resume=True)
    result = ppo.run(settings, PromptSource(prompts), job, exchange=replay, job_id="ppo-r")
    assert result.state == "SUCCEEDED" and result.step == 4
    counts = json.loads((job / "output" / "ppo_counts.json").read_text())
    used_before = len(by_step[0]) + len(by_step[1])
    assert counts["redelivered"] == used_before  # steps 0-1: in the checkpoint, skipped
    assert len(replay.published) == len(fleet.published)  # steps 2-3 not generated again
    assert counts["consumed"] == 4 * 8 * 4  # each rollout used once over both runs
    assert sorted(replay.acked) == sorted(r.entry_id for r in replay_history(replay))
    # adapter versions never reuse a number: the lost run's v4/v5 stay, the new ones follow
    versions = sorted(int(p.name[1:]) for p in (job / "adapters").iterdir())
    assert versions == [1, 2, 3, 4, 5, 6, 7]


class RereadingFleet(InlineFleet):
    """Hands out every delivered, unacked entry again on one read, as ``RolloutExchange`` does
    after a Redis outage (it re-reads its consumer's own pending entries)."""

    def __init__(self, *args, reread_at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads, self.reread_at, self.reread = 0, reread_at, 0

    def read(self, block_ms: int):
        self.reads += 1
        again = []
        if self.reads == self.reread_at:
            again = [r for r in self.history if r.entry_id not in self.acked]
            self.reread = len(again)
        return again + super().read(block_ms)


def test_entries_read_again_after_a_redis_outage_are_neither_reused_nor_acked_early(
    yes_no_model, tokenizer, tmp_path
):
    job = tmp_path / "ppo"
    prompts = yes_no_prompts(tokenizer, range(2100, 2124))
    settings = ppo_settings(yes_no_model, max_steps=3, save_steps=2)
    fleet = RereadingFleet(yes_no_model, job, yes_first(tokenizer), reread_at=2)
    result = ppo.run(settings, PromptSource(prompts), job, exchange=fleet, job_id="ppo-o")
    assert result.state == "SUCCEEDED" and result.step == 3
    assert fleet.reread > 0  # step 0's rollouts, used and not yet checkpointed, came back
    counts = json.loads((job / "output" / "ppo_counts.json").read_text())
    assert counts["consumed"] == 3 * 8 * 4 and counts["redelivered"] == 0
    assert counts["stray"] == 0
    # each entry acked once, by the checkpoint that recorded it (steps 2 and 3)
    assert sorted(fleet.acked) == sorted({r.entry_id for r in fleet.history})


def replay_history(fleet):
    return fleet.history


def test_at_a_sampling_temperature_the_engine_is_compared_like_for_like(
    yes_no_model, tokenizer, tmp_path
):
    """Rollouts sampled at temperature 0.7: PPO works on the tempered policy, while the engine's
    log-probs (temperature 1, the contract) are compared with the trainer's temperature-1 ones,
    so the ratio stays 1 when nothing is stale."""
    job = tmp_path / "ppo"
    sampling = rollout_pb2.SamplingParams(max_tokens=3, temperature=0.7, seed=2)
    settings = ppo_settings(
        yes_no_model, max_steps=3, ppo={"sampling": sampling.SerializeToString()}
    )
    fleet = InlineFleet(yes_no_model, job, yes_first(tokenizer))
    prompts = PromptSource(yes_no_prompts(tokenizer, range(4000, 4032)))
    ppo.run(settings, prompts, job, exchange=fleet, job_id="ppo-temp")
    records = metrics(job)
    assert len(records) == 3
    assert all(abs(r["ppo/engine_ratio"] - 1.0) < 1e-3 for r in records)
    assert all(r["ppo/kl"] == r["ppo/kl"] for r in records)  # finite


@pytest.mark.parametrize(
    "lora, extra",
    [
        (LoraSettings(rank=8, alpha=16, use_dora=True), {}),
        (LoraSettings(rank=8, alpha=16, use_rslora=True, loraplus_lr_ratio=8.0), {}),
        (LoraSettings(rank=8, alpha=16), {"quantization_bits": 4}),
    ],
    ids=["dora", "rslora+loraplus", "qlora-4bit"],
)
def test_lora_variants_and_qlora_train_the_ppo_policy(
    yes_no_model, tokenizer, tmp_path, lora, extra
):
    """The LoRA methods combine with PPO: two steps, the policy's adapter and the value head move
    and are all that is trained (a QLoRA trainer's base is 4-bit while the workers serve the
    saved weights: the engine ratio then measures the quantisation error the importance weights
    correct)."""
    if extra.get("quantization_bits"):
        pytest.importorskip("bitsandbytes")
    import torch
    from safetensors.torch import load_file

    job = tmp_path / "ppo"
    settings = ppo_settings(yes_no_model, max_steps=2, lora=lora, **extra)
    fleet = InlineFleet(yes_no_model, job, yes_first(tokenizer))
    prompts = PromptSource(yes_no_prompts(tokenizer, range(5000, 5016)))
    result = ppo.run(settings, prompts, job, exchange=fleet, job_id="ppo-m")
    assert result.state == "SUCCEEDED"
    records = metrics(job)
    assert all(r["loss"] == r["loss"] and 0.5 < r["ppo/engine_ratio"] < 2 for r in records)
    first = load_file(job / "adapters" / "v1" / "adapter_model.safetensors")
    last = load_file(job / "adapters" / "v3" / "adapter_model.safetensors")
    assert first.keys() == last.keys()
    assert any(not torch.equal(first[k], last[k]) for k in first)
    head = load_file(job / "output" / ppo.VALUE_HEAD_FILE)
    assert head["weight"].abs().sum() > 0  # zero-initialised, then trained
    trained = load_file(checkpoints.latest_checkpoint(job) / "trainable.safetensors")
    assert trained and all("lora_" in k or k.startswith("value_head.") for k in trained)


def test_a_fresh_job_under_a_reused_id_is_refused_while_redis_holds_the_old_ones_work(
    yes_no_model, tokenizer, tmp_path, redis_url
):
    """Task ids are deterministic, so a job re-created afresh under the id of an earlier one
    would have its tasks de-duplicated away and wait forever: it fails at once instead, saying
    which keys to delete (or to resume)."""
    from services.common import queues
    from services.training.ppo.exchange import RolloutExchange

    r = queues.connect(redis_url)
    queues.publish(r, queues.reward_results_stream("ppo-old"), "ppo-old:1:0:0:0", b"x")
    exchange = RolloutExchange(r, "ppo-old")
    prompts = PromptSource(yes_no_prompts(tokenizer, range(6000, 6008)))
    with pytest.raises(RuntimeError, match="earlier PPO job with the id 'ppo-old'"):
        ppo.run(
            ppo_settings(yes_no_model, max_steps=1), prompts, tmp_path / "j",
            exchange=exchange, job_id="ppo-old",
        )  # fmt: skip
    assert not (tmp_path / "j" / "adapters").exists()  # nothing published
