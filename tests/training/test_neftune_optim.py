"""neftune_noise_alpha (transformers' NEFTune: uniform noise on the input embeddings, training
only) and optim (the optimizer Transformers' Trainer builds for the name)."""

from __future__ import annotations

import math

import pytest
import torch
from llamafleet.training.v1 import training_pb2 as tpb
from synthetic import digit_task, make_settings, task_rows

from services.common.errors import InvalidArgument, Unimplemented
from services.training.loop.batches import InMemorySource
from services.training.loop.tokens import TokenLoss
from services.training.loop.trainer import Trainer
from services.training.model import optim


def trainer_for(base, tokenizer, tmp_path, **overrides):
    settings = make_settings(base, batch_rows=4, **overrides)
    rows = task_rows(tokenizer, digit_task(2, 16))
    trainer = Trainer(settings, InMemorySource(rows), tmp_path, loss=TokenLoss(False))
    trainer.setup()
    return trainer


@pytest.mark.parametrize("method", ["full", "lora"])
def test_neftune_noise_is_uniform_of_magnitude_alpha_over_sqrt_l_d_in_training_only(
    tiny_random, tokenizer, tmp_path, method
):
    alpha = 5.0
    trainer = trainer_for(tiny_random, tokenizer, tmp_path, neftune_alpha=alpha, method=method)
    embeddings = trainer.model.get_input_embeddings()
    ids = torch.randint(0, 200, (2, 300))
    trainer.model.eval()
    clean = embeddings(ids)
    assert torch.equal(embeddings(ids), clean)  # no noise at evaluation
    trainer.model.train()
    noise = embeddings(ids) - clean  # (2, 300, d)
    d = clean.shape[-1]
    bound = alpha / math.sqrt(300 * d)  # transformers: alpha / sqrt(L * d), L the row length
    print(
        f"\nNEFTune: bound {bound:.5f}, max {noise.abs().max():.5f}, mean |n| {noise.abs().mean():.5f}"
    )
    assert noise.abs().max() <= bound * (1 + 1e-5)
    assert noise.abs().max() >= 0.99 * bound
    assert abs(float(noise.abs().mean()) - bound / 2) < 0.02 * bound  # E|U(-b, b)| = b / 2
    assert abs(float(noise.mean())) < 0.02 * bound
    plain = trainer_for(tiny_random, tokenizer, tmp_path / "plain", method=method)
    plain.model.train()
    emb = plain.model.get_input_embeddings()
    assert torch.equal(emb(ids), emb(ids))  # off unless asked


def test_neftune_and_optim_specs_are_checked(tiny_random):
    from test_recipes import job_spec

    from services.training.spec.settings import settings
    from services.training.spec.validation import validate

    spec = job_spec(tiny_random)
    spec.hyperparameters.neftune_noise_alpha = 5
    spec.hyperparameters.optim = "adafactor"
    validate(spec)
    assert (settings(spec).neftune_alpha, settings(spec).optim) == (5.0, "adafactor")
    spec.hyperparameters.neftune_noise_alpha = -1
    spec.hyperparameters.optim = "adamw_apex_fused"
    with pytest.raises(InvalidArgument) as info:
        validate(spec)
    why = {v.field: v.description for v in info.value.violations}
    assert "adamw_apex_fused' is not offered" in why["spec.hyperparameters.optim"]
    assert ">= 0" in why["spec.hyperparameters.neftune_noise_alpha"]
    spec = job_spec(tiny_random)
    spec.hyperparameters.optim = "sgd"
    spec.finetuning.galore.rank = 4
    spec.finetuning.type = tpb.FINETUNING_TYPE_FULL
    with pytest.raises(Unimplemented, match="GaLore"):
        validate(spec)


EXPECTED = {  # name -> (class, what Transformers' defaults give it)
    "adamw_torch": ("torch.optim.adamw.AdamW", {"betas": (0.9, 0.999), "eps": 1e-8}),
    "adamw_torch_fused": ("torch.optim.adamw.AdamW", {"fused": True}),
    "sgd": ("torch.optim.sgd.SGD", {"momentum": 0}),
    "adafactor": ("transformers.optimization.Adafactor", {"relative_step": False,
                                                          "scale_parameter": False}),
    "adamw_8bit": ("bitsandbytes.optim.adamw.AdamW", {"optim_bits": 8, "is_paged": False}),
    "paged_adamw_8bit": ("bitsandbytes.optim.adamw.AdamW", {"optim_bits": 8, "is_paged": True}),
}  # fmt: skip


@pytest.mark.parametrize("name", list(EXPECTED))
def test_optim_builds_the_named_optimizer_over_the_same_groups_and_it_learns(
    tiny_random, tokenizer, tmp_path, name
):
    if EXPECTED[name][0].startswith("bitsandbytes"):
        pytest.importorskip("bitsandbytes")
    lr = 0.5 if name == "sgd" else 3e-3
    trainer = trainer_for(tiny_random, tokenizer, tmp_path, optim=name, learning_rate=lr,
                          weight_decay=0.01, max_steps=12, logging_steps=1)  # fmt: skip
    opt = trainer.engine.optimizer if hasattr(trainer.engine, "optimizer") else None
    opt = opt or optim.build_optimizer(trainer.model, trainer.settings)
    cls, defaults = EXPECTED[name]
    assert f"{type(opt).__module__}.{type(opt).__name__}" == cls
    for key, value in defaults.items():
        if cls.startswith("bitsandbytes"):  # bitsandbytes keeps these beside its defaults
            got = opt.is_paged if key == "is_paged" else getattr(opt.args, key)
        else:
            got = opt.defaults[key]
        assert got == value, key
    decays = sorted({g["weight_decay"] for g in opt.param_groups})
    assert decays == [0.0, 0.01]  # matrices decay, norms and biases do not (as with AdamW)
    assert trainer.train().state == "SUCCEEDED"
    losses = [loss for _, loss in trainer.history]
    print(f"\n{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < losses[0] - 0.1
    if cls.startswith("bitsandbytes"):  # the large matrices keep 8-bit moments
        dtypes = {t.dtype for state in opt.state.values() for t in state.values()
                  if isinstance(t, torch.Tensor)}  # fmt: skip
        assert torch.uint8 in dtypes, dtypes
