"""Mixture of experts (the tiny Qwen3-MoE): the router loss added to the training loss, and LoRA
targets that include or leave out the experts.

The router loss, by hand (Switch Transformer, as transformers' ``load_balancing_loss_func``
computes it): for every layer's router logits ``z`` (tokens, E), ``p = softmax(z)``; the top-k
experts of each token get one assignment each. Over all layers' tokens, ``f_e`` = assignments to
``e`` / rows and ``P_e`` = mean of ``p_e``; ``aux = E * sum_e f_e * P_e`` (uniform routing gives
``E * k/E * 1/E * E = k``). With ``moe_aux_loss_coef = c`` the step's loss is the token-mean
cross-entropy plus ``c * aux``: exactly the loss transformers returns for ``labels=...`` with
``output_router_logits=True`` and ``router_aux_loss_coef = c`` (LLaMA-Factory's key sets just
these two). Tolerance 1e-5.
"""

from __future__ import annotations

import json

import pytest
import torch
from llamafleet.data.v1 import data_pb2
from llamafleet.training.v1 import training_pb2 as tpb
from method_checks import moved
from synthetic import make_settings
from transformers import AutoModelForCausalLM

from services.common.errors import InvalidArgument, Unimplemented
from services.training.loop.batches import InMemorySource
from services.training.loop.tokens import TokenLoss
from services.training.loop.trainer import Trainer
from services.training.model import moe
from services.training.spec.settings import LoraSettings
from services.training.spec.validation import validate

COEF = 0.5  # large, so the router term is far above the tolerance


def row(ids, labels=None):
    return data_pb2.TokenRow(
        input_ids=ids, labels=labels or ids, position_ids=range(len(ids)),
        cu_seqlens=[0, len(ids)], example_ids=["x"],
    )  # fmt: skip


def examples(n: int = 2, length: int = 40):
    g = torch.Generator().manual_seed(3)
    return [torch.randint(10, 3000, (length + 7 * i,), generator=g).tolist() for i in range(n)]


def trainer_for(folder, tmp_path, rows, **overrides):
    fields = dict(recipe="pt", max_steps=1, batch_rows=len(rows), moe_aux_loss_coef=COEF)
    settings = make_settings(folder, **{**fields, **overrides})
    trainer = Trainer(
        settings, InMemorySource(rows), tmp_path / "job", loss=TokenLoss(train_all_tokens=True)
    )
    trainer.setup()
    return trainer


def aux_by_hand(router_logits, num_experts: int, top_k: int) -> float:
    z = torch.cat([r.detach().float() for r in router_logits])  # (layers * tokens, E)
    p = z.softmax(-1)
    picked = torch.zeros_like(p).scatter_(1, p.topk(top_k, dim=-1).indices, 1.0)
    f, mean_p = picked.mean(0), p.mean(0)
    return float(num_experts * (f * mean_p).sum())


def test_router_loss_equals_transformers_and_the_hand_derivation(family_models, tmp_path):
    folder = family_models["qwen3_moe"]
    (ids,) = examples(1)
    trainer = trainer_for(folder, tmp_path, [row(ids)])
    x = trainer._collate(data_pb2.Batch(rows=[row(ids)]))
    loss_sum, count = trainer._forward_loss(x)
    ours = float(loss_sum.detach()) / count

    # as LLaMA-Factory loads it: the coefficient in the config the model is built from
    reference = AutoModelForCausalLM.from_pretrained(folder, router_aux_loss_coef=COEF).eval()
    with torch.no_grad():
        out = reference(
            input_ids=torch.tensor([ids]), labels=torch.tensor([ids]), output_router_logits=True
        )
    assert ours == pytest.approx(float(out.loss), abs=1e-5)
    hand = aux_by_hand(out.router_logits, 4, 2)
    assert float(out.aux_loss) == pytest.approx(hand, abs=1e-5)
    plain = float(out.loss) - COEF * hand
    assert ours - plain == pytest.approx(COEF * hand, abs=1e-5)  # the router term is in there
    assert COEF * hand > 0.5  # and far from negligible (uniform routing gives aux = k = 2)


def test_padding_is_not_routed_in_the_loss(family_models, tmp_path):
    """Eager padded rows and varlen concatenated rows hold the same real tokens: same aux."""
    rows = [row(ids) for ids in examples(2)]
    values = []
    for attention in ("eager", "sdpa"):
        trainer = trainer_for(family_models["qwen3_moe"], tmp_path / attention, rows,
                              attention=attention)  # fmt: skip
        x = trainer._collate(data_pb2.Batch(rows=rows))
        with trainer.router.record():
            trainer.loss.loss(trainer.models, x)
        values.append(float(trainer.router.aux_loss(moe.token_mask(x))))
    assert values[0] == pytest.approx(values[1], abs=1e-5)


def test_the_router_loss_trains_the_router_and_is_logged(family_models, tmp_path):
    rows = [row(ids) for ids in examples(2)]
    trainer = trainer_for(family_models["qwen3_moe"], tmp_path, rows, max_steps=2,
                          logging_steps=1)  # fmt: skip
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert any(".mlp.gate." in n for n in moved(trainer.model, before))
    trainer.writer.close()
    records = [json.loads(x) for x in (tmp_path / "job/output/metrics.jsonl").open()]
    assert len(records) == 2 and all(r["moe/aux_loss"] > 1.0 for r in records)


@pytest.mark.parametrize("targets", [(), ("all", "experts")], ids=["all", "all+experts"])
def test_lora_targets_include_or_exclude_the_experts(family_models, tmp_path, targets):
    rows = [row(ids) for ids in examples(2)]
    trainer = trainer_for(
        family_models["qwen3_moe"], tmp_path, rows, method="lora", max_steps=3,
        learning_rate=1e-2, lora=LoraSettings(rank=4, alpha=8, target_modules=targets),
    )  # fmt: skip
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    expert_adapters = [n for n in names if ".experts." in n]
    assert any(".q_proj.lora_A." in n for n in names)
    assert bool(expert_adapters) == ("experts" in targets)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = moved(trainer.model, before)
    assert all("lora_" in n for n in changed)  # the experts' own weights never move
    assert bool([n for n in changed if ".experts." in n]) == ("experts" in targets)


def test_experts_named_on_a_dense_model_are_refused(family_models, tmp_path):
    with pytest.raises(ValueError, match="experts"):
        trainer_for(
            family_models["qwen3"], tmp_path, [row(examples(1)[0])], method="lora",
            moe_aux_loss_coef=0.0, lora=LoraSettings(target_modules=("q_proj", "experts")),
        )  # fmt: skip


def _spec(base, stage=tpb.STAGE_SFT, coef=0.01):
    spec = tpb.TrainingJobSpec(base_model=str(base), stage=stage)
    spec.dataset.dataset_id = "rows"
    spec.finetuning.moe_aux_loss_coef = coef
    return spec


def test_validation(family_models):
    from services.training.spec.settings import settings

    validate(_spec(family_models["qwen3_moe"]))
    assert settings(_spec(family_models["qwen3_moe"])).moe_aux_loss_coef == pytest.approx(0.01)
    with pytest.raises(InvalidArgument, match="not a mixture of experts"):
        validate(_spec(family_models["qwen3"]))
    with pytest.raises(InvalidArgument, match=">= 0"):
        validate(_spec(family_models["qwen3_moe"], coef=-1.0))
    with pytest.raises(Unimplemented, match="STAGE_PPO"):
        validate(_spec(family_models["qwen3_moe"], stage=tpb.STAGE_PPO))


def test_lora_target_all_with_experts_from_a_spec_keeps_both(family_models):
    """``lora_target: all,experts`` in a job: every linear layer and the experts."""
    from services.training.model.lora import lora_config
    from services.training.spec.settings import settings

    spec = _spec(family_models["qwen3_moe"], coef=0.0)
    spec.finetuning.lora.target_modules.extend(["all", "experts"])
    s = settings(spec)
    model = AutoModelForCausalLM.from_pretrained(family_models["qwen3_moe"])
    config = lora_config(model, s.lora)
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert set(config.target_parameters) == {"experts.gate_up_proj", "experts.down_proj"}
    spec.finetuning.lora.ClearField("target_modules")
    spec.finetuning.lora.target_modules.append("all")
    assert settings(spec).lora.target_modules == ()
