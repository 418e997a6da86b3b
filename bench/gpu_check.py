"""Exercise the training core's CUDA paths on a GPU and report what ran.

    python bench/gpu_check.py [--out gpu_check.json]

On a built tiny model (no hub): (1) packed SFT loss with sdpa in bfloat16 against float32,
(2) flash_attention_2 with varlen packing (cu_seq_lens) against sdpa's block-diagonal mask, when
flash-attn is importable, (3) a few bf16 and fp16 (GradScaler) LoRA training steps through the
``sft`` recipe, loss finite and falling, (4) QLoRA: a few bf16 LoRA steps over a 4-bit base in NF4
and in FP4 (double quantisation), the linear layers checked to be bitsandbytes ``Linear4bit`` of
that type on the GPU, with peak GPU memory, (5) the ``ppo`` recipe in float32 and bfloat16 with the
rollout service's HF engine on CUDA as an in-process fleet. Prints one JSON report; exit 1 if a check that ran failed,
0 otherwise (checks that could not run are reported as skipped, with the reason).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "training"))

import torch  # noqa: E402
from synthetic import digit_task, make_settings, pack, task_rows  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from services.training.loop.batches import InMemorySource  # noqa: E402
from services.training.loop.collate import collate  # noqa: E402
from services.training.losses.causal_lm import causal_lm_loss_sum  # noqa: E402
from services.training.recipes import sft  # noqa: E402
from services.training.spec.settings import LoraSettings
from services.training.tiny.model import build_tiny_model  # noqa: E402


def packed_loss(base, rows, pad_id, attention, dtype) -> float:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, attn_implementation=attention)
    model = model.cuda().eval()
    x = collate(rows, pad_id=pad_id, attention=attention, mask_dtype=dtype).to("cuda")
    with torch.no_grad():
        total, count = causal_lm_loss_sum(model(**x.model_kwargs()).logits, x.shift_labels)
    return float(total) / count


QLORA_CHECKS = ("qlora_nf4_train_bf16", "qlora_fp4_train_bf16")
PPO_CHECKS = ("ppo_inline_fleet_float32", "ppo_inline_fleet_bfloat16")


def train_steps(base, rows, job_dir, dtype: str, attention: str, **overrides) -> dict:
    settings = make_settings(
        base,
        method="lora",
        lora=LoraSettings(rank=8, alpha=16),
        compute_dtype=dtype,
        attention=attention,
        max_steps=20,
        batch_rows=4,
        logging_steps=5,
        learning_rate=2e-3,
        **overrides,
    )
    started = time.perf_counter()
    result = sft.run(settings, InMemorySource(rows), job_dir)
    losses = [
        json.loads(line)["loss"]
        for line in (Path(job_dir) / "output" / "metrics.jsonl").read_text().splitlines()
    ]
    ok = result.state == "SUCCEEDED" and all(map(torch.isfinite, torch.tensor(losses)))
    ok = ok and losses[-1] < losses[0]
    return {"ok": bool(ok), "losses": losses, "seconds": round(time.perf_counter() - started, 1)}


def qlora_steps(base, rows, job_dir, quant_type: str) -> dict:
    """A few LoRA steps over the base quantised to 4 bits (``quant_type``, double quantisation)."""
    import bitsandbytes as bnb

    from services.training.model import load as models

    settings = make_settings(
        base, method="lora", lora=LoraSettings(rank=8, alpha=16), compute_dtype="bfloat16",
        quantization_bits=4, quantization_type=quant_type, double_quantization=True,
    )  # fmt: skip
    model = models.load_base(settings, torch.device("cuda"))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    layout = {
        "linear4bit_layers": len(layers),
        "quant_types": sorted({m.weight.quant_state.quant_type for m in layers}),
        "double_quant": all(m.weight.quant_state.state2 is not None for m in layers),
        "on_cuda": all(m.weight.device.type == "cuda" for m in layers),
    }
    del model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    result = train_steps(
        base, rows, job_dir, "bfloat16", "sdpa", quantization_bits=4,
        quantization_type=quant_type, double_quantization=True,
    )  # fmt: skip
    result.update(layout, peak_gpu_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1))
    result["ok"] = bool(
        result["ok"] and layers and layout["quant_types"] == [quant_type]
        and layout["double_quant"] and layout["on_cuda"]
    )  # fmt: skip
    return result


def ppo_steps(tiny, tokenizer, work: Path, dtype: str, device: str = "cuda") -> dict:
    """The ``ppo`` recipe on CUDA with the rollout service's HF engine on CUDA as the fleet (in
    process): a short SFT to a model that answers "yes" sometimes, then PPO rewarding "yes".
    Reports the reward per step and how far the trainer's log-probs are from the engine's
    (``ppo/engine_ratio``: 1 when they agree; bf16 shows the mismatch the importance weights
    correct)."""
    from inline_fleet import InlineFleet, PromptSource, yes_no_prompts, yes_no_rows
    from llamafleet.rollout.v1 import rollout_pb2

    from services.training.recipes import ppo
    from services.training.spec.settings import PpoSettings

    sft_job = work / f"sft-{dtype}"
    sft.run(
        make_settings(tiny, learning_rate=3e-3, max_steps=30, batch_rows=8, compute_dtype=dtype),
        InMemorySource(yes_no_rows(tokenizer, 200)),
        sft_job,
    )
    model = sft_job / "model"
    yes = tokenizer("yes", add_special_tokens=False)["input_ids"][0]
    job = work / f"ppo-{dtype}"
    fleet = InlineFleet(
        model, job, lambda ids: float(bool(ids) and ids[0] == yes), device=device, dtype=dtype
    )
    sampling = rollout_pb2.SamplingParams(max_tokens=3, temperature=1.0, seed=1)
    settings = make_settings(
        model, recipe="ppo", method="lora", lora=LoraSettings(rank=8, alpha=16),
        learning_rate=1e-3, batch_rows=8, max_steps=12, logging_steps=1, compute_dtype=dtype,
        ppo=PpoSettings(
            sampling=sampling.SerializeToString(), samples_per_prompt=4, reward_scorer="yes",
            rollout_batch_size=8, ppo_epochs=4, kl_coef=0.05,
        ),
    )  # fmt: skip
    started = time.perf_counter()
    prompts = PromptSource(yes_no_prompts(tokenizer, range(1000, 1064)))
    result = ppo.run(settings, prompts, job, exchange=fleet, job_id=f"gpu-ppo-{dtype}")
    records = [json.loads(x) for x in (job / "output" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward/mean"] for r in records]
    ratios = [r["ppo/engine_ratio"] for r in records]
    finite = all(map(torch.isfinite, torch.tensor([r["loss"] for r in records])))
    return {
        "ok": bool(result.state == "SUCCEEDED" and finite and all(0.5 < x < 2 for x in ratios)),
        "rewards": [round(x, 3) for x in rewards],
        "reward_first2_last4": [sum(rewards[:2]) / 2, sum(rewards[-4:]) / 4],
        "engine_ratio_min_max": [min(ratios), max(ratios)],
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "checks": {}}
    if not torch.cuda.is_available():
        report["checks"]["all"] = {"skipped": "no CUDA device"}
        for name in QLORA_CHECKS + PPO_CHECKS:
            report["checks"][name] = {"skipped": "no CUDA device"}
        print(json.dumps(report, indent=1))
        return 0
    report["device"] = torch.cuda.get_device_name(0)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    base = build_tiny_model(work / "tiny", "tiny", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = pack(task_rows(tokenizer, digit_task(1, 400)), cutoff=256)
    pad = tokenizer.pad_token_id
    checks = report["checks"]

    def run(name, fn):
        try:
            checks[name] = fn()
        except Exception as exc:  # report and go on with the other checks
            checks[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()

    def sdpa_bf16():
        fp32 = packed_loss(base, rows[:4], pad, "sdpa", torch.float32)
        bf16 = packed_loss(base, rows[:4], pad, "sdpa", torch.bfloat16)
        return {"ok": abs(fp32 - bf16) < 0.05, "fp32": fp32, "bf16": bf16}

    run("sdpa_packed_loss_bf16_vs_fp32", sdpa_bf16)
    if importlib.util.find_spec("flash_attn") is None:
        checks["flash_attention_2_varlen"] = {"skipped": "flash-attn is not installed"}
    else:

        def flash():
            ref = packed_loss(base, rows[:4], pad, "sdpa", torch.bfloat16)
            got = packed_loss(base, rows[:4], pad, "flash_attention_2", torch.bfloat16)
            return {"ok": abs(ref - got) < 0.02, "sdpa_bf16": ref, "flash_varlen_bf16": got}

        run("flash_attention_2_varlen", flash)
        run(
            "train_bf16_flash",
            lambda: train_steps(base, rows, work / "j-fa", "bfloat16", "flash_attention_2"),
        )
    run("train_bf16_sdpa", lambda: train_steps(base, rows, work / "j-bf16", "bfloat16", "sdpa"))
    run(
        "train_fp16_sdpa_gradscaler",
        lambda: train_steps(base, rows, work / "j-fp16", "float16", "sdpa"),
    )
    if importlib.util.find_spec("bitsandbytes") is None:
        for name in QLORA_CHECKS:
            checks[name] = {"skipped": "bitsandbytes is not installed (llamafleet[methods])"}
    else:
        for name, quant_type in zip(QLORA_CHECKS, ("nf4", "fp4"), strict=True):
            run(name, lambda q=quant_type: qlora_steps(base, rows, work / f"j-{q}", q))
    for name, dtype in zip(PPO_CHECKS, ("float32", "bfloat16"), strict=True):
        run(name, lambda d=dtype: ppo_steps(base, tokenizer, work, d))
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if all(c.get("ok", True) for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
