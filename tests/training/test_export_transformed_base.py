"""A LoRA job trained on a transformed base (LLaMA-Pro blocks inserted, RoPE scaled).

- Its merged export is the trained model: the base is rebuilt as training built it before the
  adapter is folded in. Over the plain base the same adapter gives another model (what the
  export did before).
- Its adapter records the base it trained on (``llamafleet_base.json``), and the rollout and
  reward services refuse it over a base shaped otherwise; a plain LoRA's adapter passes.
"""

from __future__ import annotations

import pytest
import torch
from llamafleet.training.v1 import training_pb2 as tpb
from method_checks import logits, repeated_batch_rows, train_on_repeated_batch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM

from services.common.errors import FailedPrecondition
from services.common.weight_files import ADAPTER_BASE_FILE, require_adapter_base
from services.training.model import lora, merge
from services.training.spec.settings import LoraSettings, settings
from services.training.spec.validation import validate


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
    merge.merge_lora(spec.SerializeToString(), str(adapter), str(staging))

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


def test_an_adapter_is_refused_over_a_base_it_was_not_trained_on(tiny_random, tokenizer, tmp_path):
    spec = lora_pro_rope_spec(tiny_random)
    spec.hyperparameters.max_steps = 1
    rows = repeated_batch_rows(tokenizer)
    train_on_repeated_batch(settings(spec), rows, tmp_path / "job")
    adapter = tmp_path / "job" / "adapters" / "v1"
    assert (adapter / ADAPTER_BASE_FILE).is_file()
    with pytest.raises(FailedPrecondition) as refused:
        require_adapter_base(adapter, tiny_random, "adapter j@1")
    assert refused.value.reason == "ADAPTER_BASE_MISMATCH"
    message = str(refused.value)
    assert "num_hidden_layers 6 (this base: 4)" in message and "rope_factor 2.0" in message

    plain = lora.apply_lora(
        AutoModelForCausalLM.from_pretrained(tiny_random), LoraSettings(rank=4), seed=0
    )
    lora.save_adapter(plain, tmp_path / "plain")
    require_adapter_base(tmp_path / "plain", tiny_random, "adapter p@1")  # same shape: passes
