"""QLoRA on the CPU: a 4/8-bit frozen base (bitsandbytes) under float32 LoRA adapters."""

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
from services.training.model.methods import quantize
from services.training.spec.settings import LoraSettings
from services.training.spec.validation import validate

pytest.importorskip("bitsandbytes")


def test_4bit_base_weights_are_at_most_035x_the_16bit_base(tiny_random):
    """Same built model, same linear layers: NF4 + double quantisation against bfloat16."""
    half = AutoModelForCausalLM.from_pretrained(tiny_random, dtype=torch.bfloat16)
    q4 = AutoModelForCausalLM.from_pretrained(
        tiny_random,
        dtype=torch.bfloat16,  # what is not quantised (embeddings, norms, head) stays 16-bit
        quantization_config=quantize.quantization_config(4, torch.float32),
        device_map={"": "cpu"},
    )
    layers = quantize.quantized_modules(q4)
    assert len(layers) == 7 * q4.config.num_hidden_layers
    packed = sum(quantize.module_weight_bytes(m) for m in layers.values())
    full = sum(quantize.module_weight_bytes(half.get_submodule(n)) for n in layers)
    ratio = packed / full
    print(f"\n4-bit linear weights {packed} B vs bfloat16 {full} B: {ratio:.3f}x")
    assert ratio <= 0.35
    # whole model: the tiny model is mostly embeddings and head (16-bit in both)
    whole = q4.get_memory_footprint() / half.get_memory_footprint()
    print(
        f"whole model {q4.get_memory_footprint()} B vs {half.get_memory_footprint()} B: {whole:.3f}x"
    )
    assert whole < 1


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_only_adapters_and_reloads(tiny_random, tokenizer, tmp_path, bits):
    rows = repeated_batch_rows(tokenizer)

    def settings(**kw):
        return make_settings(
            tiny_random, method="lora", lora=LoraSettings(rank=8, alpha=16),
            quantization_bits=bits, batch_rows=2, max_steps=6, **kw,
        )  # fmt: skip

    trainer, losses, before = train_on_repeated_batch(
        settings(logging_steps=1, learning_rate=5e-3), rows, tmp_path
    )
    assert quantize.quantized_modules(trainer.model)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert moved(trainer.model, before) == {n for n in trainable if "lora_B" in n} | {
        n for n in trainable if "lora_A" in n
    }
    # quantised base bytes untouched
    for name, param in trainer.model.named_parameters():
        if name not in trainable:
            assert torch.equal(param.detach(), before[name]), name

    resumed = Trainer(
        settings(resume=True),
        InMemorySource(rows),
        tmp_path,
        loss=TokenLoss(train_all_tokens=False),
    )
    resumed.setup()
    ids = torch.tensor([rows[0].input_ids[:48]])
    torch.testing.assert_close(
        logits(resumed.model, ids), logits(trainer.model, ids), rtol=0, atol=0
    )
    assert (tmp_path / "adapters" / "v1" / "adapter_model.safetensors").is_file()


def _spec(base, finetuning_type, bits):
    spec = tpb.TrainingJobSpec(job_id="j", base_model=str(base), stage=tpb.STAGE_SFT)
    spec.dataset.dataset_id = "rows"
    spec.finetuning.type = finetuning_type
    spec.finetuning.quantization_bits = bits
    return spec


def test_validate(tiny_random):
    validate(_spec(tiny_random, tpb.FINETUNING_TYPE_LORA, 4))
    validate(_spec(tiny_random, tpb.FINETUNING_TYPE_LORA, 8))
    with pytest.raises(InvalidArgument, match="invalid"):
        validate(_spec(tiny_random, tpb.FINETUNING_TYPE_LORA, 3))
    with pytest.raises(Unimplemented, match="QLoRA.*FINETUNING_TYPE_FULL"):
        validate(_spec(tiny_random, tpb.FINETUNING_TYPE_FULL, 4))
    spec = _spec(tiny_random, tpb.FINETUNING_TYPE_FREEZE, 4)
    with pytest.raises(Unimplemented, match="QLoRA.*FINETUNING_TYPE_FREEZE"):
        validate(spec)
    for finetuning_type in (tpb.FINETUNING_TYPE_FREEZE, tpb.FINETUNING_TYPE_LORA):
        spec = _spec(tiny_random, finetuning_type, 4)
        spec.finetuning.llama_pro.num_expand = 2
        with pytest.raises(Unimplemented, match="LLaMA-Pro.*QLoRA"):
            validate(spec)


def test_a_base_saved_pre_quantized_with_another_method_is_refused(tiny_random, tmp_path):
    """LLaMA-Factory's AWQ/GPTQ/AQLM examples train such folders; here only bitsandbytes."""
    import json
    import shutil

    from llamafleet.training.v1 import training_pb2 as tpb

    from services.common.errors import Unimplemented
    from services.training.spec.validation import validate

    folder = tmp_path / "awq"
    shutil.copytree(tiny_random, folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (folder / "config.json").write_text(json.dumps(config))
    spec = tpb.TrainingJobSpec(job_id="j", base_model=str(folder), stage=tpb.STAGE_SFT)
    spec.dataset.dataset_id = "rows"
    with pytest.raises(Unimplemented, match="pre-quantized with awq"):
        validate(spec)
