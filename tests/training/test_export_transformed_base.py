"""A merged export of a LoRA job trained on a transformed base (LLaMA-Pro blocks inserted, RoPE
scaled) is the trained model: the base is rebuilt as training built it before the adapter is
folded in. Over the plain base the same adapter gives another model (what the export did before).
"""

from __future__ import annotations

import torch
from llamafleet.training.v1 import training_pb2 as tpb
from method_checks import logits, repeated_batch_rows, train_on_repeated_batch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM

from services.training import export
from services.training.recipes import settings, validate


def lora_pro_rope_spec(base) -> tpb.TrainingJobSpec:
    spec = tpb.TrainingJobSpec(job_id="j", base_model=str(base), stage=tpb.STAGE_SFT)
    spec.dataset.dataset_id = "rows"
    spec.finetuning.type = tpb.FINETUNING_TYPE_LORA
    spec.finetuning.lora.rank = 8
    spec.finetuning.llama_pro.num_expand = 2
    spec.rope_scaling = tpb.ROPE_SCALING_TYPE_LINEAR
    spec.max_context_length = 2048  # the tiny model's 1024, doubled
    hp = spec.hyperparameters
    hp.max_steps, hp.learning_rate, hp.per_device_batch_size = 6, 5e-3, 2
    hp.logging_steps = 1
    return spec


def test_merged_export_rebuilds_the_base_the_job_trained_on(tiny_random, tokenizer, tmp_path):
    spec = lora_pro_rope_spec(tiny_random)
    validate(spec)
    rows = repeated_batch_rows(tokenizer)
    trainer, losses, _ = train_on_repeated_batch(settings(spec), rows, tmp_path / "job")
    assert losses[-1] < losses[0]
    adapter = tmp_path / "job" / "adapters" / "v1"
    staging = tmp_path / "merged"
    export.merge_lora(spec.SerializeToString(), str(adapter), str(staging))

    merged = AutoModelForCausalLM.from_pretrained(staging)
    config = AutoConfig.from_pretrained(staging)
    assert config.num_hidden_layers == 6  # 4 + 2 LLaMA-Pro blocks
    assert config.rope_scaling and config.rope_scaling.get("factor") == 2.0, config.rope_scaling
    assert (staging / "tokenizer.json").exists()
    ids = torch.tensor([rows[0].input_ids[:64]])
    trained = logits(trainer.model, ids)
    torch.testing.assert_close(logits(merged, ids), trained, rtol=0, atol=1e-4)

    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_random), adapter)
    assert not torch.allclose(logits(plain.merge_and_unload(), ids), trained, atol=1e-2)
