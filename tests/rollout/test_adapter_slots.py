"""Loading an adapter version into an evicted version's slot (``HFEngine.replace_adapter``, driven by
``ResidentAdapters``): the reused slot generates what a fresh load of that version generates and
what transformers + PEFT generate with it; a slot in use is never overwritten; an adapter of
another config takes the full load."""

from __future__ import annotations

import pytest
import torch
from conftest import make_adapter
from fake_training import TrainingServer
from llamafleet.common.v1 import common_pb2

from services.common.adapter_cache import AdapterCache
from services.rollout.adapters import ResidentAdapters
from services.rollout.engines import GenerationRequest, Sampling, collect
from services.rollout.engines.hf import HFEngine

GREEDY = Sampling(temperature=0, max_tokens=24)


def ref(adapter_id: str, version: int) -> common_pb2.AdapterRef:
    return common_pb2.AdapterRef(id=adapter_id, version=version)


def greedy(engine: HFEngine, adapter: str | None, text: str = "Once upon a time"):
    p = tuple(engine.tokenize(text))
    (out,) = collect(engine.generate(GenerationRequest(p, GREEDY, adapter)), 1)
    return out


def assert_same(a, b) -> None:
    assert a.token_ids == b.token_ids
    assert a.logprobs == pytest.approx(b.logprobs, abs=1e-6)


@pytest.fixture(scope="module")
def rank4(tiny_model, tmp_path_factory):
    return make_adapter(tiny_model, tmp_path_factory.mktemp("r4") / "r4", seed=4, rank=4)


@pytest.fixture(scope="module")
def fresh(tiny_model, adapter_dirs) -> dict[str, object]:
    """Each adapter's greedy output from an engine that loaded it fresh, alone."""
    out = {}
    for key in ("a1", "a2", "b1"):
        engine = HFEngine(tiny_model, device="cpu")
        engine.load_adapter("x", adapter_dirs[key])
        out[key] = greedy(engine, "x")
    return out


def test_replaced_slot_equals_fresh_load_and_transformers_peft(tiny_model, adapter_dirs, fresh):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    engine = HFEngine(tiny_model, device="cpu")
    engine.load_adapter("v1", adapter_dirs["a1"])
    engine.load_adapter("other", adapter_dirs["b1"])
    params_before = {n: p.data_ptr() for n, p in engine._peft.named_parameters()}
    assert_same(greedy(engine, "v1"), fresh["a1"])

    assert engine.replace_adapter("v1", "v2", adapter_dirs["a2"])
    assert engine.adapters() == {"v2", "other"}
    with pytest.raises(KeyError, match="v1"):
        greedy(engine, "v1")
    # nothing injected or deleted: the same parameters, now holding v2's values
    assert {n: p.data_ptr() for n, p in engine._peft.named_parameters()} == params_before
    on_v2 = greedy(engine, "v2")
    assert_same(on_v2, fresh["a2"])
    assert on_v2.token_ids != fresh["a1"].token_ids  # the copy changed what it generates
    assert_same(greedy(engine, "other"), fresh["b1"])  # the other slot is untouched

    # the reference: transformers' generate over PEFT with the v2 folder
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    model = PeftModel.from_pretrained(base, str(adapter_dirs["a2"])).eval()
    p = engine.tokenize("Once upon a time")
    with torch.inference_mode():
        expected = model.generate(
            torch.tensor([p]), do_sample=False, max_new_tokens=24, min_new_tokens=0
        )[0, len(p) :].tolist()
    eos = engine.eos_ids
    expected = expected[: next((i + 1 for i, t in enumerate(expected) if t in eos), None)]
    assert on_v2.token_ids == expected

    # the slot can be reused again, and unloading the version frees it like any adapter
    assert engine.replace_adapter("v2", "v3", adapter_dirs["a1"])
    assert_same(greedy(engine, "v3"), fresh["a1"])
    engine.unload_adapter("v3")
    assert engine.adapters() == {"other"}


def test_another_config_or_unknown_slot_is_not_replaced(tiny_model, adapter_dirs, rank4, fresh):
    engine = HFEngine(tiny_model, device="cpu")
    engine.load_adapter("v1", adapter_dirs["a1"])
    assert not engine.replace_adapter("v1", "small", rank4)  # rank 4 into a rank-8 slot
    assert not engine.replace_adapter("missing", "v2", adapter_dirs["a2"])
    assert engine.adapters() == {"v1"}
    assert_same(greedy(engine, "v1"), fresh["a1"])  # untouched


@pytest.fixture
def training(adapter_dirs, rank4):
    with TrainingServer() as server:
        server.servicer.add("policy", 1, adapter_dirs["a1"])
        server.servicer.add("policy", 2, adapter_dirs["a2"])
        server.servicer.add("policy", 3, adapter_dirs["b1"])
        server.servicer.add("policy", 4, rank4)
        yield server


def test_resident_adapters_reuse_only_an_idle_evicted_slot(
    tiny_model, adapter_dirs, training, fresh, tmp_path
):
    engine = HFEngine(tiny_model, device="cpu")
    adapters = ResidentAdapters(engine, AdapterCache(tmp_path / "c", training.address), 1)
    v1 = adapters.acquire(ref("policy", 1))
    p = tuple(engine.tokenize("Once upon a time"))
    stream = engine.generate(GenerationRequest(p, GREEDY, v1))
    head = [next(stream) for _ in range(5)]  # a request on v1 is mid-stream

    # v2 loads while v1 is in use: v1's slot is not touched, v2 gets a slot of its own
    v2 = adapters.acquire(ref("policy", 2))
    (on_v1,) = collect([*head, *stream], 1)
    assert_same(on_v1, fresh["a1"])
    assert engine._slots[v2] == v2 and engine._slots[v1] == v1
    adapters.release(ref("policy", 1))  # now v1 is evicted as usual
    adapters.release(ref("policy", 2))
    assert engine.adapters() == {v2}

    # v3 would evict idle v2: it is loaded into v2's slot, and generates as a fresh load does
    v3 = adapters.acquire(ref("policy", 3))
    assert engine._slots == {v3: v2}
    assert_same(greedy(engine, v3), fresh["b1"])
    assert [r.ref.version for r in adapters.resident()] == [3]
    adapters.release(ref("policy", 3))

    # v4 has another config (rank 4): the full load, and v3 is evicted as before
    v4 = adapters.acquire(ref("policy", 4))
    assert engine._slots == {v4: v4}
    assert [r.ref.version for r in adapters.resident()] == [4]
    adapters.release(ref("policy", 4))


def test_no_reuse_below_the_limit(tiny_model, adapter_dirs, training, tmp_path):
    """Reuse never changes which versions are resident: below the limit nothing is evicted."""
    engine = HFEngine(tiny_model, device="cpu")
    adapters = ResidentAdapters(engine, AdapterCache(tmp_path / "c", training.address), 2)
    for version in (1, 2):
        adapters.load(ref("policy", version))
    assert [r.ref.version for r in adapters.resident()] == [2, 1]
    assert len(set(engine._slots.values())) == 2
    adapters.load(ref("policy", 3))  # evicts v1: into v1's slot
    assert [r.ref.version for r in adapters.resident()] == [3, 2]
    assert len(set(engine._slots.values())) == 2
