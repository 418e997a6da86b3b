"""Shared fixtures for the rollout tests: one tiny model and a few LoRA adapters per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TARGETS = ["q_proj", "v_proj", "down_proj"]  # few modules: PEFT costs per module on CPU


def make_adapter(base_model: Path, out: Path, seed: int, rank: int = 8) -> Path:
    """A PEFT LoRA folder with random A and B (so it changes the outputs), saved as training does."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_model))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = LoraConfig(
            r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False
        )
        model = get_peft_model(base, config)
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from services.training.tiny.model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def adapter_dirs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """``a1``/``a2``: versions 1 and 2 of adapter "policy"; ``b1``: another adapter."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: make_adapter(tiny_model, root / name, seed)
        for name, seed in (("a1", 1), ("a2", 2), ("b1", 3))
    }
