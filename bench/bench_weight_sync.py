"""Benchmark: the cost of syncing one GRPO policy version to a rollout worker, full weights
against a LoRA adapter of the same model, side by side in the same run. Results go to
BENCHMARKS.md ("GRPO weight sync").

One model (``--size``, default ``small``), float32 on the trainer. Per version, for each kind:

- ``publish``: the trainer writes the version folder: ``model.full_weights.publish_full_weights``
  (every parameter as safetensors + the manifest with the file's sha256) or ``lora.save_adapter``
  (rank ``--rank`` on every linear layer, as the GRPO LoRA policy);
- ``hash``: the training service's sha256 of the deterministic archive ``FetchAdapter`` streams
  (``adapters.store.archive_info``; computed once per version, then cached);
- ``transfer``: the rollout side's ``AdapterCache.fetch`` over the real gRPC ``FetchAdapter`` of an
  in-process training service on loopback (stream ~1 MiB chunks, sha256-verify, extract);
- ``load``: the HF engine making it servable: ``load_weights`` (the base loaded again + the
  tensors copied in) or ``load_adapter`` (peft), timed to the first greedy token generated with
  it (so lazy work is counted), then unloaded.

Before each version the trainer's weights are nudged (as an optimizer step would), so every version
is new bytes. Medians over ``--versions`` versions, the first left out (warm-up); the ratio is
full / LoRA per column.

    .venv/bin/python bench/bench_weight_sync.py [--size small] [--versions 6] [--rank 8]
        [--work /tmp/bench-weight-sync] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "clients" / "python"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

COLUMNS = ("bytes", "publish_s", "hash_s", "transfer_s", "load_s")


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


class Training:
    """The real training service in this process (its RPCs on a loopback port); jobs whose runner
    only sleeps, so the bench writes their version folders itself."""

    def __init__(self, work: Path, redis_url: str) -> None:
        from services.common.server import ServiceHost
        from services.training.config import TrainingConfig
        from services.training.jobs.manager import JobManager
        from services.training.server import make_register

        def launcher(spec, job_dir, data_address, token):
            return [sys.executable, "-c", "import time; time.sleep(3600)"], {}

        cfg = TrainingConfig(
            jobs_dir=str(work / "jobs"), model_roots=str(work), export_roots=str(work),
            redis_url=redis_url, shutdown_delay_s=0.0, grace_s=0.5, cancel_grace_s=1.0,
        )  # fmt: skip
        self.manager = JobManager(cfg, launcher=launcher, validator=lambda spec: None).start()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.host = ServiceHost("training", cfg, make_register(cfg, self.manager))
        self._run(self.host.start())
        self.address = self.host.address

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def create(self, job_id: str, model: Path, lora: bool) -> Path:
        from llamafleet.training.v1 import training_pb2 as pb

        spec = pb.TrainingJobSpec(job_id=job_id, base_model=str(model), stage=pb.STAGE_GRPO)
        spec.dataset.dataset_id = "prompts"
        spec.ppo.reward_scorer = "bench"
        spec.finetuning.type = pb.FINETUNING_TYPE_LORA if lora else pb.FINETUNING_TYPE_FULL
        self.manager.create(spec)
        return Path(self.manager.view(job_id).dir)

    def stop(self) -> None:
        for view_id in ("sync-full", "sync-lora"):
            try:
                self.manager.cancel(view_id)
            except Exception:  # noqa: BLE001 - best effort at the end of a bench
                pass
        self._run(self.host.stop(grace=0))
        self.manager.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def nudge(model, generator) -> None:
    """Every trained weight moves a little, as after an optimizer step."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1e-3 * torch.randn(p.shape, generator=generator))


def first_token(engine, name: str) -> None:
    from services.rollout.engines import GenerationRequest, Sampling, collect

    request = GenerationRequest((5, 17, 42, 9), Sampling(temperature=0.0, max_tokens=1), name)
    collect(engine.generate(request), 1)


def run(args) -> dict:
    import torch
    from llamafleet.common.v1 import common_pb2
    from llamafleet.redis_local import LocalRedis, free_port
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from services.common.adapter_cache import AdapterCache
    from services.rollout.engines.hf import HFEngine
    from services.training.adapters.store import archive_info
    from services.training.model import lora
    from services.training.model.full_weights import publish_full_weights
    from services.training.tiny.model import build_tiny_model

    work = Path(args.work)
    shutil.rmtree(work / "jobs", ignore_errors=True)
    shutil.rmtree(work / "cache", ignore_errors=True)
    model_dir = work / "models" / args.size
    if not (model_dir / "config.json").exists():
        build_tiny_model(model_dir, args.size, seed=0, force=True)
    redis = LocalRedis(work / "redis", free_port()).start()  # GRPO jobs need one configured
    training = Training(work, redis.url)
    try:
        dirs = {
            "full": training.create("sync-full", model_dir, lora=False),
            "lora": training.create("sync-lora", model_dir, lora=True),
        }
        full_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        params = sum(p.numel() for p in full_model.parameters())
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=targets)
        lora_model = get_peft_model(base, config)
        models = {"full": full_model, "lora": lora_model}
        cache = AdapterCache(work / "cache", training.address)
        engine = HFEngine(model_dir, device="cpu", dtype="float32")
        generator = torch.Generator().manual_seed(0)
        rows: dict[str, list[dict]] = {"full": [], "lora": []}
        for version in range(1, args.versions + 1):
            for kind in ("full", "lora"):  # alternated: the same load for both
                model = models[kind]
                nudge(model, generator)
                dest = dirs[kind] / "adapters" / f"v{version}"
                started = time.perf_counter()
                if kind == "full":
                    publish_full_weights(model, dest, "full")
                else:
                    lora.save_adapter(model, dest)
                published = time.perf_counter()
                info = archive_info(dest)[1]
                hashed = time.perf_counter()
                ref = common_pb2.AdapterRef(id=f"sync-{kind}", version=version)
                cached = cache.fetch(ref)
                fetched = time.perf_counter()
                name = f"{kind}-v{version}"
                if kind == "full":
                    engine.load_weights(name, cached.path)
                else:
                    engine.load_adapter(name, cached.path)
                first_token(engine, name)
                loaded = time.perf_counter()
                engine.unload_adapter(name)
                assert cached.sha256 == info.sha256
                rows[kind].append(
                    {
                        "version": version, "bytes": info.total_size,
                        "publish_s": published - started, "hash_s": hashed - published,
                        "transfer_s": fetched - hashed, "load_s": loaded - fetched,
                    }
                )  # fmt: skip
                print(f"{kind} v{version}: " + ", ".join(
                    f"{k} {rows[kind][-1][k]:.4g}" for k in COLUMNS
                ), flush=True)  # fmt: skip
    finally:
        training.stop()
        redis.stop()
    kept = {k: v[1:] if len(v) > 1 else v for k, v in rows.items()}
    medians = {k: {c: median([r[c] for r in v]) for c in COLUMNS} for k, v in kept.items()}
    ratio = {c: medians["full"][c] / medians["lora"][c] for c in COLUMNS}
    return {
        "size": args.size, "parameters": params, "rank": args.rank, "versions": args.versions,
        "medians": medians, "ratio_full_over_lora": ratio, "rows": rows,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--versions", type=int, default=6)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--work", default="/tmp/bench-weight-sync")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    result = run(args)
    print(f"\n{args.size}: {result['parameters'] / 1e6:.1f}M parameters, LoRA rank {args.rank}; "
          f"medians of versions 2..{args.versions}")  # fmt: skip
    print(f"{'':6} {'MB':>8} {'publish s':>10} {'sha256 s':>9} {'transfer s':>11} {'load s':>8}")
    for kind in ("full", "lora"):
        m = result["medians"][kind]
        print(f"{kind:6} {m['bytes'] / 1e6:8.2f} {m['publish_s']:10.4f} {m['hash_s']:9.4f} "
              f"{m['transfer_s']:11.4f} {m['load_s']:8.4f}")  # fmt: skip
    r = result["ratio_full_over_lora"]
    print(f"{'ratio':6} {r['bytes']:8.1f} {r['publish_s']:10.1f} {r['hash_s']:9.1f} "
          f"{r['transfer_s']:11.1f} {r['load_s']:8.1f}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
