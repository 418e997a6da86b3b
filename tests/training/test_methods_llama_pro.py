"""LLaMA-Pro: identity blocks interleaved into the model; only they train; export is a plain folder."""

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
from services.training.model.methods import llama_pro
from services.training.spec.settings import FreezeSettings
from services.training.spec.validation import validate


def test_new_block_indices():
    # 4 layers, 2 new: [0 1 new 2 3 new] -> new at 2 and 5
    assert llama_pro.new_block_indices(4, 2) == [2, 5]
    assert llama_pro.new_block_indices(4, 1) == [4]
    assert llama_pro.new_block_indices(4, 4) == [1, 3, 5, 7]
    with pytest.raises(ValueError, match="divide"):
        llama_pro.new_block_indices(4, 3)


@pytest.mark.parametrize("num_expand", [1, 2, 4])
def test_expanded_model_computes_what_the_original_did(tiny_random, num_expand):
    model = AutoModelForCausalLM.from_pretrained(tiny_random)
    ids = torch.randint(
        0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0)
    )
    reference = logits(model, ids)
    new = llama_pro.expand(model, num_expand)
    assert model.config.num_hidden_layers == 4 + num_expand == len(model.model.layers)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(
        range(4 + num_expand)
    )
    torch.testing.assert_close(logits(model, ids), reference, rtol=0, atol=1e-5)
    # a cached generation runs through the renumbered layers
    model.config.use_cache = True
    out = model.generate(ids[:1, :8], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 12) and len(new) == num_expand


def test_only_new_blocks_train_and_export_loads(tiny_random, tokenizer, tmp_path):
    rows = repeated_batch_rows(tokenizer)
    settings = make_settings(
        tiny_random, method="freeze", llama_pro_expand=2, max_steps=6, batch_rows=2,
        logging_steps=1, learning_rate=3e-3,
    )  # fmt: skip
    trainer, losses, before = train_on_repeated_batch(settings, rows, tmp_path)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
    names = {n for n, _ in trainer.model.named_parameters()}
    new_blocks = {n for n in names if n.startswith(("model.layers.2.", "model.layers.5."))}
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == new_blocks
    assert moved(trainer.model, before) <= new_blocks  # nothing outside the new blocks changed
    # the zeroed output projections get gradients first, so at least they moved
    assert {"model.layers.2.self_attn.o_proj.weight", "model.layers.5.mlp.down_proj.weight"} <= (
        moved(trainer.model, before)
    )

    ids = torch.tensor([rows[0].input_ids[:48]])
    resumed = Trainer(
        make_settings(
            tiny_random, method="freeze", llama_pro_expand=2, max_steps=6, batch_rows=2,
            resume=True,
        ),
        InMemorySource(rows), tmp_path, loss=TokenLoss(train_all_tokens=False),
    )  # fmt: skip
    resumed.setup()
    torch.testing.assert_close(
        logits(resumed.model, ids), logits(trainer.model, ids), rtol=0, atol=0
    )

    trainer.save_outputs()
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert exported.config.num_hidden_layers == 6
    torch.testing.assert_close(logits(exported, ids), logits(trainer.model, ids), rtol=0, atol=0)


def _spec(base, finetuning_type, num_expand):
    spec = tpb.TrainingJobSpec(job_id="j", base_model=str(base), stage=tpb.STAGE_SFT)
    spec.dataset.dataset_id = "rows"
    spec.finetuning.type = finetuning_type
    spec.finetuning.llama_pro.num_expand = num_expand
    return spec


def test_validate(tiny_random):
    validate(_spec(tiny_random, tpb.FINETUNING_TYPE_FREEZE, 2))
    validate(_spec(tiny_random, tpb.FINETUNING_TYPE_LORA, 2))  # test_methods_llama_pro_lora.py
    with pytest.raises(Unimplemented, match="LLaMA-Pro.*FINETUNING_TYPE_FULL"):
        validate(_spec(tiny_random, tpb.FINETUNING_TYPE_FULL, 2))
    with pytest.raises(InvalidArgument) as err:
        validate(_spec(tiny_random, tpb.FINETUNING_TYPE_FREEZE, 3))
    assert [v.field for v in err.value.violations] == ["spec.finetuning.llama_pro.num_expand"]
    spec = _spec(tiny_random, tpb.FINETUNING_TYPE_FREEZE, 0)
    spec.finetuning.freeze.trainable_layers = -9
    with pytest.raises(InvalidArgument, match="invalid"):
        validate(spec)
    assert FreezeSettings().trainable_layers == 2


def test_use_llama_pro_trains_the_blocks_of_an_already_expanded_base(tiny_random, tokenizer,
                                                                      tmp_path):  # fmt: skip
    """LLaMA-Factory's use_llama_pro: the base folder was expanded beforehand (its
    scripts/llama_pro.py; here ``expand`` + save_pretrained); with ``freeze_trainable_layers: 2``
    the last block of each of 2 groups trains: exactly the inserted ones."""
    model = AutoModelForCausalLM.from_pretrained(tiny_random)
    inserted = llama_pro.expand(model, 2)
    model.save_pretrained(tmp_path / "expanded")
    tokenizer.save_pretrained(tmp_path / "expanded")
    rows = repeated_batch_rows(tokenizer)
    settings = make_settings(
        tmp_path / "expanded", method="freeze", llama_pro_expand=2, llama_pro_expanded=True,
        max_steps=3, batch_rows=2, logging_steps=1, learning_rate=3e-3,
    )  # fmt: skip
    trainer, losses, before = train_on_repeated_batch(settings, rows, tmp_path / "job")
    assert len(trainer.model.model.layers) == 6  # nothing inserted again
    trained = {n.split(".")[2] for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained == {str(i) for i in inserted} == {"2", "5"}
    assert {n.split(".")[2] for n in moved(trainer.model, before)} <= trained

    spec = _spec(tmp_path / "expanded", tpb.FINETUNING_TYPE_FREEZE, 4)
    spec.finetuning.llama_pro.expanded = True
    with pytest.raises(InvalidArgument, match="expanded base model's 6 layers"):
        validate(spec)
