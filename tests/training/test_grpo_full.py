"""GRPO with full and freeze fine-tuned policies on the built tiny model, the fleets stood in for
in-process (``inline_fleet.InlineFleet``: the rollout service's real HF engine loading each
published full-weights version with ``load_weights``, a rule reward), as ``test_grpo_recipe``
does for LoRA.

(The spec accepting STAGE_GRPO with FULL and FREEZE: ``test_grpo_spec``.)
- The policy is the whole model (freeze: its trained subset); the reference is a frozen copy of
  the initial model when ``beta > 0`` (as many parameters as the policy, none trainable, other
  storage) and does not exist at ``beta = 0``.
- Each version ships the trained tensors only (full: every parameter; freeze: the trainable ones)
  with a manifest whose sha256 is the weights file's.
- The engine serves exactly the trainer's weights: the log-prob ratio of the sampled tokens is 1
  within 1e-3 at every step (float32), and the yes/no reward rises under full fine-tuning.
- A resumed trainer continues from its checkpoint's weights (equal to the last version's) while
  its reference is still the initial model.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from inline_fleet import InlineFleet, PromptSource, yes_no_prompts, yes_no_rows
from safetensors import safe_open
from synthetic import make_settings
from test_grpo_recipe import grpo_settings, metrics, yes_first
from transformers import AutoModelForCausalLM

from services.common.full_weights import MANIFEST_FILE, WEIGHTS_FILE, read_manifest
from services.training.loop.batches import InMemorySource
from services.training.recipes import grpo, sft
from services.training.spec.settings import FreezeSettings

pytestmark = pytest.mark.slow

FULL_LR = 3e-4  # full fine-tuning moves every weight: a tenth of the LoRA tests' rate


@pytest.fixture(scope="module")
def yes_no_model(tiny_random, tokenizer, tmp_path_factory):
    """The tiny model after a short SFT answering yes or no at random (as test_grpo_recipe)."""
    job = tmp_path_factory.mktemp("sft-yes-no")
    settings = make_settings(tiny_random, learning_rate=3e-3, max_steps=30, batch_rows=8)
    sft.run(settings, InMemorySource(yes_no_rows(tokenizer, 200)), job)
    return job / "model"


def full_settings(model, method="full", beta=0.0, **overrides):
    extra = {"freeze": FreezeSettings(trainable_layers=1)} if method == "freeze" else {}
    fields = {"method": method, "learning_rate": FULL_LR, **extra, **overrides}
    return grpo_settings(model, {"beta": beta, "kl_estimator": "k3"}, **fields)


@pytest.mark.parametrize("method", ["full", "freeze"])
def test_reference_only_with_beta_and_versions_ship_the_trained_tensors(
    yes_no_model, tokenizer, tmp_path, method
):
    trainers = {}
    for beta in (0.0, 0.05):
        job = tmp_path / f"{method}-{beta}"
        fleet = InlineFleet(yes_no_model, job, yes_first(tokenizer))
        trainer = grpo.GrpoTrainer(
            full_settings(yes_no_model, method, beta, max_steps=1),
            PromptSource(yes_no_prompts(tokenizer, range(8))), job,
            exchange=fleet, job_id=f"{method}-{beta}",
        )  # fmt: skip
        trainer.setup()
        trainers[beta] = (trainer, job)
    policy = trainers[0.0][0].model
    named = dict(policy.named_parameters())
    total = sum(p.numel() for p in named.values())
    trainable = {n for n, p in named.items() if p.requires_grad}
    optimised = sum(p.numel() for g in trainers[0.0][0].engine.optimizer.param_groups
                    for p in g["params"])  # fmt: skip
    assert not any("lora_" in n or "value_head" in n for n in named)
    assert optimised == sum(named[n].numel() for n in trainable)
    if method == "full":
        assert trainable == set(named)
    else:
        assert 0 < len(trainable) < len(named)

    assert trainers[0.0][0].reference is None  # beta = 0: no reference object, nothing loaded
    reference = trainers[0.05][0].reference
    copy = reference.copy
    assert copy is not None and copy is not trainers[0.05][0].model
    copied = list(copy.parameters())
    assert sum(p.numel() for p in copied) == total and not any(p.requires_grad for p in copied)
    own = {p.data_ptr() for p in trainers[0.05][0].model.parameters()}
    assert not own & {p.data_ptr() for p in copied}
    print(f"{method}: policy {total} parameters ({len(trainable)} of {len(named)} tensors "
          f"trained), reference copy {sum(p.numel() for p in copied)}")  # fmt: skip

    # v1 (the initial policy) is published at setup: the trained tensors, as the model has them
    folder = trainers[0.0][1] / "adapters" / "v1"
    manifest = read_manifest(folder, "v1")
    assert set(manifest.tensors) == trainable and manifest.complete == (method == "full")
    data = (folder / WEIGHTS_FILE).read_bytes()
    assert hashlib.sha256(data).hexdigest() == manifest.sha256
    assert json.loads((folder / MANIFEST_FILE).read_text())["method"] == method
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as f:
        assert set(f.keys()) == trainable
        for name in f.keys():  # noqa: SIM118
            assert torch.equal(f.get_tensor(name), named[name].detach())


def test_full_fine_tuning_raises_the_reward_and_the_engine_serves_the_trainers_weights(
    yes_no_model, tokenizer, tmp_path
):
    job = tmp_path / "grpo-full"
    fleet = InlineFleet(yes_no_model, job, yes_first(tokenizer))
    prompts = PromptSource(yes_no_prompts(tokenizer, range(1000, 1064)))
    settings = full_settings(yes_no_model, "full")
    result = grpo.run(settings, prompts, job, exchange=fleet, job_id="grpo-full")
    assert result.state == "SUCCEEDED" and result.step == 12
    records = metrics(job)
    rewards = [r["reward/mean"] for r in records]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-4:]) / 4
    print(f"full: reward {first:.3f} -> {last:.3f}: {rewards}")
    print("publish seconds:", [round(r["time/publish_version"], 4) for r in records])
    assert last > first + 0.25, rewards
    # rollouts of every version were generated with exactly the trainer's weights of that version
    assert all(abs(r["grpo/engine_ratio"] - 1.0) < 1e-3 for r in records), records
    versions = sorted(int(d.name[1:]) for d in (job / "adapters").iterdir())
    assert versions == list(range(1, 14))  # v1 + one per step
    assert all(read_manifest(job / "adapters" / f"v{v}", "v").complete for v in versions)
    assert (job / "output" / "model" / "config.json").is_file()
    assert not (job / "output" / "adapter").exists()


def test_freeze_versions_carry_the_trained_layers_and_the_engine_matches(
    yes_no_model, tokenizer, tmp_path
):
    job = tmp_path / "grpo-freeze"
    fleet = InlineFleet(yes_no_model, job, yes_first(tokenizer))
    prompts = PromptSource(yes_no_prompts(tokenizer, range(2000, 2016)))
    settings = full_settings(yes_no_model, "freeze", beta=0.05, max_steps=3)
    result = grpo.run(settings, prompts, job, exchange=fleet, job_id="grpo-freeze")
    assert result.state == "SUCCEEDED" and result.step == 3
    records = metrics(job)
    assert all(abs(r["grpo/engine_ratio"] - 1.0) < 1e-3 for r in records), records
    assert all(r["grpo/kl"] > 0 for r in records[1:]), records
    first = read_manifest(job / "adapters" / "v1", "v1")
    last = read_manifest(job / "adapters" / "v4", "v4")
    assert first.tensors == last.tensors and not last.complete
    assert first.sha256 != last.sha256  # the trained layer moved


def test_a_resumed_full_trainer_continues_from_its_checkpoint_with_the_initial_reference(
    yes_no_model, tokenizer, tmp_path
):
    job = tmp_path / "grpo-full-r"
    prompts = yes_no_prompts(tokenizer, range(4000, 4032))
    fleet = InlineFleet(yes_no_model, job, yes_first(tokenizer))
    first = full_settings(yes_no_model, "full", beta=0.05, max_steps=2, save_steps=1)
    grpo.run(first, PromptSource(prompts), job, exchange=fleet, job_id="grpo-fr")
    replay = InlineFleet(yes_no_model, job, yes_first(tokenizer))
    replay.published = dict(fleet.published)
    settings = full_settings(
        yes_no_model, "full", beta=0.05, max_steps=3, save_steps=1, resume=True
    )
    trainer = grpo.GrpoTrainer(
        settings, PromptSource(prompts), job, exchange=replay, job_id="grpo-fr"
    )
    trainer.setup()
    assert (trainer.step, trainer.adapter_version) == (2, 3)
    named = dict(trainer.model.named_parameters())
    with safe_open(str(job / "adapters" / "v3" / WEIGHTS_FILE), framework="pt") as f:
        assert all(torch.equal(f.get_tensor(n), named[n].detach()) for n in f.keys())  # noqa: SIM118
    initial = dict(AutoModelForCausalLM.from_pretrained(yes_no_model).named_parameters())
    reference = dict(trainer.reference.copy.named_parameters())
    assert all(torch.equal(reference[n], initial[n]) for n in initial)  # not the checkpoint's
    assert any(not torch.equal(named[n], initial[n]) for n in initial)
    result = trainer.train()
    trainer.save_outputs()
    assert result.state == "SUCCEEDED" and result.step == 3
    assert sorted(int(d.name[1:]) for d in (job / "adapters").iterdir()) == [1, 2, 3, 4]
    assert {t.adapter.version for t in replay.published.values()} == {1, 2, 3}
