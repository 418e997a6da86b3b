"""Proof of learning: SFT on a task the model cannot do at start, on the tiny model, on a CPU.

The task: "Increment the digits of 3819" -> "4920". 1600 training prompts in multi-turn
conversations, packed; 50 held-out numbers never seen in training; greedy decoding; exact match.
Both start from ``pretrained_base`` (the tiny model after a short ``pt`` pre-training).
"""

from __future__ import annotations

import time

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from synthetic import digit_task, exact_match, make_settings, pack, task_rows
from transformers import AutoModelForCausalLM

from services.training.loop.batches import InMemorySource
from services.training.recipes import sft
from services.training.spec.settings import LoraSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def task(tokenizer):
    held_out = digit_task(1, 50)
    train = digit_task(2, 1600, exclude={p.split()[-1] for p, _ in held_out})
    return held_out, pack(task_rows(tokenizer, train), cutoff=256)


def test_full_finetuning_learns_the_task(pretrained_base, tokenizer, task, tmp_path):
    held_out, rows = task
    before = exact_match(AutoModelForCausalLM.from_pretrained(pretrained_base), tokenizer, held_out)
    settings = make_settings(
        pretrained_base,
        lr_scheduler="constant_with_warmup",
        warmup_steps=10,
        learning_rate=1e-3,
        max_steps=150,
        batch_rows=4,
    )
    started = time.perf_counter()
    result = sft.run(settings, InMemorySource(rows), tmp_path)
    seconds = time.perf_counter() - started
    after = exact_match(
        AutoModelForCausalLM.from_pretrained(tmp_path / "model"), tokenizer, held_out
    )
    print(f"\nfull fine-tuning: exact match {before:.2f} -> {after:.2f} in {seconds:.0f}s")
    assert result.state == "SUCCEEDED" and result.step == 150
    assert before <= 0.05
    assert after >= 0.9


def test_lora_learns_the_task_and_leaves_the_base_untouched(
    pretrained_base, tokenizer, task, tmp_path
):
    held_out, rows = task
    base = AutoModelForCausalLM.from_pretrained(pretrained_base)
    before = exact_match(base, tokenizer, held_out)
    settings = make_settings(
        pretrained_base,
        method="lora",
        lora=LoraSettings(rank=16, alpha=32.0),
        lr_scheduler="constant_with_warmup",
        warmup_steps=10,
        learning_rate=2e-3,
        max_steps=250,
        batch_rows=4,
        save_steps=125,
    )
    started = time.perf_counter()
    result = sft.run(settings, InMemorySource(rows), tmp_path)
    seconds = time.perf_counter() - started
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(pretrained_base), tmp_path / "output" / "adapter"
    )
    after = exact_match(tuned, tokenizer, held_out)
    print(f"\nLoRA: exact match {before:.2f} -> {after:.2f} in {seconds:.0f}s")
    assert result.state == "SUCCEEDED"
    assert before <= 0.05
    assert after >= 0.9

    # The base model's weights are bit-identical inside the tuned model; the adapters moved.
    original = load_file(pretrained_base / "model.safetensors")
    tuned_state = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v
        for k, v in tuned.state_dict().items()
        if "lora_" not in k
    }
    for name, tensor in original.items():
        assert torch.equal(tuned_state[name], tensor), name
    adapter = load_file(tmp_path / "adapters" / "v2" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero
    # Two adapter versions were published (steps 125 and 250), each loadable by peft.
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["v1", "v2"]
