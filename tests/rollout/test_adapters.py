"""Resident adapters over the real hf engine and a real FetchAdapter server: fetch on first use,
LRU eviction beyond the limit (never of an adapter in use), and a new version loading while a
request on the old one keeps generating."""

from __future__ import annotations

import threading
import time

import pytest
from fake_training import TrainingServer
from llamafleet.common.v1 import common_pb2

from services.common import errors
from services.common.adapter_cache import AdapterCache
from services.rollout.adapters import ResidentAdapters
from services.rollout.engines import GenerationRequest, Sampling, collect
from services.rollout.engines.hf import HFEngine


def ref(adapter_id: str, version: int) -> common_pb2.AdapterRef:
    return common_pb2.AdapterRef(id=adapter_id, version=version)


@pytest.fixture
def training(adapter_dirs):
    with TrainingServer() as server:
        server.servicer.add("policy", 1, adapter_dirs["a1"])
        server.servicer.add("policy", 2, adapter_dirs["a2"])
        server.servicer.add("other", 1, adapter_dirs["b1"])
        yield server


@pytest.fixture
def engine(tiny_model) -> HFEngine:
    return HFEngine(tiny_model, device="cpu")


def resident_keys(adapters: ResidentAdapters) -> list[str]:
    return [f"{r.ref.id}@{r.ref.version}" for r in adapters.resident()]


def test_fetches_once_and_evicts_lru_beyond_limit(engine, training, tmp_path):
    cache = AdapterCache(tmp_path / "cache", training.address)
    adapters = ResidentAdapters(engine, cache, max_resident=2)
    assert adapters.acquire(ref("", 0)) is None  # the base model needs nothing
    for r in (ref("policy", 1), ref("other", 1), ref("policy", 1), ref("policy", 2)):
        adapters.acquire(r)
        adapters.release(r)
    # policy@1 was used after other@1, so other@1 is the least recently used and goes
    assert resident_keys(adapters) == ["policy@2", "policy@1"]
    assert len(engine.adapters()) == 2
    assert sorted(f[:2] for f in training.servicer.fetches) == [
        ("other", 1), ("policy", 1), ("policy", 2)
    ]  # fmt: skip
    entry = adapters.resident()[0]
    assert len(entry.sha256) == 64 and entry.size_bytes > 0 and entry.load_time > 0
    # evicted versions come back from the disk cache, not the network
    adapters.load(ref("other", 1))
    assert len(training.servicer.fetches) == 3
    assert resident_keys(adapters) == ["other@1", "policy@2"]


def test_adapter_in_use_is_not_evicted_until_released(engine, training, tmp_path):
    adapters = ResidentAdapters(engine, AdapterCache(tmp_path / "c", training.address), 1)
    pinned = adapters.acquire(ref("policy", 1))
    adapters.load(ref("policy", 2))
    assert set(resident_keys(adapters)) == {"policy@1", "policy@2"}  # over the limit while used
    adapters.release(ref("policy", 1))
    assert resident_keys(adapters) == ["policy@2"]
    assert pinned not in engine.adapters()


def test_unknown_version_is_not_found(engine, training, tmp_path):
    adapters = ResidentAdapters(engine, AdapterCache(tmp_path / "c", training.address), 2)
    with pytest.raises(errors.NotFound, match="policy@9"):
        adapters.acquire(ref("policy", 9))
    assert adapters.resident() == []


def test_loading_v2_does_not_pause_a_request_on_v1(engine, training, tmp_path):
    adapters = ResidentAdapters(engine, AdapterCache(tmp_path / "c", training.address), 4)
    v1 = adapters.acquire(ref("policy", 1))
    p = tuple(engine.tokenize("Once upon a time"))
    request = GenerationRequest(p, Sampling(temperature=0, max_tokens=40), v1)
    (before,) = collect(engine.generate(request), 1)

    training.servicer.chunk_size = 4 * 1024
    training.servicer.gate.clear()  # fetching v2 stalls mid-stream until released
    loader = threading.Thread(target=adapters.load, args=(ref("policy", 2),))
    loader.start()
    assert training.servicer.stalled.wait(30)
    # v2 is half-fetched: a whole v1 request runs meanwhile, with v1's exact output
    started = time.monotonic()
    (during,) = collect(engine.generate(request), 1)
    assert time.monotonic() - started < 30
    assert loader.is_alive(), "the v2 load should still be in flight"
    assert during.token_ids == before.token_ids and during.logprobs == before.logprobs

    # a v1 request that is mid-stream while v2 finishes loading also continues unchanged
    stream = engine.generate(request)
    head = [next(stream) for _ in range(5)]
    training.servicer.gate.set()
    loader.join(30)
    assert not loader.is_alive()
    (after,) = collect([*head, *stream], 1)
    assert after.token_ids == before.token_ids
    adapters.release(ref("policy", 1))
    assert set(resident_keys(adapters)) == {"policy@1", "policy@2"}
    v2 = adapters.acquire(ref("policy", 2))
    (on_v2,) = collect(engine.generate(GenerationRequest(p, request.sampling, v2)), 1)
    assert on_v2.token_ids != before.token_ids


def test_an_adapter_trained_on_another_base_shape_is_refused(
    engine, adapter_dirs, tiny_model, tmp_path
):
    """An adapter whose llamafleet_base.json says it trained on LLaMA-Pro blocks (6 layers) is
    refused over the 4-layer base: FAILED_PRECONDITION, nothing made resident."""
    import json
    import shutil

    from services.common.weight_files import ADAPTER_BASE_FILE

    pro = tmp_path / "pro"
    shutil.copytree(adapter_dirs["a1"], pro)
    shape = {"num_hidden_layers": 6, "rope_type": "default", "rope_factor": 1.0}
    (pro / ADAPTER_BASE_FILE).write_text(json.dumps(shape))
    with TrainingServer() as server:
        server.servicer.add("pro", 1, pro)
        cache = AdapterCache(tmp_path / "c", server.address)
        adapters = ResidentAdapters(engine, cache, 2, base_model=tiny_model)
        with pytest.raises(errors.FailedPrecondition, match="num_hidden_layers 6 .this base: 4."):
            adapters.acquire(ref("pro", 1))
        assert adapters.resident() == []


def test_an_adapter_trained_on_another_base_model_is_refused(
    engine, adapter_dirs, tiny_model, tmp_path
):
    """Training reports each adapter's base (AdapterBlobInfo.base_model): one trained on another
    base (another folder name) is FAILED_PRECONDITION ADAPTER_BASE_MISMATCH naming both bases and
    is not made resident; one trained on this base (its path, or another path to a folder of the
    same name) is served."""
    with TrainingServer() as server:
        server.servicer.add("foreign", 1, adapter_dirs["a1"], base_model="/models/Other-Base")
        server.servicer.add("own", 1, adapter_dirs["a1"], base_model=str(tiny_model))
        server.servicer.add(
            "same-name", 1, adapter_dirs["a2"], base_model=f"/elsewhere/{tiny_model.name}"
        )
        adapters = ResidentAdapters(engine, AdapterCache(tmp_path / "c", server.address), 4,
                                    base_model=tiny_model)  # fmt: skip
        with pytest.raises(errors.FailedPrecondition) as refused:
            adapters.acquire(ref("foreign", 1))
        assert refused.value.reason == "ADAPTER_BASE_MISMATCH"
        assert "/models/Other-Base" in str(refused.value) and str(tiny_model) in str(refused.value)
        assert adapters.resident() == []
        assert adapters.acquire(ref("own", 1)) is not None
        assert adapters.acquire(ref("same-name", 1)) is not None
        assert set(resident_keys(adapters)) == {"own@1", "same-name@1"}
