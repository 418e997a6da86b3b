"""Fixtures of the data tests: one tiny model folder (model + tokenizer) per session, data files.

The folder is built locally by ``services.training.tiny.model`` (tests may import both services;
the services themselves never do) and loaded through ``from_pretrained`` like a downloaded one.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import asyncio
import json
import threading
from pathlib import Path

import pytest

from services.common.server import ServiceHost
from services.data.config import DataConfig
from services.data.server import make_register
from services.training.tiny.model import build_tiny_model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", size="tiny"))


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def sharegpt_record(i: int, turns: int = 1, words: int = 6) -> dict:
    """A deterministic multi-turn sharegpt record whose length grows with ``words``."""
    conv = []
    for t in range(turns):
        conv.append({"from": "human", "value": f"question {i} turn {t}: " + "why " * (words // 2)})
        conv.append({"from": "gpt", "value": f"answer {i}.{t} " + "because " * words})
    return {"conversations": conv}


class Server:
    """A data service on its own event loop thread."""

    def __init__(self, config: DataConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.host = ServiceHost("data", config, make_register(config))
        asyncio.run_coroutine_threadsafe(self.host.start(), self.loop).result(30)
        self.address = self.host.address

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.host.stop(0), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def server(tmp_path, model_dir):
    config = DataConfig(
        datasets_dir=str(tmp_path / "datasets"),
        registry_dir=str(tmp_path),
        dataset_roots=str(tmp_path),  # the test's files; nothing else may be read
        model_roots=str(Path(model_dir).parent),
        shutdown_delay_s=0.0,
        shard_rows=7,  # several shards even for small test sets
        shuffle_buffer=16,
        pack_window=32,
        encode_batch=8,
    )
    s = Server(config)
    yield s
    s.stop()
