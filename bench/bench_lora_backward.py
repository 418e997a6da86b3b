"""Benchmark: the fused LoRA layer (``methods/lora_fused.py``) against peft's LoRA layer.

One LoRA linear layer, frozen float32 base ``W`` (h, d), adapters of rank ``r``, input (m, d):
forward + backward time (median of ``--repeats`` after one warm-up) and memory:

- ``saved``: bytes of the distinct tensors autograd keeps for backward (``saved_tensors_hooks``),
- ``peak`` (CUDA only): ``torch.cuda.max_memory_allocated`` during fwd+bwd above what was
  allocated before (weights, input, upstream gradient).

Both layers start from the same weights, and the script checks their gradients agree before
timing. Results go to BENCHMARKS.md ("LoRA backward").

    .venv/bin/python bench/bench_lora_backward.py [--repeats 5] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.training.model.methods.lora_fused import fuse_lora_layers  # noqa: E402

SHAPES = [  # (m, r, d, h): tokens, rank, in, out
    (2048, 16, 4096, 11008),  # Llama-7B MLP up/gate projection, 2k tokens
    (2048, 16, 11008, 4096),  # ... its down projection
    (2048, 16, 4096, 4096),  # attention projection
    (512, 64, 4096, 4096),
    (8192, 8, 1024, 1024),
]


def layer(m_unused: int, r: int, d: int, h: int, device: str, fused: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    holder = torch.nn.Module()
    holder.proj = torch.nn.Linear(d, h, bias=False)
    model = get_peft_model(holder, LoraConfig(r=r, lora_alpha=2 * r, target_modules=["proj"]))
    with torch.no_grad():
        model.base_model.model.proj.lora_B["default"].weight.normal_(0, 0.01)
    if fused:
        assert fuse_lora_layers(model) == 1
    return model.base_model.model.proj.to(device)


def saved_bytes(fn) -> int:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def measure(module, x, grad, repeats: int, device: str) -> dict:
    def step():
        out = module(x)
        out.backward(grad)
        for p in module.parameters():
            p.grad = None
        x.grad = None

    step()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    result = {"ms": 1000 * statistics.median(times), "saved": saved_bytes(lambda: module(x))}
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        result["peak"] = torch.cuda.max_memory_allocated() - base
    return result


def gradients(module, x, grad) -> list[torch.Tensor]:
    x.grad = None
    module(x).backward(grad)
    out = [x.grad.clone()] + [p.grad.clone() for p in module.parameters() if p.requires_grad]
    for p in module.parameters():
        p.grad = None
    x.grad = None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| m | r | d | h | peft ms | fused ms | time ratio | peft saved MiB | fused saved MiB"
          " | peft peak MiB | fused peak MiB | max grad diff |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m, r, d, h in SHAPES:
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(m, d, generator=gen).to(args.device).requires_grad_(True)
        grad = torch.randn(m, h, generator=gen).to(args.device)
        peft_layer = layer(m, r, d, h, args.device, fused=False)
        fused_layer = layer(m, r, d, h, args.device, fused=True)
        diff = max(
            float((a - b).abs().max())
            for a, b in zip(
                gradients(peft_layer, x, grad), gradients(fused_layer, x, grad), strict=True
            )
        )
        ref = measure(peft_layer, x, grad, args.repeats, args.device)
        new = measure(fused_layer, x, grad, args.repeats, args.device)
        mib = 2**20
        peaks = f"{ref['peak'] / mib:.0f} | {new['peak'] / mib:.0f}" if "peak" in ref else "- | -"
        print(
            f"| {m} | {r} | {d} | {h} | {ref['ms']:.1f} | {new['ms']:.1f} | "
            f"{new['ms'] / ref['ms']:.3f} | {ref['saved'] / mib:.1f} | {new['saved'] / mib:.1f} | "
            f"{peaks} | {diff:.1e} |",
            flush=True,
        )
        del peft_layer, fused_layer, x, grad


if __name__ == "__main__":
    main()
