"""Layer-wise GaLore: one optimizer per parameter, stepped in the backward pass.

Independent reference: the same steps taken by the whole-model ``GaLoreAdamW`` (no clipping),
which updates every parameter with the same per-parameter rule, must give the same weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from llamafleet.training.v1 import training_pb2 as tpb
from method_checks import logits, moved, repeated_batch_rows, train_on_repeated_batch
from synthetic import make_settings

from services.common.errors import InvalidArgument
from services.training.loop.batches import InMemorySource
from services.training.loop.tokens import TokenLoss
from services.training.loop.trainer import Trainer
from services.training.model.methods.galore import GaLoreAdamW, LayerwiseOptimizer
from services.training.spec.settings import GaloreSettings, settings
from services.training.spec.validation import validate


def layerwise_settings(base, layerwise=True, **kw):
    fields = dict(
        galore=GaloreSettings(rank=4, update_interval=3, scale=1.0, layerwise=layerwise),
        batch_rows=2, max_steps=6, max_grad_norm=0.0, weight_decay=0.01, logging_steps=1,
        learning_rate=3e-3,
    )  # fmt: skip
    fields.update(kw)
    return make_settings(base, **fields)


def test_layerwise_trains_steps_in_backward_and_matches_whole_model_galore(
    tiny_random, tokenizer, tmp_path
):
    rows = repeated_batch_rows(tokenizer)
    trainer, losses, before = train_on_repeated_batch(
        layerwise_settings(tiny_random), rows, tmp_path / "layerwise"
    )
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
    assert moved(trainer.model, before) == set(before)  # full fine-tuning: every tensor moved

    optimizer = trainer.engine.optimizer
    assert isinstance(optimizer, LayerwiseOptimizer)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    # memory: no optimizer holds more than its one parameter, the wrapper holds no state
    assert len(optimizer.optimizers) == len(params)
    for param, inner in optimizer.optimizers.items():
        owned = [p for g in inner.param_groups for p in g["params"]]
        assert len(owned) == 1 and owned[0] is param
        assert set(inner.state) <= {param}
    assert not optimizer.state
    # the gradients were consumed and freed in the backward pass: none is held afterwards
    assert all(p.grad is None for p in params)
    projected = [inner for inner in optimizer.optimizers.values() if inner.param_groups[0]["rank"]]
    assert projected and all("projector" in next(iter(o.state.values())) for o in projected)

    # the same 6 steps with whole-model GaLore (one optimizer over everything)
    reference, ref_losses, _ = train_on_repeated_batch(
        layerwise_settings(tiny_random, layerwise=False), rows, tmp_path / "whole"
    )
    assert isinstance(reference.engine.optimizer, GaLoreAdamW)
    for (name, p), (_, q) in zip(
        trainer.model.named_parameters(), reference.model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    # the reported gradient norm is the whole model's, as with one optimizer (it used to be 0)
    norms = [json.loads(x)["grad_norm"] for x in (tmp_path / "layerwise" / "output" /
             "metrics.jsonl").read_text().splitlines() if '"grad_norm"' in x]  # fmt: skip
    ref_norms = [json.loads(x)["grad_norm"] for x in (tmp_path / "whole" / "output" /
                 "metrics.jsonl").read_text().splitlines() if '"grad_norm"' in x]  # fmt: skip
    assert len(norms) == 6 and all(n > 0 for n in norms)
    assert norms == pytest.approx(ref_norms, rel=1e-4)


def test_layerwise_schedule_and_resume(tiny_random, tokenizer, tmp_path):
    rows = repeated_batch_rows(tokenizer)
    run = layerwise_settings(tiny_random, lr_scheduler="linear", max_steps=4, save_steps=2)
    trainer, _, _ = train_on_repeated_batch(run, rows, tmp_path)
    # the scheduler drives every per-parameter optimizer: linear decay to 0 at step 4
    lrs = {g["lr"] for o in trainer.engine.optimizer.optimizers.values() for g in o.param_groups}
    assert lrs == {0.0}

    # resume from step 2 and train to 4: the same weights as the uninterrupted run
    (tmp_path / "checkpoints" / "step-4").rename(tmp_path / "step-4-kept")
    resumed = Trainer(
        replace(run, resume=True),
        InMemorySource(rows),
        tmp_path,
        loss=TokenLoss(train_all_tokens=False),
    )
    resumed.setup()
    assert resumed.step == 2
    resumed.train()
    ids = torch.tensor([rows[0].input_ids[:48]])
    torch.testing.assert_close(
        logits(resumed.model, ids), logits(trainer.model, ids), rtol=1e-5, atol=1e-6
    )


def test_layerwise_spec_validation(tiny_random):
    spec = tpb.TrainingJobSpec(job_id="j", base_model=str(tiny_random), stage=tpb.STAGE_SFT)
    spec.dataset.dataset_id = "rows"
    spec.finetuning.type = tpb.FINETUNING_TYPE_FULL
    spec.finetuning.galore.layerwise = True
    validate(spec)
    resolved = settings(spec)
    assert resolved.galore.layerwise and resolved.max_grad_norm == 0.0  # unset: no clipping

    spec.hyperparameters.gradient_accumulation_steps = 2
    spec.hyperparameters.max_grad_norm = 1.0
    spec.distributed.world_size = 2
    spec.compute_dtype = tpb.COMPUTE_DTYPE_FLOAT16
    with pytest.raises(InvalidArgument) as err:
        validate(spec)
    fields = {v.field for v in err.value.violations if "layer-wise" in v.description}
    assert fields == {
        "spec.hyperparameters.gradient_accumulation_steps",
        "spec.hyperparameters.max_grad_norm",
        "spec.distributed.world_size",
        "spec.compute_dtype",
    }
