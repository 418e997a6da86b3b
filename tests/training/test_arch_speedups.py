"""llamafleet's own speed-ups on every family: each equals plain transformers there, or is off.

- The trained model the loop builds (``load_trained``: lean RMSNorm / SwiGLU, peft LoRA with the
  fused layer, varlen SDPA on packed rows, the LM head split off into a chunked loss) gives the
  loss and the gradients that plain transformers (+ plain peft) gives on each example alone,
  full logits, eager attention: loss within 1e-5, every gradient within 1e-5 (absolute, on the
  token-mean loss), LoRA and full fine-tuning.
- Which speed-up applies where is pinned per family (``DECISIONS``) and logged when off: Gemma 3's
  ``1 + weight`` norms and GELU MLP, Phi-3's fused ``gate_up_proj`` MLP and Qwen3-MoE's experts
  run as transformers runs them.
- LLaMA-Pro's inserted blocks are the identity on every family (Qwen3-MoE: zeroed experts).
- RoPE scaling sets what transformers then computes: the inverse frequencies divided by the
  factor (Gemma 3: its global layers only; its local layers keep theirs).
"""

from __future__ import annotations

import logging

import pytest
import torch
from llamafleet.data.v1 import data_pb2
from peft import LoraConfig, get_peft_model
from synthetic import make_settings
from transformers import AutoConfig, AutoModelForCausalLM

from services.training.loop.batches import InMemorySource
from services.training.loop.tokens import TokenLoss
from services.training.loop.trainer import Trainer
from services.training.model.methods import llama_pro
from services.training.model.methods.rope import rope_scaling
from services.training.spec.settings import LoraSettings
from services.training.tiny.families import FAMILIES

ARCHS = list(FAMILIES)
# (lean RMSNorms, lean SwiGLU MLPs, LM head split) of each tiny family model (4 layers)
DECISIONS = {
    "llama3": (9, 4, True),
    "qwen2": (9, 4, True),  # tied head: split off all the same (the module is called as it is)
    "qwen3": (17, 4, True),  # + q_norm and k_norm per layer
    "qwen3_moe": (17, 0, True),  # experts: no SwiGLU module
    "gemma3": (0, 0, True),  # 1 + weight norms, GELU MLP
    "mistral": (9, 4, True),
    "phi3": (9, 0, True),  # fused gate_up_proj MLP
}
LEFT_OFF = {
    "gemma3": "Gemma3MLP x4, Gemma3RMSNorm x25",
    "phi3": "Phi3MLP x4",
    "qwen3_moe": "Qwen3MoeExperts x4",
}


def packed_rows(vocab: int):
    g = torch.Generator().manual_seed(1)
    lengths = (40, 23, 55)
    examples = [torch.randint(10, vocab - 10, (n,), generator=g).tolist() for n in lengths]
    labels = [[-100] * (len(e) // 3) + e[len(e) // 3 :] for e in examples]
    row = data_pb2.TokenRow(
        input_ids=[t for e in examples for t in e], labels=[t for x in labels for t in x],
        position_ids=[p for e in examples for p in range(len(e))],
        cu_seqlens=[0, 40, 63, 118], example_ids=["a", "b", "c"],
    )  # fmt: skip
    return row, examples, labels


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("arch", ARCHS)
def test_trained_model_equals_plain_transformers(family_models, tmp_path, caplog, arch, method):
    folder = family_models[arch]
    row, examples, labels = packed_rows(AutoConfig.from_pretrained(folder).vocab_size)
    lora = LoraSettings(rank=4, alpha=8)
    settings = make_settings(folder, method=method, lora=lora, batch_rows=1, max_steps=1)
    trainer = Trainer(settings, InMemorySource([row]), tmp_path, loss=TokenLoss(False))
    with caplog.at_level(logging.INFO):
        trainer.setup()
    model = trainer.model
    if method == "lora":  # B = 0 at init: give the adapters a value, so they count
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    x = trainer._collate(data_pb2.Batch(rows=[row]))
    total, count = trainer._forward_loss(x)
    (total / count).backward()
    ours = grads(model)

    plain = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    if method == "lora":
        config = LoraConfig(r=4, lora_alpha=8, target_modules=sorted(
            model.peft_config["default"].target_modules))  # fmt: skip
        plain = get_peft_model(plain, config)
    plain.load_state_dict(model.state_dict())
    reference, n_total = 0.0, 0
    for ids, lab in zip(examples, labels, strict=True):
        n = sum(1 for t in lab[1:] if t != -100)
        out = plain(input_ids=torch.tensor([ids]), labels=torch.tensor([lab]))
        reference = reference + out.loss * n
        n_total += n
    (reference / n_total).backward()
    theirs = grads(plain)

    assert count == n_total
    assert float(total) / count == pytest.approx(float(reference) / n_total, abs=1e-5)
    assert ours.keys() == theirs.keys() and ours
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-5, msg=name)

    norms, mlps, split = DECISIONS[arch]
    log = caplog.text
    assert f"lean backward on {norms} RMSNorm and {mlps} SwiGLU modules" in log
    if arch in LEFT_OFF:
        assert "lean backward off for" in log and LEFT_OFF[arch] in log
    assert (trainer.loss.head is not None) == split
    if method == "lora":
        layers = sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A"))
        assert f"fused LoRA backward on {layers} layers" in log


@pytest.mark.parametrize("arch", ARCHS)
def test_llama_pro_blocks_are_the_identity(family_models, arch):
    model = AutoModelForCausalLM.from_pretrained(family_models[arch]).eval()
    ids = torch.randint(10, 3000, (1, 45), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        new = llama_pro.expand(model, 2)
        after = model(input_ids=ids).logits
    assert new == [2, 5] and model.config.num_hidden_layers == 6
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    zeroed = llama_pro.output_projections(model.model.layers[2])
    assert zeroed and all(float(t.abs().max()) == 0 for t in zeroed)
    if arch == "qwen3_moe":
        assert any(t.dim() == 3 for t in zeroed)  # every expert's down_proj
    if arch == "gemma3":  # a copy keeps its source's attention type
        types = model.config.layer_types
        assert types[2] == types[1] and types[5] == types[4]


@pytest.mark.parametrize("arch", ARCHS)
def test_rope_scaling_divides_the_frequencies(family_models, arch):
    config = AutoConfig.from_pretrained(family_models[arch])
    original = AutoModelForCausalLM.from_config(config).model.rotary_emb
    assert rope_scaling(config, "linear", 2 * config.max_position_embeddings)
    scaled = AutoModelForCausalLM.from_config(config).model.rotary_emb
    if arch == "gemma3":
        torch.testing.assert_close(
            scaled.full_attention_inv_freq, original.full_attention_inv_freq / 2
        )
        torch.testing.assert_close(
            scaled.sliding_attention_inv_freq, original.sliding_attention_inv_freq
        )
        assert config.rope_parameters["sliding_attention"]["rope_type"] == "default"
    else:
        torch.testing.assert_close(scaled.inv_freq, original.inv_freq / 2)
    assert config.max_position_embeddings == 2 * 1024
