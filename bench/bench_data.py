"""Benchmark: template + tokenize + pack, llamafleet's data service vs LLaMA-Factory's preprocessing.

Both read the same generated sharegpt file of ``--n`` multi-turn conversations (default 100k),
with the same tokenizer (the locally built tiny model's, a 3072-token byte-level BPE), the same
template (``qwen``) and ``cutoff_len``, and write their tokenized, packed result to disk
(llamafleet: Arrow shards via ``DatasetStore``; LLaMA-Factory: the ``datasets`` cache that
``get_dataset`` writes). Each measurement runs in a fresh process so its peak RSS is its own;
the two alternate for ``--repeats`` rounds in one invocation and medians are reported.

LLaMA-Factory runs from a separate virtualenv (``--lf-python``; ``pip install llamafactory``
there), through its own ``get_dataset`` with ``packing``/``neat_packing`` (attention-isolated
packing, like ours) and ``preprocessing_num_workers`` of 1 and 2 (the faster is compared).

    .venv/bin/python bench/bench_data.py [--n 100000] [--repeats 3] [--lf-python PATH] [--packed-only]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = (
    "the model data token train loss batch layer weight learning rate value policy reward "
    "question answer because why how what when where which python code function return list "
    "paris rome berlin madrid capital country city river mountain number seven twelve"
).split()

LF_WORKER = r"""
import json, os, sys, time
args = json.loads(sys.argv[1])
def peak_rss_mb():
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")) / 1024

os.environ["HF_DATASETS_CACHE"] = args["cache"]
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
started = time.perf_counter()
model_args, data_args, training_args, _, _ = get_train_args(dict(
    stage="sft", do_train=True, model_name_or_path=args["model"], dataset="bench",
    dataset_dir=args["dataset_dir"], template="qwen", cutoff_len=args["cutoff"],
    packing=args["packing"], neat_packing=args["packing"], overwrite_cache=True,
    preprocessing_num_workers=args["workers"], output_dir=args["output"], report_to="none",
    finetuning_type="lora", lora_target="all", disable_tqdm=True,
))
module = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
setup = time.perf_counter() - started
started = time.perf_counter()
ds = get_dataset(template, model_args, data_args, training_args, stage="sft", **module)["train_dataset"]
seconds = time.perf_counter() - started
# packed rows are padded to cutoff_len: count the real tokens (attention_mask != 0)
tokens = sum(len(m) - m.count(0) for m in ds["attention_mask"])
trained = sum(len(row) - row.count(-100) for row in ds["labels"])
print(json.dumps({"seconds": seconds, "setup": setup, "rows": len(ds), "tokens": tokens,
                  "trained_tokens": trained,
                  "peak_rss_mb": peak_rss_mb()}))
"""


def conversation(rng: random.Random) -> dict:
    """A multi-turn chat whose lengths follow a long-tailed (log-normal) mix."""
    turns = rng.choice([1, 1, 1, 2, 2, 3, 4])
    conv = []
    for _ in range(turns):
        q = min(400, max(3, int(rng.lognormvariate(3.0, 0.8))))
        a = min(900, max(3, int(rng.lognormvariate(4.2, 0.9))))
        conv.append({"from": "human", "value": " ".join(rng.choices(WORDS, k=q)) + "?"})
        conv.append({"from": "gpt", "value": " ".join(rng.choices(WORDS, k=a)) + "."})
    record = {"conversations": conv}
    if rng.random() < 0.3:
        record["system"] = "You are a careful assistant. " + " ".join(rng.choices(WORDS, k=12))
    return record


def make_inputs(work: Path, n: int) -> tuple[Path, Path]:
    data_dir = work / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "bench.jsonl"
    if not path.exists() or sum(1 for _ in open(path)) != n:
        rng = random.Random(0)
        with open(path, "w") as f:
            for _ in range(n):
                f.write(json.dumps(conversation(rng)) + "\n")
    info = {"bench": {"file_name": "bench.jsonl", "formatting": "sharegpt"}}
    (data_dir / "dataset_info.json").write_text(json.dumps(info))
    model = work / "model"
    if not (model / "tokenizer.json").exists():
        sys.path.insert(0, str(REPO))
        from services.training.tiny.model import build_tiny_model

        build_tiny_model(model, size="tiny", force=True)
    return data_dir, model


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM; ``ru_maxrss`` would include the parent's at fork)."""
    lines = open("/proc/self/status").read().splitlines()
    return next(int(x.split()[1]) for x in lines if x.startswith("VmHWM:")) / 1024


def llamafleet_worker(args: dict) -> dict:
    sys.path.insert(0, str(REPO))
    from services.data.encode import EncodeOptions, Encoder
    from services.data.formats import FormatSpec
    from services.data.pipeline import DataSpec, SourceSpec, load_tokenizer
    from services.data.prepare import prepare
    from services.data.store import DatasetMeta, DatasetStore, SplitMeta

    options = EncodeOptions(template="qwen", cutoff_len=args["cutoff"])
    spec = DataSpec(
        (SourceSpec((str(Path(args["dataset_dir"]) / "bench.jsonl"),), FormatSpec("sharegpt")),),
        "sft",
        args["model"],
        options,
        packing=args["packing"],
    )
    encoder = Encoder(load_tokenizer(args["model"]), options)
    started = time.perf_counter()
    result = prepare(spec, encoder, encode_batch=512)
    meta = DatasetMeta("bench", "", 0.0, "sft", b"", False, "rows", {}, (SplitMeta("train", {}),))
    DatasetStore(args["output"]).write(meta, result.splits)
    seconds = time.perf_counter() - started
    s = result.stats
    engine = encoder.engine
    return {
        "engine": f"{engine.name} ({engine.reason})",
        "seconds": seconds,
        "rows": s.rows,
        "tokens": s.tokens,
        "trained_tokens": s.trained_tokens,
        "examples": s.examples,
        "dropped": dict(s.dropped_rows),
        "peak_rss_mb": peak_rss_mb(),
    }


def run(cmd: list[str], env: dict | None = None) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cutoff", type=int, default=1024)
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "llamafleet-bench"))
    p.add_argument("--lf-python", default="/tmp/lf-venv-data/bin/python")
    p.add_argument("--lf-workers", default="1,2")
    p.add_argument("--packed-only", action="store_true", help="skip the unpacked runs")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(llamafleet_worker(json.loads(a.worker))))
        return 0
    work = Path(a.work)
    data_dir, model = make_inputs(work, a.n)
    base = {"model": str(model), "dataset_dir": str(data_dir), "cutoff": a.cutoff}
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "true",
    }
    have_lf = Path(a.lf_python).exists()
    results: dict[str, list[dict]] = {}
    for r in range(a.repeats):
        for packing in (True, False) if r == 0 and not a.packed_only else (True,):
            key = f"llamafleet packing={packing}"
            job = {**base, "packing": packing, "output": str(work / f"lf-out-{r}-{packing}")}
            results.setdefault(key, []).append(
                run([sys.executable, __file__, "--worker", json.dumps(job)], env)
            )
            if not have_lf:
                continue
            for workers in [int(w) for w in a.lf_workers.split(",")] if packing else [1]:
                key = f"llamafactory packing={packing} workers={workers}"
                cache = tempfile.mkdtemp(dir=work, prefix="hfcache-")
                job = {**base, "packing": packing, "workers": workers, "cache": cache,
                       "output": str(work / "lf-trainer-out")}  # fmt: skip
                try:
                    results.setdefault(key, []).append(
                        run([a.lf_python, "-c", LF_WORKER, json.dumps(job)], env)
                    )
                except RuntimeError as exc:
                    print(f"{key}: FAILED: {exc}", file=sys.stderr)
                    results.setdefault(key, [])
    print(f"{a.n} conversations, cutoff_len={a.cutoff}, template qwen, {os.cpu_count()} cores")
    print(
        f"{'run':42} {'n':>2} {'s':>7} {'ex/s':>9} {'tok/s':>11} {'rows':>7} {'pad':>7} {'RSS MB':>7}"
    )
    medians = {}
    for key, runs in results.items():
        if not runs:
            print(f"{key:42} failed")
            continue
        sec = statistics.median(x["seconds"] for x in runs)
        rss = statistics.median(x["peak_rss_mb"] for x in runs)
        x = runs[0]
        pad = 1 - x["tokens"] / (x["rows"] * a.cutoff)
        medians[key] = sec
        print(
            f"{key:42} {len(runs):>2} {sec:7.2f} {a.n / sec:9.0f} {x['tokens'] / sec:11.0f} "
            f"{x['rows']:7d} {pad:7.2%} {rss:7.0f}"
        )
    engines = {x["engine"] for runs in results.values() for x in runs if "engine" in x}
    print(f"llamafleet tokenizer engine: {', '.join(sorted(engines))}")
    ours = medians.get("llamafleet packing=True")
    theirs = [v for k, v in medians.items() if k.startswith("llamafactory packing=True")]
    for key, runs in results.items():
        print(f"{key}: seconds of each run, in order: {[round(x['seconds'], 1) for x in runs]}")
    if ours and theirs:
        print(f"speed-up vs the faster LLaMA-Factory packing run: {min(theirs) / ours:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
