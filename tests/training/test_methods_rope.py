"""RoPE scaling: factors and frequencies derived by hand, and training + generation past the
model's original context length."""

from __future__ import annotations

import math

import pytest
import torch
from llamafleet.data.v1 import data_pb2
from synthetic import make_settings
from transformers import AutoConfig, AutoModelForCausalLM

from services.training.loop.batches import InMemorySource
from services.training.loop.tokens import TokenLoss
from services.training.loop.trainer import Trainer
from services.training.model.methods.rope import rope_scaling
from services.training.tiny.corpus import synthetic_corpus

ORIGINAL = 64  # the short-context copy of the tiny model
LENGTH = 150  # requested context: factor ceil(150 / 64) = 3


@pytest.fixture(scope="module")
def short_context_model(tiny_random, tmp_path_factory):
    """The tiny model saved with ``max_position_embeddings = 64``."""
    model = AutoModelForCausalLM.from_pretrained(tiny_random)
    model.config.max_position_embeddings = ORIGINAL
    folder = tmp_path_factory.mktemp("short") / "model"
    model.save_pretrained(folder)
    return folder


def default_inv_freq(config) -> torch.Tensor:
    dim = config.hidden_size // config.num_attention_heads
    return 1.0 / (10_000.0 ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))


def test_no_scaling_when_the_length_fits(short_context_model):
    config = AutoConfig.from_pretrained(short_context_model)
    assert rope_scaling(config, "linear", ORIGINAL) is False
    assert config.rope_parameters["rope_type"] == "default"
    with pytest.raises(ValueError, match="ntk"):
        rope_scaling(config, "ntk", LENGTH)


def test_frequencies_match_hand_derivation(short_context_model):
    """linear: every inverse frequency / 3. dynamic at 150 tokens: base * (3*150/64 - 2)^(d/(d-2)).
    yarn: attention scale 0.1 ln 3 + 1. llama3: wavelengths under 64/4 = 16 unchanged, over 64
    divided by 3."""
    base = AutoConfig.from_pretrained(short_context_model)
    reference = default_inv_freq(base)
    dim = base.hidden_size // base.num_attention_heads
    found = {}
    for rope_type in ("linear", "dynamic", "yarn", "llama3"):
        config = AutoConfig.from_pretrained(short_context_model)
        assert rope_scaling(config, rope_type, LENGTH)
        assert config.rope_parameters["factor"] == 3.0
        expected_max = ORIGINAL if rope_type == "dynamic" else 3 * ORIGINAL
        assert config.max_position_embeddings == expected_max
        model = AutoModelForCausalLM.from_config(config)
        model(input_ids=torch.zeros(1, LENGTH, dtype=torch.long))  # dynamic rescales here
        found[rope_type] = model.model.rotary_emb
    torch.testing.assert_close(found["linear"].inv_freq, reference / 3)
    ntk_base = 10_000.0 * (3 * LENGTH / ORIGINAL - 2) ** (dim / (dim - 2))
    ntk = 1.0 / (ntk_base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    torch.testing.assert_close(found["dynamic"].inv_freq, ntk)
    assert found["yarn"].attention_scaling == pytest.approx(0.1 * math.log(3) + 1)
    wavelength = 2 * math.pi / reference
    llama3 = found["llama3"].inv_freq
    high, low = wavelength < ORIGINAL / 4, wavelength > ORIGINAL
    assert high.any() and low.any()
    torch.testing.assert_close(llama3[high], reference[high])
    torch.testing.assert_close(llama3[low], reference[low] / 3)


@pytest.mark.parametrize("rope_type", ["linear", "yarn"])
def test_trains_and_generates_past_the_original_length(
    short_context_model, tokenizer, tmp_path, rope_type
):
    model = AutoModelForCausalLM.from_pretrained(short_context_model)
    assert rope_scaling(model.config, rope_type, LENGTH)
    scaled = tmp_path / "scaled"
    model.save_pretrained(scaled)
    tokenizer.save_pretrained(scaled)

    text = " ".join(synthetic_corpus(40))
    ids = tokenizer(text)["input_ids"][:LENGTH]
    assert len(ids) == LENGTH > ORIGINAL
    row = data_pb2.TokenRow(
        input_ids=ids, labels=ids, position_ids=range(LENGTH), cu_seqlens=[0, LENGTH],
        example_ids=["long"],
    )  # fmt: skip
    settings = make_settings(
        scaled, recipe="pt", max_steps=5, batch_rows=1, logging_steps=1, learning_rate=3e-3
    )
    trainer = Trainer(
        settings, InMemorySource([row]), tmp_path / "job", loss=TokenLoss(train_all_tokens=True)
    )
    trainer.setup()
    assert trainer.model.config.rope_parameters["rope_type"] == rope_type
    trainer.train()
    losses = [loss for _, loss in trainer.history]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses

    trainer.save_outputs()
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "job" / "model")
    assert tuned.config.rope_parameters["rope_type"] == rope_type
    tuned.config.use_cache = True
    prompt = torch.tensor([ids[: LENGTH - 10]])
    out = tuned.generate(prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20)
    assert out.shape[1] == LENGTH + 10 > ORIGINAL
