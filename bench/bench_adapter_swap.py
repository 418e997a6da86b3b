"""Benchmark: a rollout worker making a new LoRA policy version resident, with and without loading
it into the slot of the idle version it evicts, side by side in the same run. Results go to
BENCHMARKS.md ("GRPO adapter hot-load").

One model (``--size``, default ``small``), float32 on CPU; versions of one LoRA policy (rank
``--rank`` on every linear layer, as the GRPO LoRA policy), written by the trainer's own
``lora.save_adapter`` after a nudge of every LoRA weight (as an optimizer step would). Two HF
engines, each under ``ResidentAdapters`` with ``--max-resident`` versions (the rollout default, 4):

- ``fresh``: the engine without ``replace_adapter``: PEFT injects the new version as a new
  adapter, then the least recently used idle version is deleted (the path before slot reuse);
- ``reuse``: the engine as shipped: the new version is copied into the evicted version's slot.

Per version, for each side (alternated, so both see the same load): ``acquire`` of the new version
(the folder is already on disk: no fetch) timed to the first greedy token generated with it, then
``release``. Medians over the versions that evict one (after the first ``--max-resident``); both
sides' greedy outputs are checked equal per version.

    .venv/bin/python bench/bench_adapter_swap.py [--size small] [--versions 16] [--rank 8]
        [--max-resident 4] [--work /tmp/bench-adapter-swap] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "clients" / "python"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


class LocalVersions:
    """The adapter source: version folders already on disk (the fetch is not what is measured)."""

    def __init__(self, folders: dict[int, Path]) -> None:
        self.folders = folders

    def fetch(self, ref):
        from services.common.adapter_cache import CachedAdapter

        path = self.folders[ref.version]
        return CachedAdapter(ref, path, f"{ref.version:064x}", 0)


class WithoutSlotReuse:
    """The engine with every method but ``replace_adapter``: ResidentAdapters loads fresh."""

    def __init__(self, engine) -> None:
        self._engine = engine

    def __getattr__(self, name):
        if name == "replace_adapter":
            raise AttributeError(name)
        return getattr(self._engine, name)


def first_token(engine, name: str) -> list[int]:
    from services.rollout.engines import GenerationRequest, Sampling, collect

    request = GenerationRequest((5, 17, 42, 9), Sampling(temperature=0.0, max_tokens=1), name)
    (out,) = collect(engine.generate(request), 1)
    return out.token_ids


def run(args) -> dict:
    import torch
    from llamafleet.common.v1 import common_pb2
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from services.rollout.adapters import ResidentAdapters
    from services.rollout.engines.hf import HFEngine
    from services.training.model import lora
    from services.training.tiny.model import build_tiny_model

    work = Path(args.work)
    model_dir = work / "models" / args.size
    if not (model_dir / "config.json").exists():
        build_tiny_model(model_dir, args.size, seed=0, force=True)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=targets)
    policy = get_peft_model(base, config, adapter_name=lora.TRAINED_ADAPTER)
    generator = torch.Generator().manual_seed(0)
    folders = {}
    for version in range(1, args.versions + 1):
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_" in name:
                    p.add_(1e-2 * torch.randn(p.shape, generator=generator))
        folders[version] = work / "versions" / f"v{version}"
        lora.save_adapter(policy, folders[version])
    source = LocalVersions(folders)
    sides = {}
    for side in ("fresh", "reuse"):
        engine = HFEngine(model_dir, device="cpu", dtype="float32")
        served = WithoutSlotReuse(engine) if side == "fresh" else engine
        sides[side] = (engine, ResidentAdapters(served, source, args.max_resident))
    rows: dict[str, list[float]] = {"fresh": [], "reuse": []}
    for version in range(1, args.versions + 1):
        ref = common_pb2.AdapterRef(id="policy", version=version)
        outputs = {}
        for side, (engine, adapters) in sides.items():  # alternated: the same load for both
            started = time.perf_counter()
            name = adapters.acquire(ref)
            outputs[side] = first_token(engine, name)
            rows[side].append(time.perf_counter() - started)
            adapters.release(ref)
        if outputs["fresh"] != outputs["reuse"]:
            raise SystemExit(f"v{version}: the reused slot generated {outputs['reuse']}, "
                             f"the fresh load {outputs['fresh']}")  # fmt: skip
        print(f"v{version}: fresh {rows['fresh'][-1]:.4f} s, reuse {rows['reuse'][-1]:.4f} s",
              flush=True)  # fmt: skip
    kept = {k: v[args.max_resident :] for k, v in rows.items()}
    medians = {k: median(v) for k, v in kept.items()}
    return {
        "size": args.size, "rank": args.rank, "versions": args.versions,
        "max_resident": args.max_resident, "measured_loads": len(kept["reuse"]),
        "median_s": medians, "speedup": medians["fresh"] / medians["reuse"], "rows": rows,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--versions", type=int, default=16)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-resident", type=int, default=4)
    parser.add_argument("--work", default="/tmp/bench-adapter-swap")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    if args.versions <= args.max_resident:
        parser.error("--versions must exceed --max-resident (only evicting loads are measured)")
    result = run(args)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
