"""Fine-tuning methods through the preference recipes (``rm``, ``dpo``) on the tiny model.

Each method trains a few steps on one repeated batch of preference pairs: the loss is finite and
falls, exactly the parameters the method trains may move, and every other one is bit-identical.
Combinations a recipe cannot honour are refused by ``validate`` (checked at the end).
"""

from __future__ import annotations

import math

import pytest
import torch
from llamafleet.training.v1 import training_pb2 as tpb
from method_checks import moved
from synthetic import digit_task, make_settings
from test_dpo import preference_pairs
from test_recipes import job_spec

from services.common.errors import Unimplemented
from services.training.loop.batches import InMemoryPairSource
from services.training.model import load as models
from services.training.recipes import dpo, rm
from services.training.spec.settings import LoraSettings, PreferenceSettings
from services.training.spec.validation import validate

NEW_BLOCKS = (2, 5)  # 4 layers + 2 LLaMA-Pro blocks


@pytest.fixture(scope="module")
def pairs(tokenizer):
    return preference_pairs(tokenizer, digit_task(21, 4))


def train(recipe: str, settings, pairs, job_dir):
    """``settings`` trained for 6 steps on the same 4 pairs: (trainer, losses, weights before)."""
    build_trainer = rm.build_trainer if recipe == "rm" else dpo.build_trainer
    trainer = build_trainer(settings, InMemoryPairSource(pairs), job_dir)
    trainer.setup()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    return trainer, [loss for _, loss in trainer.history], before


def method_settings(base, recipe, **overrides):
    fields = dict(
        recipe=recipe, max_steps=6, batch_rows=4, logging_steps=1, learning_rate=5e-3,
        preference=PreferenceSettings(beta=0.5, loss_type="sigmoid"),
    )  # fmt: skip
    fields.update(overrides)
    return make_settings(base, **fields)


def check_trained(trainer, losses, before, allowed: set[str]):
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0], losses
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and trainable <= allowed, trainable - allowed
    changed = moved(trainer.model, before)
    assert changed and changed <= trainable  # everything not trained is bit-identical
    return trainable, changed


def is_lora(name: str) -> bool:
    return ".lora_" in name


def is_score(name: str) -> bool:  # rm's trained head (peft modules_to_save copy)
    return name.split(".")[-4:-2] == ["score", "modules_to_save"] or ".score." in name


LORA_VARIANTS = {
    "dora": dict(use_dora=True),
    "rslora": dict(use_rslora=True),
    "pissa": dict(pissa_init=True, pissa_iters=4),
    "loraplus": dict(loraplus_lr_ratio=16.0),
}


@pytest.mark.parametrize("recipe", ["rm", "dpo"])
@pytest.mark.parametrize("variant", list(LORA_VARIANTS))
def test_lora_variants(tiny_random, pairs, tmp_path, recipe, variant):
    lora = LoraSettings(rank=8, alpha=16, **LORA_VARIANTS[variant])
    # PiSSA in dpo: a reference-free loss (the adapter-disabled model is not the base, see below)
    loss = "orpo" if variant == "pissa" else "sigmoid"
    # LoRA+ trains lora_B 16x faster: at 5e-3 (8e-2 on B) six steps overshoot (the rm loss at the
    # end-of-turn token: 0.68 -> 0.34 -> 1.87); 3e-3 falls in both recipes
    lr = 3e-3 if variant == "loraplus" else 5e-3
    settings = method_settings(
        tiny_random, recipe, method="lora", lora=lora, learning_rate=lr,
        preference=PreferenceSettings(beta=0.5, loss_type=loss),
    )  # fmt: skip
    trainer, losses, before = train(recipe, settings, pairs, tmp_path)
    names = set(before)
    allowed = {n for n in names if is_lora(n) or (recipe == "rm" and is_score(n))}
    trainable, changed = check_trained(trainer, losses, before, allowed)
    assert any("lora_B" in n for n in changed)
    if recipe == "rm":
        assert any(is_score(n) for n in changed)  # the score head trains with the adapters
    if variant == "dora":
        assert any("lora_magnitude_vector" in n for n in changed)
    if variant == "rslora":  # alpha / sqrt(r), as peft computes it
        layer = trainer.model.get_base_model().model.layers[0].self_attn.q_proj
        assert layer.scaling["default"] == pytest.approx(16 / math.sqrt(8))
    if variant == "loraplus":  # lora_B at 16x the learning rate, by optimizer parameter group
        optimizer = trainer.engine.optimizer
        by_id = {id(p): n for n, p in trainer.model.named_parameters()}
        for group in optimizer.param_groups:
            group_names = [by_id[id(p)] for p in group["params"]]
            if any("lora_B" in n for n in group_names):
                assert all("lora_B" in n for n in group_names)
                assert group["initial_lr"] == pytest.approx(16 * lr)
            else:
                assert group["initial_lr"] == pytest.approx(lr)
    if recipe == "dpo":  # the adapter was saved and published as a version
        assert (tmp_path / "adapters" / "v1" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("recipe", ["rm", "dpo"])
def test_full_fine_tuning(tiny_random, pairs, tmp_path, recipe):
    settings = method_settings(tiny_random, recipe, method="full", learning_rate=1e-3)
    trainer, losses, before = train(recipe, settings, pairs, tmp_path)
    trainable, changed = check_trained(trainer, losses, before, set(before))
    assert trainable == set(before)
    assert {n for n in changed if ".layers." in n} == {n for n in before if ".layers." in n}
    if recipe == "dpo":  # a frozen reference copy of the base, untouched by training
        reference = trainer.models.reference.copy
        assert reference is not None and not any(p.requires_grad for p in reference.parameters())
        base = models.load_base(settings, torch.device("cpu"))
        for (name, p), (_, q) in zip(
            reference.named_parameters(), base.named_parameters(), strict=True
        ):
            assert torch.equal(p, q), name


def test_llama_pro_lora_through_dpo(tiny_random, pairs, tmp_path):
    settings = method_settings(
        tiny_random, "dpo", method="lora", lora=LoraSettings(rank=8, alpha=16), llama_pro_expand=2
    )
    trainer, losses, before = train("dpo", settings, pairs, tmp_path)
    in_new = {
        n for n in before if is_lora(n) and int(n.split(".layers.")[1].split(".")[0]) in NEW_BLOCKS
    }
    trainable, _ = check_trained(trainer, losses, before, in_new)
    assert trainable == in_new


def test_llama_pro_freeze_through_dpo(tiny_random, pairs, tmp_path):
    settings = method_settings(tiny_random, "dpo", method="freeze", llama_pro_expand=2)
    trainer, losses, before = train("dpo", settings, pairs, tmp_path)
    new = {n for n in before if n.startswith(tuple(f"model.layers.{i}." for i in NEW_BLOCKS))}
    trainable, changed = check_trained(trainer, losses, before, new)
    assert trainable == new
    # the reference is the expanded base, frozen: the policy's weights outside the new blocks
    ref = dict(trainer.models.reference.copy.named_parameters())
    assert set(ref) == set(before)
    assert all(torch.equal(ref[n], before[n]) for n in before)


def test_pissa_adapter_disabled_is_not_the_base(tiny_random):
    """Why PiSSA is refused with a reference-based DPO loss: PiSSA moves the principal part of W
    into the adapter, so the adapter-disabled model (the LoRA reference) is the residual
    W - BA, not the base model."""
    from services.training.model.lora import apply_lora

    settings = method_settings(tiny_random, "dpo", method="lora")
    ids = torch.arange(3, 40)[None]
    base = models.load_base(settings, torch.device("cpu")).eval()
    with torch.no_grad():
        reference = base(input_ids=ids).logits
    model = apply_lora(base, LoraSettings(rank=8, pissa_init=True, pissa_iters=4), seed=0).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference, rtol=0, atol=1e-4)
        with model.disable_adapter():
            residual = model(input_ids=ids).logits
    assert (residual - reference).abs().max() > 1e-2


def test_refused_combinations(tiny_random):
    def spec(stage, **lora):
        s = job_spec(tiny_random)
        s.stage = stage
        for key, value in lora.items():
            setattr(s.finetuning.lora, key, value)
        return s

    pissa = spec(tpb.STAGE_DPO, pissa_init=True)
    with pytest.raises(Unimplemented, match="PiSSA.*PREFERENCE_LOSS_SIGMOID"):
        validate(pissa)
    pissa.preference.loss_type = tpb.PREFERENCE_LOSS_SIMPO  # reference-free: fine
    validate(pissa)
    validate(spec(tpb.STAGE_RM, pissa_init=True))
    freeze = spec(tpb.STAGE_DPO)
    freeze.finetuning.type = tpb.FINETUNING_TYPE_FREEZE
    validate(freeze)
    freeze.stage = tpb.STAGE_RM
    with pytest.raises(Unimplemented, match="STAGE_RM with FREEZE"):
        validate(freeze)
