"""Fixtures of the training tests: the tiny model, its tokenizer, and a pre-trained base.

``pretrained_base`` builds the tiny model once per session and gives it a short full pre-training
with the ``pt`` recipe on the built-in corpus (packed rows), as a real base model would have had;
LoRA on a random-initialised base learns little. Torch runs one thread: on a shared 2-core CI
machine, OpenMP threads spinning against other processes make training many times slower.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import time
from pathlib import Path

import pytest
import torch
from synthetic import PRETRAIN_STEPS, make_settings, text_rows
from transformers import AutoTokenizer

from services.training.loop.batches import InMemorySource
from services.training.tiny.corpus import synthetic_corpus
from services.training.tiny.model import build_tiny_model

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_random(tmp_path_factory) -> Path:
    """A random-initialised tiny model folder (built once)."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-random", "tiny", seed=0)


@pytest.fixture(scope="session")
def family_models(tmp_path_factory) -> dict[str, Path]:
    """One random-initialised tiny model per family (``tiny.families``), built once: arch ->
    folder. The families share one trained text vocabulary, so this costs one tokenizer training."""
    from services.training.tiny.families import FAMILIES

    root = tmp_path_factory.mktemp("families")
    return {arch: build_tiny_model(root / arch, "tiny", seed=0, arch=arch) for arch in FAMILIES}


@pytest.fixture(scope="session")
def tokenizer(tiny_random):
    return AutoTokenizer.from_pretrained(tiny_random)


@pytest.fixture(scope="session")
def pretrained_base(tiny_random, tokenizer, tmp_path_factory) -> Path:
    """The tiny model after a short full pre-training with the ``pt`` recipe (built once)."""
    from services.training.recipes import pt

    started = time.perf_counter()
    texts = list(synthetic_corpus(PRETRAIN_STEPS * 8 * 3))
    rows = text_rows(tokenizer, texts, cutoff=256)
    job = tmp_path_factory.mktemp("pretrain")
    settings = make_settings(
        tiny_random,
        recipe="pt",
        learning_rate=2e-3,
        lr_scheduler="cosine",
        warmup_steps=10,
        max_steps=PRETRAIN_STEPS,
        batch_rows=8,
        logging_steps=25,
    )
    pt.run(settings, InMemorySource(rows), job)
    print(f"\npre-trained base: {PRETRAIN_STEPS} steps in {time.perf_counter() - started:.0f}s")
    return job / "model"
