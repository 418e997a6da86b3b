"""Reward models built here, once per session, from a tiny base model.

- ``base``: ``build_tiny_model`` (a random Llama + the project tokenizer);
- ``rm_a`` / ``rm_b``: PEFT reward adapters (SEQ_CLS, LoRA on q/v, ``score`` saved through
  ``modules_to_save``) with LoRA B and the score head perturbed so that each scores differently;
- ``rm_full``: a full ``LlamaForSequenceClassification`` folder (base weights, perturbed head);
- ``causal_adapter``: a CAUSAL_LM LoRA adapter, which is not a reward model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from services.training.tiny.model import build_tiny_model


@dataclass(frozen=True)
class RewardModelFolders:
    base: Path
    rm_a: Path
    rm_b: Path
    rm_full: Path
    causal_adapter: Path
    adapter_dir: Path  # <adapter_dir>/<id>/<version>/: rm-a@1 -> rm_a, rm-b@1 -> rm_b


def _perturb(model: torch.nn.Module, seed: int, names: tuple[str, ...]) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and any(n in name for n in names):
                param.add_(torch.randn(param.shape, generator=gen) * 0.5)


def _seq_cls(base: Path, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the fresh score head is random: make it reproducible
        return AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1)


def _reward_adapter(base: Path, out: Path, seed: int) -> Path:
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]
    )
    model = get_peft_model(_seq_cls(base, seed), config)
    _perturb(model, seed, ("lora_B", "score"))
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def rm_folders(tmp_path_factory) -> RewardModelFolders:
    logging.getLogger("transformers").setLevel(logging.ERROR)
    root = tmp_path_factory.mktemp("reward-models")
    base = build_tiny_model(root / "base", seed=3)
    adapter_dir = root / "adapters"
    rm_a = _reward_adapter(base, adapter_dir / "rm-a" / "1", seed=11)
    rm_b = _reward_adapter(base, adapter_dir / "rm-b" / "1", seed=12)

    full = _seq_cls(base, 13)
    _perturb(full, 13, ("score",))
    full.config.pad_token_id = 2
    full.save_pretrained(str(root / "rm-full"))

    causal = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(base)),
        LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, target_modules=["q_proj"]),
    )
    causal.save_pretrained(str(adapter_dir / "policy" / "1"))
    return RewardModelFolders(
        base, rm_a, rm_b, root / "rm-full", adapter_dir / "policy" / "1", adapter_dir
    )
