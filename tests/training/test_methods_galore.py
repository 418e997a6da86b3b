"""GaLore: full fine-tuning with low-rank projected Adam moments on the linear layers."""

from __future__ import annotations

import math

import pytest
import torch
from llamafleet.training.v1 import training_pb2 as tpb
from method_checks import logits, moved, repeated_batch_rows, train_on_repeated_batch
from synthetic import make_settings
from transformers import AutoModelForCausalLM

from services.common.errors import InvalidArgument, Unimplemented
from services.training.loop.batches import InMemorySource
from services.training.loop.tokens import TokenLoss
from services.training.loop.trainer import Trainer
from services.training.model.methods.galore import GaLoreAdamW, state_bytes, target_parameters
from services.training.model.optim import build_optimizer
from services.training.spec.settings import GaloreSettings, settings
from services.training.spec.validation import validate

RANK = 4


def galore_settings(base, projection="std", **kw):
    return make_settings(
        base, galore=GaloreSettings(rank=RANK, update_interval=3, scale=1.0, projection=projection),
        batch_rows=2, max_steps=6, **kw,
    )  # fmt: skip


def test_one_step_moves_a_target_matrix_by_a_rank_r_update():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(24, 10))
    opt = GaLoreAdamW([{"params": [w], "rank": RANK, "update_interval": 5, "scale": 1.0}], lr=0.1)
    before = w.detach().clone()
    w.grad = torch.randn(24, 10)
    opt.step()
    assert torch.linalg.matrix_rank(w.detach() - before).item() == RANK
    state = opt.state[w]
    assert state["exp_avg"].shape == (24, RANK) and state["projector"].shape == (10, RANK)


def test_full_projection_first_step_matches_hand_derivation():
    """full: R = U_r^T G V_r (r, r). Adam's first bias-corrected step is R / (|R| + eps), so W
    moves by -lr * scale * U_r (R / (|R| + eps)) V_r^T, a rank-r matrix."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(24, 10))
    opt = GaLoreAdamW(
        [{"params": [w], "rank": RANK, "update_interval": 5, "scale": 0.5, "projection": "full"}],
        lr=0.1,
    )
    before = w.detach().clone()
    grad = torch.randn(24, 10)
    w.grad = grad.clone()
    opt.step()
    u, _, vh = torch.linalg.svd(grad, full_matrices=False)
    p, q = u[:, :RANK], vh[:RANK].t()
    r = p.t() @ grad @ q
    expected = before - 0.1 * 0.5 * p @ (r / (r.abs() + 1e-8)) @ q.t()
    torch.testing.assert_close(w.detach(), expected, rtol=1e-5, atol=1e-6)
    assert torch.linalg.matrix_rank(w.detach() - before).item() == RANK
    state = opt.state[w]
    assert state["exp_avg"].shape == (RANK, RANK)
    assert state["projector"].shape == (24, RANK) and state["projector_right"].shape == (10, RANK)


@pytest.mark.parametrize("projection", ["std", "full"])
def test_galore_trains_everything_with_smaller_optimizer_state(
    tiny_random, tokenizer, tmp_path, projection
):
    rows = repeated_batch_rows(tokenizer)
    trainer, losses, before = train_on_repeated_batch(
        galore_settings(tiny_random, projection, logging_steps=1, learning_rate=3e-3),
        rows,
        tmp_path,
    )
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
    assert isinstance(trainer.engine.optimizer, GaLoreAdamW)
    assert moved(trainer.model, before) == set(before)  # full fine-tuning: every tensor moves

    resumed = Trainer(
        galore_settings(tiny_random, projection, resume=True), InMemorySource(rows), tmp_path,
        loss=TokenLoss(train_all_tokens=False),
    )  # fmt: skip
    resumed.setup()
    ids = torch.tensor([rows[0].input_ids[:48]])
    torch.testing.assert_close(
        logits(resumed.model, ids), logits(trainer.model, ids), rtol=0, atol=0
    )
    name = next(iter(target_parameters(resumed.model, ())))
    state = dict(resumed.model.named_parameters())[name]
    restored = resumed.engine.optimizer.state[state]
    assert restored["projector"].shape[1] == RANK


def test_optimizer_state_against_adamw(tiny_random):
    """One step each on the same model with the same gradients: GaLore keeps (m, r) moments and
    an (n, r) projector per linear layer instead of two (m, n) moments."""
    states = {}
    for name, s in (
        ("adamw", make_settings(tiny_random)),
        ("galore", galore_settings(tiny_random)),
    ):
        model = AutoModelForCausalLM.from_pretrained(tiny_random)
        optimizer = build_optimizer(model, s)
        torch.manual_seed(0)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()
        states[name] = state_bytes(optimizer)
    targets = target_parameters(model, ())
    assert len(targets) == 7 * model.config.num_hidden_layers
    linear = sum(p.numel() * 4 * 2 for n, p in model.named_parameters() if n in targets)
    galore_bytes, adamw_bytes = states["galore"], states["adamw"]
    print(f"\noptimizer state: GaLore {galore_bytes} B, AdamW {adamw_bytes} B "
          f"({galore_bytes / adamw_bytes:.3f}x; AdamW moments of the linear layers {linear} B)")  # fmt: skip
    assert galore_bytes < adamw_bytes - linear * 0.8  # the linear layers' moments mostly gone


def test_unknown_target_module(tiny_random):
    model = AutoModelForCausalLM.from_pretrained(tiny_random)
    with pytest.raises(ValueError, match="qkv"):
        target_parameters(model, ("qkv",))


def test_spec_settings_and_refusals(tiny_random):
    spec = tpb.TrainingJobSpec(job_id="j", base_model=str(tiny_random), stage=tpb.STAGE_SFT)
    spec.dataset.dataset_id = "rows"
    spec.finetuning.type = tpb.FINETUNING_TYPE_FULL
    spec.finetuning.galore.rank = 8
    spec.finetuning.galore.projection_type = tpb.GALORE_PROJECTION_TYPE_LEFT
    validate(spec)
    assert settings(spec).galore == GaloreSettings(rank=8, projection="left")
    spec.finetuning.type = tpb.FINETUNING_TYPE_LORA
    with pytest.raises(Unimplemented, match="GaLore.*FINETUNING_TYPE_LORA"):
        validate(spec)
    spec.finetuning.type = tpb.FINETUNING_TYPE_FULL
    spec.finetuning.galore.projection_type = tpb.GALORE_PROJECTION_TYPE_FULL
    validate(spec)
    assert settings(spec).galore.projection == "full"
    spec.finetuning.galore.projection_type = 42
    with pytest.raises(InvalidArgument, match="invalid"):
        validate(spec)
