"""Methods reached from a ``TrainingJobSpec``: RoPE scaling end to end through ``settings()``,
the QLoRA 4-bit data type and double quantisation in the ``BitsAndBytesConfig`` that is built,
and the validation of the spec fields that carry them (field paths in the errors)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from llamafleet.data.v1 import data_pb2
from llamafleet.training.v1 import training_pb2 as tpb
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from services.common.errors import InvalidArgument, Unimplemented
from services.training.loop.batches import InMemorySource
from services.training.loop.tokens import TokenLoss
from services.training.loop.trainer import Trainer
from services.training.spec.settings import settings
from services.training.spec.validation import validate
from services.training.tiny.corpus import synthetic_corpus

ORIGINAL = 64  # max_position_embeddings of the short-context copy of the tiny model
LENGTH = 150  # trained row length: past 64, factor ceil(150 / 64) = 3


@pytest.fixture(scope="module")
def short_context_model(tiny_random, tokenizer, tmp_path_factory):
    """The tiny model saved with ``max_position_embeddings = 64`` (and its tokenizer)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_random)
    model.config.max_position_embeddings = ORIGINAL
    folder = tmp_path_factory.mktemp("short") / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def spec_for(base, **fields) -> tpb.TrainingJobSpec:
    spec = tpb.TrainingJobSpec(job_id="j", base_model=str(base), stage=tpb.STAGE_PT, **fields)
    spec.dataset.dataset_id = "rows"
    return spec


def violations(spec) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as err:
        validate(spec)
    return {v.field: v.description for v in err.value.violations}


# --- RoPE scaling ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "enum, name", [(tpb.ROPE_SCALING_TYPE_LINEAR, "linear"), (tpb.ROPE_SCALING_TYPE_YARN, "yarn")]
)
def test_rope_scaling_from_the_spec_trains_past_the_original_length(
    short_context_model, tokenizer, tmp_path, enum, name
):
    spec = spec_for(short_context_model, rope_scaling=enum, max_context_length=LENGTH)
    spec.finetuning.type = tpb.FINETUNING_TYPE_FULL
    validate(spec)
    resolved = settings(spec)
    assert (resolved.rope_scaling, resolved.max_context_length) == (name, LENGTH)

    ids = tokenizer(" ".join(synthetic_corpus(40)))["input_ids"][:LENGTH]
    assert len(ids) == LENGTH > ORIGINAL
    row = data_pb2.TokenRow(
        input_ids=ids, labels=ids, position_ids=range(LENGTH), cu_seqlens=[0, LENGTH],
        example_ids=["long"],
    )  # fmt: skip
    run = replace(resolved, max_steps=5, batch_rows=1, logging_steps=1, learning_rate=3e-3,
                  lr_scheduler="constant")  # fmt: skip
    trainer = Trainer(
        run, InMemorySource([row]), tmp_path / "job", loss=TokenLoss(train_all_tokens=True)
    )
    trainer.setup()
    trainer.train()
    losses = [loss for _, loss in trainer.history]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses

    trainer.save_outputs()
    saved = json.loads((tmp_path / "job" / "model" / "config.json").read_text())
    rope = saved.get("rope_parameters") or saved["rope_scaling"]
    assert rope["rope_type"] == name and rope["factor"] == 3.0
    assert saved["max_position_embeddings"] == 3 * ORIGINAL
    if name == "yarn":
        assert rope["original_max_position_embeddings"] == ORIGINAL
    # the saved model reloads with the same scaled positions: identical logits
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "job" / "model")
    x = torch.tensor([ids])
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(tuned(input_ids=x).logits, trainer.model(input_ids=x).logits)


def test_without_rope_scaling_the_config_is_untouched(short_context_model):
    resolved = settings(spec_for(short_context_model, max_context_length=LENGTH))
    assert resolved.rope_scaling is None and resolved.max_context_length is None


def test_rope_fields_are_validated(short_context_model):
    bad = violations(spec_for(short_context_model, rope_scaling=tpb.ROPE_SCALING_TYPE_LINEAR))
    assert list(bad) == ["spec.max_context_length"] and "required" in bad["spec.max_context_length"]
    for length in (0, -5):
        bad = violations(
            spec_for(
                short_context_model,
                rope_scaling=tpb.ROPE_SCALING_TYPE_DYNAMIC,
                max_context_length=length,
            )
        )
        assert list(bad) == ["spec.max_context_length"], bad
        assert "> 0" in bad["spec.max_context_length"]
    assert "spec.rope_scaling" in violations(spec_for(short_context_model, rope_scaling=9))
    rm = spec_for(
        short_context_model, rope_scaling=tpb.ROPE_SCALING_TYPE_LINEAR, max_context_length=LENGTH
    )
    rm.stage = tpb.STAGE_RM
    with pytest.raises(Unimplemented, match="spec.rope_scaling"):
        validate(rm)


# --- QLoRA data type and double quantisation ------------------------------------------------


def qlora_spec(base, **finetuning) -> tpb.TrainingJobSpec:
    spec = spec_for(base)
    spec.stage = tpb.STAGE_SFT
    spec.finetuning.type = tpb.FINETUNING_TYPE_LORA
    for key, value in finetuning.items():
        setattr(spec.finetuning, key, value)
    return spec


@pytest.mark.parametrize(
    "fields, quant_type, double",
    [
        ({}, "nf4", True),  # unset: NF4 with double quantisation
        ({"quantization_type": tpb.QUANTIZATION_TYPE_FP4}, "fp4", True),
        ({"quantization_type": tpb.QUANTIZATION_TYPE_NF4, "double_quantization": False}, "nf4",
         False),
        ({"quantization_type": tpb.QUANTIZATION_TYPE_FP4, "double_quantization": False}, "fp4",
         False),
    ],
)  # fmt: skip
def test_quantization_type_and_double_quant_reach_the_bitsandbytes_config(
    tiny_random, monkeypatch, fields, quant_type, double
):
    pytest.importorskip("bitsandbytes")
    from services.training.model import load as models

    spec = qlora_spec(tiny_random, quantization_bits=4, **fields)
    validate(spec)
    resolved = settings(spec)
    assert (resolved.quantization_type, resolved.double_quantization) == (quant_type, double)

    built = {}
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        built["config"] = kwargs.get("quantization_config")
        return real(*args, **kwargs)

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", spy)
    model = models.load_base(resolved, torch.device("cpu"))
    config = built["config"]
    assert isinstance(config, BitsAndBytesConfig) and config.load_in_4bit
    assert config.bnb_4bit_quant_type == quant_type
    assert config.bnb_4bit_use_double_quant is double
    # what bitsandbytes actually stored: the data type and the nested absmax state
    import bitsandbytes as bnb

    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    state = layer.weight.quant_state
    assert state.quant_type == quant_type
    assert (state.state2 is not None) is double


def test_quantization_fields_only_with_4_bits(tiny_random):
    fp4 = {"quantization_type": tpb.QUANTIZATION_TYPE_FP4}
    bad = violations(qlora_spec(tiny_random, **fp4))
    assert "4 only" in bad["spec.finetuning.quantization_type"]
    bad = violations(qlora_spec(tiny_random, quantization_bits=8, double_quantization=False))
    assert list(bad) == ["spec.finetuning.double_quantization"]
    bad = violations(qlora_spec(tiny_random, quantization_bits=8, **fp4))
    assert list(bad) == ["spec.finetuning.quantization_type"]
    bad = violations(qlora_spec(tiny_random, quantization_bits=4, quantization_type=7))
    assert "unknown" in bad["spec.finetuning.quantization_type"]


# --- LLaMA-Factory YAML keys -> spec -> settings --------------------------------------------


@pytest.mark.parametrize(
    "yaml_keys, rope, length",
    [
        ({"rope_scaling": "linear", "cutoff_len": 150}, "linear", 150),
        ({"rope_scaling": "DYNAMIC", "cutoff_len": 4096}, "dynamic", 4096),
        ({"rope_scaling": "yarn"}, "yarn", 2048),  # LLaMA-Factory's default cutoff_len
        ({"rope_scaling": "llama3", "cutoff_len": 300}, "llama3", 300),
        ({"cutoff_len": 300}, None, None),
    ],
)
def test_lf_rope_scaling_key_reaches_settings(short_context_model, yaml_keys, rope, length):
    from llamafleet.lf_config import from_flat

    spec, notes = from_flat(
        {"model_name_or_path": str(short_context_model), "stage": "pt", "dataset": "c4_demo",
         "finetuning_type": "full", **yaml_keys}
    )  # fmt: skip
    assert not notes
    validate(spec)
    resolved = settings(spec)
    assert (resolved.rope_scaling, resolved.max_context_length) == (rope, length)


@pytest.mark.parametrize(
    "yaml_keys, quant_type, double",
    [
        ({}, "nf4", True),
        ({"quantization_type": "fp4"}, "fp4", True),
        ({"quantization_type": "nf4", "double_quantization": False}, "nf4", False),
    ],
)
def test_lf_quantization_keys_reach_settings(tiny_random, yaml_keys, quant_type, double):
    pytest.importorskip("bitsandbytes")
    from llamafleet.lf_config import from_flat

    spec, _ = from_flat(
        {"model_name_or_path": str(tiny_random), "stage": "sft", "dataset": "alpaca_en_demo",
         "finetuning_type": "lora", "quantization_bit": 4, **yaml_keys}
    )  # fmt: skip
    validate(spec)
    resolved = settings(spec)
    assert (resolved.quantization_bits, resolved.quantization_type) == (4, quant_type)
    assert resolved.double_quantization is double


def test_lf_keys_refuse_bad_values():
    from llamafleet.lf_config import ConfigFileError, from_flat

    base = {"model_name_or_path": "m", "dataset": "d"}
    with pytest.raises(ConfigFileError, match="rope_scaling: 'ntk'.*linear, dynamic, yarn, llama3"):
        from_flat({**base, "rope_scaling": "ntk"})
    with pytest.raises(ConfigFileError, match="quantization_type: 'int4'.*nf4, fp4"):
        from_flat({**base, "quantization_type": "int4"})
    with pytest.raises(ConfigFileError, match="double_quantization: expected true or false"):
        from_flat({**base, "double_quantization": "yes"})
