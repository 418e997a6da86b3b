"""The hf engine against independent references: transformers' own ``generate`` and a
teacher-forced forward pass (log_softmax of the logits, gathered at the generated tokens).

Log-probs tolerance: 1e-4 (the incremental KV-cache forward and the full forward differ by float32
rounding, ~1e-6 here).
"""

from __future__ import annotations

import threading

import pytest
import torch

from services.rollout.engines import (
    Finished,
    FinishReason,
    GenerationEngine,
    GenerationRequest,
    Sampling,
    TokenDelta,
    collect,
)
from services.rollout.engines.hf import HFEngine, sample_next


@pytest.fixture(scope="module")
def engine(tiny_model, adapter_dirs) -> HFEngine:
    e = HFEngine(tiny_model, device="cpu")
    e.load_adapter("a", adapter_dirs["a1"])
    e.load_adapter("b", adapter_dirs["b1"])
    return e


def prompt(engine: HFEngine, text: str = "The quick brown fox") -> tuple[int, ...]:
    return tuple(engine.tokenize(text))


def run(engine, p, adapter=None, **sampling) -> list:
    s = Sampling(**{"max_tokens": 16, **sampling})
    return collect(engine.generate(GenerationRequest(p, s, adapter)), s.n)


def teacher_forced_logprobs(model, p, completion) -> list[float]:
    ids = torch.tensor([list(p) + list(completion)])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()  # (T, V)
    logprobs = torch.log_softmax(logits[len(p) - 1 : -1], dim=-1)  # rows predicting completion
    return logprobs.gather(1, torch.tensor(completion)[:, None]).squeeze(1).tolist()


def test_engine_satisfies_protocol(engine):
    assert isinstance(engine, GenerationEngine)


def test_greedy_equals_transformers_generate(engine):
    p = prompt(engine)
    (ours,) = run(engine, p, temperature=0, max_tokens=24)
    # the adapters are injected into the model's layers: the base is the model with them disabled
    with torch.inference_mode(), engine._peft.disable_adapter():
        ref = engine.model.generate(
            torch.tensor([p]), do_sample=False, max_new_tokens=24, min_new_tokens=0
        )[0, len(p) :].tolist()
    eos = engine.eos_ids
    ref = ref[: next((i + 1 for i, t in enumerate(ref) if t in eos), len(ref))]
    assert ours.token_ids == ref


@pytest.mark.parametrize("adapter", [None, "a", "b"])
def test_logprobs_equal_teacher_forced_forward(engine, adapter):
    p = prompt(engine)
    (seq,) = run(engine, p, adapter, temperature=0.9, top_p=0.8, top_k=40, seed=7)
    assert len(seq.logprobs) == len(seq.token_ids) > 0
    if adapter is None:
        with engine._peft.disable_adapter():
            ref = teacher_forced_logprobs(engine._peft, p, seq.token_ids)
    else:
        engine._peft.set_adapter(adapter)
        ref = teacher_forced_logprobs(engine._peft, p, seq.token_ids)
    assert seq.logprobs == pytest.approx(ref, abs=1e-4)
    assert all(lp <= 0 for lp in seq.logprobs)


def test_adapters_change_outputs(engine):
    p = prompt(engine)
    base, a, b = (run(engine, p, ad, temperature=0)[0].token_ids for ad in (None, "a", "b"))
    assert base != a and base != b and a != b


def test_seed_reproduces_and_differs_across_seeds(engine):
    p = prompt(engine)
    one = run(engine, p, temperature=1.0, seed=11, n=2)
    two = run(engine, p, temperature=1.0, seed=11, n=2)
    other = run(engine, p, temperature=1.0, seed=12, n=2)
    assert [s.token_ids for s in one] == [s.token_ids for s in two]
    assert [s.token_ids for s in one] != [s.token_ids for s in other]
    assert one[0].token_ids != one[1].token_ids  # n samples are distinct draws


def test_finish_reasons_length_stop_token_and_stop_string(engine):
    p = prompt(engine)
    (free,) = run(engine, p, temperature=0, max_tokens=8)
    assert free.finish_reason is FinishReason.LENGTH and len(free.token_ids) == 8
    stop_id = free.token_ids[3]
    (by_id,) = run(engine, p, temperature=0, max_tokens=8, stop_token_ids=(stop_id,))
    first = free.token_ids.index(stop_id)
    assert by_id.finish_reason is FinishReason.STOP
    assert by_id.token_ids == free.token_ids[: first + 1]
    stop_text = engine.decode(free.token_ids[4:6]).strip()
    assert stop_text
    (by_text,) = run(engine, p, temperature=0, max_tokens=8, stop=(stop_text,))
    assert by_text.finish_reason is FinishReason.STOP
    assert stop_text not in by_text.text
    assert free.text.startswith(by_text.text)
    assert len(by_text.token_ids) <= 6


def test_streams_token_by_token_and_cancel_aborts(engine):
    p = prompt(engine)
    cancel = threading.Event()
    events = []
    for event in engine.generate(GenerationRequest(p, Sampling(max_tokens=50)), cancel):
        events.append(event)
        if len(events) == 3:
            cancel.set()
    deltas = [e for e in events if isinstance(e, TokenDelta)]
    assert all(len(d.token_ids) == 1 for d in deltas if d.token_ids)
    assert len([d for d in deltas if d.token_ids]) == 3
    assert isinstance(events[-1], Finished) and events[-1].reason is FinishReason.ABORT


def test_repetition_penalty_and_top_k_follow_transformers():
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits, seen = torch.randn(3, 50), torch.randint(0, 50, (3, 6))
    s = Sampling(temperature=0.7, top_k=10, top_p=0.8, repetition_penalty=1.3)
    scores = RepetitionPenaltyLogitsProcessor(1.3)(seen, logits.clone())
    for warp in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(10), TopPLogitsWarper(0.8)):
        scores = warp(seen, scores)
    allowed = torch.isfinite(scores)
    for seed in range(20):
        picked = sample_next(logits, seen, s, torch.Generator().manual_seed(seed))
        assert allowed[torch.arange(3), picked].all()


def test_base_requests_between_adapter_requests_stay_pure_and_toggle_once(
    engine, tiny_model, monkeypatch
):
    """Interleaved base and adapter requests: the base is the model without any adapter, and
    a run of base-model decoding steps switches the LoRA layers off once, not every step."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    p = prompt(engine)
    calls = []
    real = engine._peft.base_model.disable_adapter_layers
    monkeypatch.setattr(
        engine._peft.base_model, "disable_adapter_layers", lambda: (calls.append(1), real())[1]
    )
    (a,) = run(engine, p, "a", temperature=0, max_tokens=12)
    (base,) = run(engine, p, None, temperature=0, max_tokens=12)
    (a_again,) = run(engine, p, "a", temperature=0, max_tokens=12)
    assert len(calls) == 1  # 12 base steps, one switch
    assert a.token_ids == a_again.token_ids != base.token_ids
    assert base.logprobs == pytest.approx(
        teacher_forced_logprobs(plain, p, base.token_ids), abs=1e-4
    )


def test_generate_batch_equals_each_request_alone(engine):
    """Different prompt lengths, adapters, n, greedy and seeded sampling, stop rules, in one
    call: each request gets the ids, finish reasons and text it gets alone (left padding and
    dropping finished requests from the cache change nothing), log-probs within 1e-5 (fp32)."""
    requests = []
    for i in range(12):
        p = tuple(range(1 + i, 5 + 2 * i))
        s = Sampling(
            temperature=0 if i % 2 == 0 else 1.0,
            seed=i,
            max_tokens=6 + i,
            n=1 + i % 3,
            stop_token_ids=(7,) if i == 5 else (),
        )
        requests.append(GenerationRequest(p, s, [None, "a", "b"][i % 3]))
    batch = engine.generate_batch(requests)
    alone = [collect(engine.generate(r), r.sampling.n) for r in requests]
    assert [len(b) for b in batch] == [r.sampling.n for r in requests]
    for got, want in zip(batch, alone, strict=True):
        for g, w in zip(got, want, strict=True):
            assert g.token_ids == w.token_ids
            assert g.finish_reason == w.finish_reason and g.text == w.text
            assert g.logprobs == pytest.approx(w.logprobs, abs=1e-5)


def test_generate_batch_splits_past_max_batch_rows_and_refuses_unknown_adapters(engine):
    requests = [
        GenerationRequest(tuple(range(2, 6 + i)), Sampling(temperature=0, max_tokens=5), None)
        for i in range(5)
    ]
    old, engine.max_batch_rows = engine.max_batch_rows, 2
    try:
        small = engine.generate_batch(requests)
    finally:
        engine.max_batch_rows = old
    assert [c[0].token_ids for c in small] == [
        c[0].token_ids for c in engine.generate_batch(requests)
    ]
    with pytest.raises(KeyError, match="nope"):
        engine.generate_batch([GenerationRequest((1, 2), Sampling(), "nope")])
