"""The ``grpo`` recipe on the built tiny model, with the fleets stood in for in-process
(``inline_fleet.InlineFleet``: the rollout service's real HF engine on the adapter versions the
trainer publishes, a rule reward), as the ``ppo`` recipe's tests do.

The yes/no task: a short SFT makes the model answer "Is <n> a good number?" with "yes" or "no" at
random; the reward is 1 when the answer starts with "yes". GRPO and Dr. GRPO with groups of 4 must
raise the mean reward by a fixed margin within 12 steps.
"""

from __future__ import annotations

import json

import pytest
import torch
from inline_fleet import InlineFleet, PromptSource, yes_no_prompts, yes_no_rows
from llamafleet.rollout.v1 import rollout_pb2
from synthetic import make_settings

from services.training.loop.batches import InMemorySource
from services.training.model import reference as reference_module
from services.training.recipes import grpo, ppo, sft
from services.training.spec.settings import GrpoSettings, LoraSettings, PpoSettings

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


def grpo_settings(model, grpo_fields=None, **overrides):
    sampling = rollout_pb2.SamplingParams(max_tokens=3, temperature=1.0, seed=1)
    ppo_fields = {
        "sampling": sampling.SerializeToString(),
        "samples_per_prompt": 4,
        "reward_scorer": "yes",
        "rollout_batch_size": 8,
        "ppo_epochs": 2,
    }
    ppo_fields.update(overrides.pop("ppo", {}))
    fields = {
        "recipe": "grpo",
        "method": "lora",
        "lora": LoraSettings(rank=8, alpha=16),
        "learning_rate": 2e-3,
        "batch_rows": 8,
        "max_steps": 12,
        "logging_steps": 1,
        "ppo": PpoSettings(**ppo_fields),
        "grpo": GrpoSettings(**(grpo_fields or {})),
    }
    fields.update(overrides)
    return make_settings(model, **fields)


def metrics(job):
    return [json.loads(x) for x in (job / "output" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "fields",
    [
        {"advantage_estimator": "grpo", "loss_type": "seq-mean-token-mean"},
        {"advantage_estimator": "dr_grpo", "loss_type": "seq-mean-token-sum-norm"},
    ],
    ids=["grpo", "dr_grpo"],
)
def test_grpo_and_dr_grpo_raise_the_reward_with_groups_of_four(
    yes_no_model, tokenizer, tmp_path, fields
):
    job = tmp_path / "grpo"
    fleet = InlineFleet(yes_no_model, job, yes_first(tokenizer))
    prompts = PromptSource(yes_no_prompts(tokenizer, range(1000, 1064)))
    settings = grpo_settings(yes_no_model, fields)
    result = grpo.run(settings, prompts, job, exchange=fleet, job_id="grpo-t")
    assert result.state == "SUCCEEDED" and result.step == 12
    records = metrics(job)
    rewards = [r["reward/mean"] for r in records]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-4:]) / 4
    print(f"{fields['advantage_estimator']}: reward {first:.3f} -> {last:.3f}: {rewards}")
    assert last > first + 0.25, rewards
    assert all(abs(r["grpo/engine_ratio"] - 1.0) < 1e-3 for r in records)
    for key in ("reward/std", "grpo/zero_variance_fraction", "grpo/clip_ratio/low",
                "grpo/clip_ratio/high", "grpo/kl", "completion/length_mean",
                "completion/length_max", "completion/truncated_fraction", "tokens_per_second",
                "time/wait_share"):  # fmt: skip
        assert all(key in r and r[key] == r[key] for r in records), key
    counts = json.loads((job / "output" / "grpo_counts.json").read_text())
    assert counts["trained_groups"] == 12 * 8 and counts["consumed"] == 12 * 8 * 4
    # one group task per prompt (num_samples 4); "published" counts samples
    assert len(fleet.published) == 12 * 8 and fleet.samples == 12 * 8 * 4
    assert counts["consumed"] == counts["published"] == fleet.samples
    assert len(fleet.acked) == len(set(fleet.acked)) == fleet.samples
    assert not (job / "output" / ppo.VALUE_HEAD_FILE).exists()


def test_no_value_head_and_no_critic_state(yes_no_model, tokenizer, tmp_path):
    """The GRPO trainer holds the LoRA policy alone: its trainable parameters are exactly the
    LoRA matrices (the PPO trainer's are those plus the value head), and the optimizer holds
    nothing else."""
    counts = {}
    for recipe, cls in (("grpo", grpo.GrpoTrainer), ("ppo", ppo.PpoTrainer)):
        job = tmp_path / recipe
        fleet = InlineFleet(yes_no_model, job, yes_first(tokenizer))
        settings = grpo_settings(yes_no_model, recipe=recipe, max_steps=1)
        trainer = cls(
            settings, PromptSource(yes_no_prompts(tokenizer, range(8))), job,
            exchange=fleet, job_id=f"{recipe}-p",
        )  # fmt: skip
        trainer.setup()
        model = trainer.model
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
        optimised = sum(
            p.numel() for group in trainer.engine.optimizer.param_groups for p in group["params"]
        )
        counts[recipe] = (trainable, lora, optimised, model)
    g_trainable, g_lora, g_optimised, g_model = counts["grpo"]
    p_trainable, p_lora, p_optimised, p_model = counts["ppo"]
    hidden = p_model.value_head.in_features
    print(f"trainable: grpo {g_trainable} (LoRA {g_lora}), ppo {p_trainable} (+ value head)")
    assert g_trainable == g_lora == g_optimised
    assert not any("value_head" in n for n, _ in g_model.named_parameters())
    assert p_trainable == p_lora + hidden + 1 == p_optimised
    assert g_lora == p_lora


class CountingReference(reference_module.Reference):
    calls = 0

    def logits(self, **kwargs):
        CountingReference.calls += 1
        return super().logits(**kwargs)


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_beta_zero_never_runs_a_reference(yes_no_model, tokenizer, tmp_path, monkeypatch, beta):
    monkeypatch.setattr(
        reference_module, "Reference", CountingReference
    )  # what lora_reference builds
    CountingReference.calls = 0
    job = tmp_path / "grpo"
    fleet = InlineFleet(yes_no_model, job, yes_first(tokenizer))
    settings = grpo_settings(yes_no_model, {"beta": beta, "kl_estimator": "k3"}, max_steps=2)
    prompts = PromptSource(yes_no_prompts(tokenizer, range(3000, 3016)))
    grpo.run(settings, prompts, job, exchange=fleet, job_id="grpo-b")
    records = metrics(job)
    if beta == 0:
        assert CountingReference.calls == 0
        assert all(r["grpo/kl"] == 0.0 for r in records)
    else:
        assert CountingReference.calls == 2 * 4  # per step: 32 sequences in micro-batches of 8
        assert all(r["grpo/kl"] > 0 for r in records[1:])


def test_dynamic_sampling_drops_constant_groups_and_refills_counting_exactly(
    yes_no_model, tokenizer, tmp_path
):
    """Prompts whose number is a multiple of 4 always score 1 (a zero-variance group); the others
    score 1 on sample 0 only (never zero variance). The trainer must drop exactly the constant
    groups it collected and draw prompt batches until 8 groups remain; the expected counts come
    from replaying the prompt stream by hand."""
    numbers = list(range(5000, 5064))
    constant = {str(i) for i in numbers if i % 4 == 0}

    def score(task, ids):
        example = prompt_ids_to_number[tuple(task.prompt_ids)]
        return 1.0 if example in constant or task.sample_index == 0 else 0.0

    prompts = yes_no_prompts(tokenizer, numbers)
    prompt_ids_to_number = {tuple(p.prompt_ids): p.example_id for p in prompts}
    job = tmp_path / "grpo"
    fleet = InlineFleet(yes_no_model, job, None, score_task=score)
    steps = 3
    settings = grpo_settings(
        yes_no_model, {"dynamic_sampling": True}, max_steps=steps, batch_rows=4,
        ppo={"rollout_batch_size": 8},
    )  # fmt: skip
    source = PromptSource(prompts)
    grpo.run(settings, source, job, exchange=fleet, job_id="grpo-d")

    # the replay: batches of 4 prompts in stream order; 2 per step, then refills of
    # ceil(missing / 4) batches until 8 varying groups; the surplus past 8 is left out
    from services.training.ppo.rollouts import prompt_request

    stream = (b for e in range(10) for b, _ in source.stream(prompt_request(settings, e)))
    expected = {"zero": 0, "rounds": 0, "refill": 0, "surplus": 0, "collected": 0}
    per_step = []
    for _ in range(steps):
        batch = [p for _ in range(2) for p in next(stream).prompts]
        kept, zero, rounds = 0, 0, 0
        while True:
            expected["collected"] += len(batch)
            zero += sum(p.example_id in constant for p in batch)
            kept += sum(p.example_id not in constant for p in batch)
            if kept >= 8:
                break
            rounds += 1
            batch = [p for _ in range(-(-(8 - kept) // 4)) for p in next(stream).prompts]
            expected["refill"] += len(batch)
        expected["zero"] += zero
        expected["rounds"] += rounds
        expected["surplus"] += kept - 8
        per_step.append((zero, rounds))
    counts = json.loads((job / "output" / "grpo_counts.json").read_text())
    print("dynamic sampling counts:", counts, "expected:", expected)
    assert expected["zero"] > 0 and expected["rounds"] > 0  # the test exercises a refill
    assert counts["zero_variance_groups"] == counts["dropped_groups"] == expected["zero"]
    assert counts["refill_rounds"] == expected["rounds"]
    assert counts["refill_prompts"] == expected["refill"]
    assert counts["surplus_groups"] == expected["surplus"]
    assert counts["trained_groups"] == steps * 8
    assert counts["consumed"] == counts["published"] == expected["collected"] * 4
    assert len(fleet.published) == expected["collected"]  # one group task per prompt
    assert len(fleet.acked) == len(set(fleet.acked)) == fleet.samples
    records = metrics(job)
    for r, (zero, rounds) in zip(records, per_step, strict=True):
        assert r["grpo/dropped_groups"] == zero and r["grpo/refill_rounds"] == rounds
        assert r["grpo/zero_variance_fraction"] == zero / r["grpo/groups"]


def test_overlong_shaping_and_masking_of_truncated_completions(yes_no_model, tokenizer, tmp_path):
    """max_tokens 3 and a buffer of 2: a 3-token completion with no end token is truncated
    (masked out of the loss) and punished by the full factor in its shaped score."""
    job = tmp_path / "grpo"
    fleet = InlineFleet(yes_no_model, job, lambda ids: 0.0)
    settings = grpo_settings(
        yes_no_model,
        {"mask_truncated_completions": True, "overlong_buffer_length": 2,
         "overlong_penalty_factor": 0.5},
        max_steps=1,
    )  # fmt: skip
    trainer = grpo.GrpoTrainer(
        settings, PromptSource(yes_no_prompts(tokenizer, range(8))), job,
        exchange=fleet, job_id="grpo-o",
    )  # fmt: skip
    trainer.setup()
    trainer.rollouts.admit(0, trainer.adapter_version)
    received = trainer.rollouts.collect(0)
    x = grpo.collate_rollouts(received, trainer.pad_id, trainer.end_ids)
    shaped, info = trainer._shape(x, received)
    ends = set(trainer.end_ids)
    for i, r in enumerate(received):
        ids = list(r.scored.rollout.completion_ids)
        cut = not any(t in ends for t in ids)
        assert bool(info["truncated"][i]) == cut
        penalty = -0.5 * min(max(len(ids) - 1, 0), 2) / 2
        assert float(shaped.scores[i]) == pytest.approx(penalty)
        assert float(shaped.mask[i].sum()) == (0 if cut else float(x.mask[i].sum()))
    assert torch.equal(shaped.raw_scores, x.raw_scores)


class LateSampleFleet(InlineFleet):
    """Holds back the last sample of each step's first group for a few reads (a worker died
    holding it; the queue redelivers it after the lease), and delivers another sample twice (a
    redelivery of an entry already read)."""

    def __init__(self, *args, hold_reads: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        self.hold_reads = hold_reads
        self.held: dict[str, tuple[object, int]] = {}
        self.reads = 0
        self.used_when_whole: list[bool] = []

    def publish_tasks(self, tasks):
        before = len(self.queue)
        added = super().publish_tasks(tasks)
        fresh = self.queue[before:]
        for r in fresh:
            if r.item_id.endswith(":0:3"):  # prompt 0, sample 3
                self.queue.remove(r)
                self.held[r.item_id] = (r, self.reads + self.hold_reads)
        return added

    def read(self, block_ms):
        self.reads += 1
        out = super().read(block_ms)
        for item_id, (r, at) in list(self.held.items()):
            if self.reads >= at:
                out.append(r)
                del self.held[item_id]
        if out:
            out.append(out[0])  # a duplicate delivery
        return out


def test_a_group_is_trained_only_whole_and_once(yes_no_model, tokenizer, tmp_path):
    job = tmp_path / "grpo"
    fleet = LateSampleFleet(yes_no_model, job, yes_first(tokenizer), hold_reads=3)
    settings = grpo_settings(yes_no_model, max_steps=3)
    trainer = grpo.GrpoTrainer(
        settings, PromptSource(yes_no_prompts(tokenizer, range(6000, 6032))), job,
        exchange=fleet, job_id="grpo-w",
    )  # fmt: skip
    trained_sizes = []
    original = trainer._update

    def update(x, t):
        trained_sizes.append(x.mask.shape[0])
        assert not fleet.held, "trained while a sample of a group was still missing"
        return original(x, t)

    trainer._update = update
    trainer.setup()
    result = trainer.train()
    trainer.save_outputs()
    assert result.state == "SUCCEEDED"
    assert trained_sizes == [8 * 4] * 3
    lines = [json.loads(x) for x in (job / "output" / "groups.jsonl").read_text().splitlines()]
    groups = [gid for line in lines for gid in line["trained"]]
    assert len(groups) == len(set(groups)) == 3 * 8  # each group once
    assert all(sorted(s) == [0, 1, 2, 3] for line in lines for s in line["trained"].values())
    counts = json.loads((job / "output" / "grpo_counts.json").read_text())
    assert counts["consumed"] == counts["published"] == 3 * 8 * 4 and counts["stray"] == 0
    print("whole-group counts:", counts, "reads:", fleet.reads)


class DeadLetterFleet(InlineFleet):
    """Never delivers sample 2 of prompt 1 of step 0: it was dead-lettered upstream."""

    def read(self, block_ms):
        return [r for r in super().read(block_ms) if not r.item_id.endswith(":0:1:2")]

    def dead_letters(self):
        from services.training.ppo.exchange import DeadTask

        dead = [r.item_id for r in self.history if r.item_id.endswith(":0:1:2")]
        return [DeadTask(i, "reward", "5", "scorer raised ValueError: bad") for i in dead]


def test_a_dead_lettered_sample_fails_the_job_with_its_reason(yes_no_model, tokenizer, tmp_path):
    job = tmp_path / "grpo"
    fleet = DeadLetterFleet(yes_no_model, job, yes_first(tokenizer))
    settings = grpo_settings(yes_no_model, max_steps=1)
    prompts = PromptSource(yes_no_prompts(tokenizer, range(8)))
    with pytest.raises(RuntimeError, match=r"grpo-x:1:0:1:2 was dead-lettered.*bad"):
        grpo.run(settings, prompts, job, exchange=fleet, job_id="grpo-x")


def test_off_policy_within_max_staleness_weights_by_the_engine_ratio(
    yes_no_model, tokenizer, tmp_path
):
    """max_staleness 2: the next step's tasks are generated by the previous policy version, so
    from the second step on the trainer's old log-probs differ from the engine's (ratio != 1) and
    each token is weighted by that ratio truncated at IS_CAP; groups stay whole and used once."""
    job = tmp_path / "grpo"
    fleet = InlineFleet(yes_no_model, job, yes_first(tokenizer))
    settings = grpo_settings(yes_no_model, max_steps=4, ppo={"max_staleness": 2})
    prompts = PromptSource(yes_no_prompts(tokenizer, range(7000, 7064)))
    result = grpo.run(settings, prompts, job, exchange=fleet, job_id="grpo-s")
    assert result.state == "SUCCEEDED"
    records = metrics(job)
    assert abs(records[0]["grpo/engine_ratio"] - 1.0) < 1e-3  # step 0: v1 generated, v1 trains
    assert any(abs(r["grpo/engine_ratio"] - 1.0) > 1e-3 for r in records[1:])
    assert sum(t.adapter.version == 1 for t in fleet.published.values()) == 2 * 8
    counts = json.loads((job / "output" / "grpo_counts.json").read_text())
    assert counts["trained_groups"] == 4 * 8 and counts["consumed"] == 4 * 8 * 4


def test_a_single_pass_update_equals_scoring_first(yes_no_model, tokenizer, tmp_path):
    """One pass and one optimizer step per step (ppo_epochs 1, the step's 32 sequences
    accumulated over 4 micro-batches), beta 0: ``single_pass`` takes the old log-probs and engine
    ratios from the update's own forward. The update, the loss and the engine ratio must equal
    those of the scoring forward it skips (the same rollouts, the same starting LoRA)."""
    settings = grpo_settings(
        yes_no_model, max_steps=1, gradient_accumulation_steps=4, ppo={"ppo_epochs": 1}
    )
    prompts = yes_no_prompts(tokenizer, range(8))
    runs = {}
    received = None
    for single in (True, False):
        job = tmp_path / f"single-{single}"
        fleet = InlineFleet(yes_no_model, job, yes_first(tokenizer))
        trainer = grpo.GrpoTrainer(
            settings, PromptSource(prompts), job, exchange=fleet, job_id="grpo-1"
        )
        trainer.setup()
        assert trainer.single_pass and trainer.updates_per_step == 1
        trainer.single_pass = single
        if received is None:
            trainer.rollouts.admit(0, trainer.adapter_version)
            received = trainer.rollouts.collect(0)
        x = grpo.collate_rollouts(received, trainer.pad_id, trainer.end_ids)
        groups = torch.arange(8).repeat_interleave(4)
        t = trainer._score(x, groups)
        assert (t["old"] is None) == single
        stats = trainer._update(x, t)
        ratio = float((t["engine_ratio"] * x.mask).sum() / x.mask.sum())
        lora_weights = {
            k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad
        }
        runs[single] = (stats, ratio, lora_weights)
    (fused, fused_ratio, fused_w), (scored, scored_ratio, scored_w) = runs[True], runs[False]
    assert fused["loss"] == pytest.approx(scored["loss"], abs=1e-6)
    assert fused["grad_norm"] == pytest.approx(scored["grad_norm"], rel=1e-4)
    assert fused_ratio == pytest.approx(scored_ratio, abs=1e-5)
    assert abs(fused_ratio - 1.0) < 1e-3  # float32 on both sides: the engine's own log-probs
    assert fused_w.keys() == scored_w.keys() and fused_w
    for k in fused_w:
        assert torch.allclose(fused_w[k], scored_w[k], atol=1e-6), k
    assert fused["grad_norm"] > 0  # the step did move the policy
