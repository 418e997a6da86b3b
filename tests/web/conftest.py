"""One real local cluster for the web tests: a built tiny model, a small alpaca dataset in a
LLaMA-Factory registry, the four services, and the web app served by uvicorn in a thread."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from llamafleet import cluster
from llamafleet.client import Client
from llamafleet.web.app import create_app

from services.training.tiny.model import build_tiny_model

DATASET = "repeat_words"


@dataclass
class WebCluster:
    base_model: str
    dataset_dir: str
    run_dir: str
    client: Client
    url: str
    dataset: str = DATASET  # the registry entry of 32 alpaca records


def write_registry(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "repeat.jsonl", "w") as fh:
        for i in range(32):
            fh.write(json.dumps({"instruction": f"Repeat: w{i:02d}", "output": f"w{i:02d}"}) + "\n")
    registry = {
        DATASET: {"file_name": "repeat.jsonl"},
        "pairs": {"file_name": "pairs.json", "ranking": True},
        "from_hub": {"hf_hub_url": "someone/something"},
    }
    (folder / "dataset_info.json").write_text(json.dumps(registry))
    pair = {"instruction": "Say hi", "chosen": "hi", "rejected": "go away"}
    (folder / "pairs.json").write_text(json.dumps([pair]))


@pytest.fixture(scope="session")
def web_cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    base = build_tiny_model(root / "tiny", size="tiny", seed=0)
    write_registry(root / "data")
    run_dir = root / "run"
    state = cluster.up(run_dir, base_model=str(base), roots=[str(root)], timeout=120)
    client = Client({n: s.address for n, s in state.services.items()}, timeout=60)
    server = None
    thread = None
    try:
        port = cluster.free_port()
        app = create_app(client, state.run_dir, state.base_model)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "the web app did not start"
        yield WebCluster(
            str(base), str(root / "data"), state.run_dir, client, f"http://127.0.0.1:{port}"
        )
    finally:
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(10)
        client.close()
        cluster.down(run_dir)
