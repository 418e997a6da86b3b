"""Stages chained through adapters, and resuming from a named checkpoint.

An SFT job's LoRA adapter (a short SFT on the digit task, so its weights are far from zero) is the
start of DPO, RM and PPO jobs (``Settings.init_adapter``; the service copies ``JOB@VERSION`` or an
``adapter_name_or_path`` folder into the job and points the runner at the copy). DPO's reference
is base + that adapter, frozen beside the trained copy on the same backbone, so its loss starts at
log 2 and equals TRL's ``DPOTrainer`` over a ``PeftModel`` loaded from the same folder (TRL adds
a frozen "ref" copy of a pretrained adapter itself). PPO from the SFT adapter has KL 0 at step 0
and publishes the SFT adapter as its first policy version.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import pytest
import torch
from llamafleet.data.v1 import data_pb2
from safetensors.torch import load_file
from synthetic import digit_task, make_settings, task_rows
from test_dpo import dpo_settings, preference_pairs

from services.training.loop.batches import InMemoryPairSource, InMemorySource
from services.training.model import lora
from services.training.recipes import dpo, rm, sft
from services.training.spec.settings import LoraSettings


@pytest.fixture(scope="module")
def sft_adapter(tiny_random, tokenizer, tmp_path_factory):
    """An SFT job's published adapter folder (``adapters/v1``) after 12 LoRA steps."""
    job = tmp_path_factory.mktemp("sft-lora")
    settings = make_settings(
        tiny_random,
        method="lora",
        lora=LoraSettings(rank=4, alpha=8.0),
        learning_rate=5e-3,
        max_steps=12,
        batch_rows=8,
    )
    rows = task_rows(tokenizer, digit_task(3, 96))
    assert sft.run(settings, InMemorySource(rows), job).state == "SUCCEEDED"
    folder = job / "adapters" / "v1"
    weights = load_file(folder / "adapter_model.safetensors")
    assert max(float(t.abs().max()) for k, t in weights.items() if "lora_B" in k) > 1e-3
    return folder


@pytest.fixture(scope="module")
def pairs(tokenizer):
    return preference_pairs(
        tokenizer,
        digit_task(5, 4),
        rejected=lambda p, a: [a[::-1], "no", a + " " + a][int(a[0]) % 3],
    )


def from_adapter(settings, folder, create_new=False):
    return replace(settings, init_adapter=folder and str(folder), create_new_adapter=create_new)


def dpo_trainer(tiny_random, folder, pairs, job, **overrides):
    settings = dpo_settings(tiny_random, method="lora", lora=LoraSettings(rank=4, alpha=8.0),
                            beta=0.5, batch_rows=4, **overrides)  # fmt: skip
    trainer = dpo.build_trainer(from_adapter(settings, folder), InMemoryPairSource(pairs), job)
    trainer.setup()
    return trainer


def test_dpo_from_the_sft_adapter_starts_at_log_2_against_base_plus_adapter(
    tiny_random, sft_adapter, pairs, tmp_path
):
    trainer = dpo_trainer(tiny_random, sft_adapter, pairs, tmp_path)
    reference = trainer.models.reference
    assert reference.adapter == lora.REFERENCE_ADAPTER and reference.copy is None  # one model
    frozen = [n for n, p in trainer.model.named_parameters() if ".reference." in n]
    assert frozen and not any(p.requires_grad for n, p in trainer.model.named_parameters()
                              if ".reference." in n)  # fmt: skip
    x = trainer._collate(data_pb2.Batch(pairs=pairs))
    trainer.model.eval()
    with torch.no_grad():
        loss = float(trainer.loss.objective.pair_losses(trainer.models, x)[0].mean())
        ref = trainer.loss.objective.reference_logps(trainer.models, x)
        with trainer.model.disable_adapter():
            base = x.response_logps(trainer.model(**x.inputs.model_kwargs()).logits)[0]
    assert abs(loss - math.log(2)) < 1e-6  # policy = reference at the start
    assert (ref - base).abs().max() > 1e-2  # the reference is not the bare base
    # the trained adapter is the SFT one, and stays trainable after the reference ran
    trained = [p for n, p in trainer.model.named_parameters() if ".default." in n and "lora_" in n]
    assert trained and all(p.requires_grad for p in trained)
    # the first logged loss of a run is log 2 as well
    settings = replace(trainer.settings, max_steps=1, logging_steps=1)
    run = dpo.build_trainer(settings, InMemoryPairSource(pairs), tmp_path / "run")
    run.setup()
    run.train()
    assert abs(run.history[0][1] - math.log(2)) < 1e-5
    published = load_file(tmp_path / "run" / "adapters" / "v1" / "adapter_model.safetensors")
    assert not any("reference" in k for k in published)  # only the trained adapter is saved


def test_dpo_from_the_sft_adapter_equals_trl_over_a_peft_model_of_that_adapter(
    tiny_random, tokenizer, sft_adapter, pairs, tmp_path
):
    """TRL 1.16 ``DPOTrainer`` given ``PeftModel.from_pretrained(base, folder, is_trainable=True)``
    and no ref_model adds a frozen "ref" copy of the adapter and reads the reference through it.
    Both trained adapters are then moved by the same perturbation, so the loss is not log 2."""
    from peft import PeftModel
    from test_dpo import perturb, trl_loss
    from transformers import AutoModelForCausalLM

    trainer = dpo_trainer(tiny_random, sft_adapter, pairs, tmp_path, attention="eager")
    for seed in range(10):  # far enough from the reference that the loss is not log 2
        perturb(trainer.model, seed)
    trainer.model.eval()
    x = trainer._collate(data_pb2.Batch(pairs=pairs))
    with torch.no_grad():
        ours = float(trainer.loss.objective.pair_losses(trainer.models, x)[0].mean())

    base = AutoModelForCausalLM.from_pretrained(tiny_random, attn_implementation="eager")
    theirs_model = PeftModel.from_pretrained(base, str(sft_adapter), is_trainable=True)

    def loss_after_ref_copy(model):
        mine = dict(trainer.model.named_parameters())
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".default." in name and name in mine:
                    p.copy_(mine[name])
        return model

    import trl

    # TRL builds its "ref" copy in its constructor: the same perturbation is copied in after it
    original = trl.DPOTrainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        assert "ref" in self.model.peft_config  # TRL's frozen copy of the pretrained adapter
        loss_after_ref_copy(self.model)

    trl.DPOTrainer.__init__ = init
    try:
        theirs = trl_loss(theirs_model, None, tokenizer, pairs, 0.5, "sigmoid", tmp_path)
    finally:
        trl.DPOTrainer.__init__ = original
    print(f"\nDPO from sft adapter: ours {ours:.8f} TRL {theirs:.8f} diff {ours - theirs:.2e}")
    assert abs(ours - theirs) < 1e-5
    assert abs(ours - math.log(2)) > 1e-3


def test_create_new_adapter_merges_the_sft_adapter_under_a_fresh_one(
    tiny_random, sft_adapter, pairs, tmp_path
):
    trainer = dpo_trainer(tiny_random, None, pairs, tmp_path / "plain")
    continued = dpo_trainer(tiny_random, sft_adapter, pairs, tmp_path / "cont")
    settings = dpo_settings(tiny_random, method="lora", lora=LoraSettings(rank=2, alpha=4.0))
    merged = dpo.build_trainer(from_adapter(settings, sft_adapter, create_new=True),
                               InMemoryPairSource(pairs), tmp_path / "new")  # fmt: skip
    merged.setup()
    assert merged.models.reference.adapter == ""  # adapters disabled = base + merged SFT
    assert merged.model.peft_config["default"].r == 2  # the fresh adapter has the spec's rank
    x = trainer._collate(data_pb2.Batch(pairs=pairs))
    with torch.no_grad():
        for t in (trainer, continued, merged):
            t.model.eval()
        start_merged = merged.loss.objective.policy_logps(merged.models, x)[0]
        start_cont = continued.loss.objective.policy_logps(continued.models, x)[0]
        start_plain = trainer.loss.objective.policy_logps(trainer.models, x)[0]
    torch.testing.assert_close(start_merged, start_cont, rtol=0, atol=1e-4)
    assert (start_plain - start_cont).abs().max() > 1e-2


def test_rm_from_the_sft_adapter_continues_it_with_a_new_score_head(
    tiny_random, sft_adapter, pairs, tmp_path
):
    settings = make_settings(tiny_random, recipe="rm", method="lora", max_steps=2, batch_rows=4,
                             logging_steps=1, lora=LoraSettings(rank=4, alpha=8.0))  # fmt: skip
    result = rm.run(from_adapter(settings, sft_adapter), InMemoryPairSource(pairs), tmp_path)
    assert result.state == "SUCCEEDED"
    saved = load_file(tmp_path / "output" / "adapter" / "adapter_model.safetensors")
    sft_weights = load_file(sft_adapter / "adapter_model.safetensors")
    assert set(sft_weights) <= set(saved)  # the same LoRA weights, trained further
    assert any("score" in k for k in saved)
    config = json.loads((tmp_path / "output" / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["r"] == 4


def test_an_adapter_of_another_shape_is_refused_naming_the_folder(tiny_random, tmp_path):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_random)
    other = lora.apply_lora(
        copy.deepcopy(base), LoraSettings(rank=4, target_modules=("q_proj",)), 0
    )
    folder = tmp_path / "other"
    lora.save_adapter(other, folder)
    weights = load_file(folder / "adapter_model.safetensors")
    from safetensors.torch import save_file

    save_file({k.replace("q_proj", "v_proj"): v for k, v in weights.items()} | {"x.lora_A.weight":
              torch.zeros(1)}, folder / "adapter_model.safetensors")  # fmt: skip
    with pytest.raises(ValueError, match="does not fit this model"):
        lora.continue_adapter(base, folder)


# --- resume_from_checkpoint: a named checkpoint ----------------------------------------------


def test_a_job_resumed_from_a_named_checkpoint_ends_where_the_original_did(
    tiny_random, tokenizer, tmp_path
):
    rows = task_rows(tokenizer, digit_task(4, 32))
    settings = make_settings(tiny_random, max_steps=4, save_steps=2, batch_rows=4)
    sft.run(settings, InMemorySource(rows), tmp_path / "a")
    named = tmp_path / "a" / "checkpoints" / "step-2"
    resumed = replace(settings, resume=True, resume_from=str(named))
    result = sft.run(resumed, InMemorySource(rows), tmp_path / "b")
    assert result.step == 4
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "output" / "metrics.jsonl")
             .read_text().splitlines()]  # fmt: skip
    assert min(steps) > 2  # steps 1-2 were not trained again
    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


# --- PPO from the SFT adapter ------------------------------------------------------------------


@pytest.mark.slow
def test_ppo_from_the_sft_adapter_has_kl_0_at_step_0_and_serves_it_first(
    tiny_random, tokenizer, tmp_path
):
    """The policy starts as the SFT adapter and the reference is base + that adapter: KL 0 at
    step 0 and an engine ratio of 1; version 1, which the fleet generates step 0's rollouts with,
    holds exactly the SFT adapter's weights. A policy started fresh on the same base would be the
    base itself, whose rollouts differ from the SFT adapter's."""
    from inline_fleet import InlineFleet, PromptSource, yes_no_prompts, yes_no_rows
    from test_ppo_recipe import metrics, ppo_settings

    sft_job = tmp_path / "sft"
    settings = make_settings(tiny_random, method="lora", lora=LoraSettings(rank=8, alpha=16.0),
                             learning_rate=5e-3, max_steps=20, batch_rows=8)  # fmt: skip
    sft.run(settings, InMemorySource(yes_no_rows(tokenizer, 160)), sft_job)
    folder = sft_job / "adapters" / "v1"
    job = tmp_path / "ppo"
    odd_first = lambda ids: float(len(ids) > 0 and ids[0] % 2 == 1)  # noqa: E731 (varies)
    fleet = InlineFleet(tiny_random, job, odd_first)
    prompts = PromptSource(yes_no_prompts(tokenizer, range(1000, 1016)))
    from services.training.recipes import ppo

    ppo_run = from_adapter(ppo_settings(tiny_random, max_steps=2), folder)
    result = ppo.run(ppo_run, prompts, job, exchange=fleet, job_id="ppo-from-sft")
    assert result.state == "SUCCEEDED"
    records = metrics(job)
    print(f"\nPPO from sft: kl {[r['ppo/kl'] for r in records]}")
    assert abs(records[0]["ppo/kl"]) < 1e-6
    assert abs(records[0]["ppo/engine_ratio"] - 1.0) < 1e-3
    assert records[1]["ppo/kl"] != 0  # one update later the policy has moved
    first = load_file(job / "adapters" / "v1" / "adapter_model.safetensors")
    sft_weights = load_file(folder / "adapter_model.safetensors")
    assert first.keys() == sft_weights.keys()
    assert all(torch.equal(first[k], sft_weights[k]) for k in first)
    assert {t.adapter.version for t in fleet.published.values()} >= {1}


@pytest.mark.slow
def test_grpo_from_the_sft_adapter_has_kl_0_at_step_0_and_serves_it_first(
    tiny_random, tokenizer, tmp_path
):
    """GRPO as PPO above: with beta > 0 the reference is base + the SFT adapter (a frozen second
    adapter), so the KL term is 0 at step 0, the engine ratio 1, and version 1 holds exactly the
    SFT adapter's weights. Started fresh instead, version 1 would be a new adapter."""
    from inline_fleet import InlineFleet, PromptSource, yes_no_prompts, yes_no_rows
    from test_grpo_recipe import grpo_settings, metrics

    from services.training.recipes import grpo

    sft_job = tmp_path / "sft"
    settings = make_settings(tiny_random, method="lora", lora=LoraSettings(rank=8, alpha=16.0),
                             learning_rate=5e-3, max_steps=20, batch_rows=8)  # fmt: skip
    sft.run(settings, InMemorySource(yes_no_rows(tokenizer, 160)), sft_job)
    folder = sft_job / "adapters" / "v1"
    job = tmp_path / "grpo"
    odd_first = lambda ids: float(len(ids) > 0 and ids[0] % 2 == 1)  # noqa: E731 (varies)
    fleet = InlineFleet(tiny_random, job, odd_first)
    prompts = PromptSource(yes_no_prompts(tokenizer, range(1000, 1016)))
    # one optimizer update per step (one epoch, the step's 4 micro-batches accumulated): step 0's
    # KL is read before anything moved
    step0 = grpo_settings(tiny_random, {"beta": 0.05}, max_steps=2, gradient_accumulation_steps=4,
                          ppo={"ppo_epochs": 1})  # fmt: skip
    run = from_adapter(step0, folder)
    result = grpo.run(run, prompts, job, exchange=fleet, job_id="grpo-from-sft")
    assert result.state == "SUCCEEDED"
    records = [r for r in metrics(job) if "grpo/kl" in r]
    print(f"\nGRPO from sft: kl {[r['grpo/kl'] for r in records]}")
    assert abs(records[0]["grpo/kl"]) < 1e-6
    assert abs(records[0]["grpo/engine_ratio"] - 1.0) < 1e-3
    assert records[1]["grpo/kl"] != 0  # one update later the policy has moved
    first = load_file(job / "adapters" / "v1" / "adapter_model.safetensors")
    sft_weights = load_file(folder / "adapter_model.safetensors")
    assert first.keys() == sft_weights.keys()
    assert all(torch.equal(first[k], sft_weights[k]) for k in first)


def test_the_spec_refuses_a_starting_adapter_where_it_cannot_apply(tiny_random, tmp_path):
    from llamafleet.training.v1 import training_pb2 as tpb
    from test_recipes import job_spec

    from services.common.errors import InvalidArgument
    from services.training.spec.settings import settings
    from services.training.spec.validation import validate

    spec = job_spec(tiny_random)
    spec.adapter_path = str(tmp_path / "not-an-adapter")
    spec.finetuning.type = tpb.FINETUNING_TYPE_FULL
    spec.create_new_adapter = True
    spec.init_adapter.id, spec.init_adapter.version = "sft-1", 1
    with pytest.raises(InvalidArgument) as info:
        validate(spec)
    why = [f"{v.field}: {v.description}" for v in info.value.violations]
    assert any("spec.adapter_path: set at most one of init_adapter" in w for w in why)
    assert any("spec.adapter_path" in w and "is not a PEFT adapter folder" in w for w in why)
    assert any("spec.finetuning.type" in w and "needs LORA" in w for w in why)
    spec = job_spec(tiny_random)
    spec.create_new_adapter = True
    spec.resume_from_checkpoint = str(tmp_path)
    with pytest.raises(InvalidArgument) as info:
        validate(spec)
    fields = sorted(v.field for v in info.value.violations)
    assert fields == ["spec.create_new_adapter", "spec.resume_from_checkpoint"]
    spec = job_spec(tiny_random)
    spec.resume_from_checkpoint = "/x/checkpoints/step-2"
    resolved = settings(spec)
    assert resolved.resume and resolved.resume_from == "/x/checkpoints/step-2"


def test_sft_continues_the_adapter_as_peft_loads_it(tiny_random, tokenizer, sft_adapter, tmp_path):
    """A LoRA job from an adapter starts with exactly PeftModel.from_pretrained's outputs, and
    trains that adapter (its rank from the folder, not the spec's)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from services.training.loop.tokens import TokenLoss
    from services.training.loop.trainer import Trainer

    settings = make_settings(tiny_random, method="lora", lora=LoraSettings(rank=16), max_steps=2,
                             batch_rows=4)  # fmt: skip
    rows = task_rows(tokenizer, digit_task(8, 8))
    trainer = Trainer(from_adapter(settings, sft_adapter), InMemorySource(rows), tmp_path,
                      loss=TokenLoss(False))  # fmt: skip
    trainer.setup()
    assert trainer.model.peft_config["default"].r == 4  # the folder's rank
    ids = torch.tensor([list(rows[0].input_ids)])
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_random),
                                     str(sft_adapter)).eval()  # fmt: skip
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(trainer.model(input_ids=ids).logits, peft(input_ids=ids).logits,
                                   rtol=0, atol=1e-5)  # fmt: skip
    trainer.model.train()
    assert trainer.train().state == "SUCCEEDED"
