"""Benchmark: a several-GB file streamed through the whole data pipeline to its end, bounded RSS.

Generates sharegpt jsonl files of ``--gb`` and ``--gb / 10`` GB (a block of 2,000 varied
multi-turn records repeated; the tiny model's tokenizer; template ``qwen``; ``cutoff_len``
1024). Each record also carries a ``--filler-kb`` ``source`` field that the sharegpt mapping does
not use: it is read, parsed and held by the shuffle buffer like any record's bytes, but not
tokenized, so a file of several GB holds only as many tokens as this 2-core machine tokenizes in
minutes (the Rust tokenizer, ~200k-400k tokens/s here, is what bounds the speed). Then, each in a
fresh process, it runs ``streaming_batches`` -- lazy read, shuffle buffer
(10,000 records), normalise, template, tokenize, pack (windows of 4,096 examples), batch (8
rows) -- until the stream ends. Reports records, batches, seconds, the peak RSS (VmHWM) and the
RSS sampled every tenth of the file, and whether the peak of the big file stays within
``--tolerance-mb`` of the small one's (memory independent of file size).

    .venv/bin/python bench/bench_data_stream.py [--gb 3] [--filler-kb 16] [--work DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mb(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def record(i: int, filler_kb: float) -> dict:
    conv = []
    for t in range(1 + i % 3):
        words = 4 + (i * 7 + t) % 60
        conv.append({"from": "human", "value": f"question {i} turn {t}: " + "why " * (words // 2)})
        conv.append({"from": "gpt", "value": f"answer {i}.{t} " + "because it is " * words})
    source = f"document {i}: " + "".join(f"{(i * 31 + k) % 997:03d}-" for k in range(4096))
    return {"conversations": conv, "source": source[: int(filler_kb * 1024)]}


def write_file(path: Path, size: int, filler_kb: float) -> int:
    """Repeat a 2,000-record block until ``size`` bytes; returns the number of records."""
    block = "".join(json.dumps(record(i, filler_kb)) + "\n" for i in range(2000)).encode()
    if path.exists() and path.stat().st_size >= size:
        return path.stat().st_size // len(block) * 2000
    written = records = 0
    with open(path, "wb") as f:
        while written < size:
            f.write(block)
            written += len(block)
            records += 2000
    return records


def child(path: str, tokenizer: str, total_records: int) -> dict:
    sys.path.insert(0, str(REPO))
    from services.data.batches import BatchPlan
    from services.data.encode import EncodeOptions, Encoder
    from services.data.formats import FormatSpec
    from services.data.pipeline import DataSpec, SourceSpec, Stats, load_tokenizer
    from services.data.streaming import streaming_batches

    options = EncodeOptions(template="qwen", cutoff_len=1024)
    spec = DataSpec(
        (SourceSpec((path,), FormatSpec("sharegpt")),), "sft", tokenizer, options,
        packing=True, streaming=True, seed=1,
    )  # fmt: skip
    encoder = Encoder(load_tokenizer(tokenizer), options)
    plan = BatchPlan("bench", "train", 0, 1, 1, True, "rows", 8)
    stats = Stats()
    started = time.perf_counter()
    samples, next_sample, batches = [], total_records // 10, 0
    for index, _rows in streaming_batches(
        spec, encoder, plan, 0, 0, shuffle_size=10_000, encode_batch=512, pack_window=4096,
        stats=stats,
    ):  # fmt: skip
        batches = index + 1
        if stats.source_rows >= next_sample:
            samples.append((stats.source_rows, round(rss_mb("VmRSS"), 1)))
            next_sample += total_records // 10
    return {
        "seconds": time.perf_counter() - started,
        "source_rows": stats.source_rows,
        "examples": stats.examples,
        "rows": stats.rows,
        "tokens": stats.tokens,
        "batches": batches,
        "padding_fraction": stats.padding_fraction,
        "peak_rss_mb": rss_mb("VmHWM"),
        "rss_samples": samples,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=3.0)
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "llamafleet-stream"))
    p.add_argument("--filler-kb", type=float, default=16.0)
    p.add_argument("--tolerance-mb", type=float, default=64.0)
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1], int(a.child[2]))))
        return 0
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    if not (model / "tokenizer.json").exists():
        sys.path.insert(0, str(REPO))
        from services.training.tiny.model import build_tiny_model

        build_tiny_model(model, size="tiny", force=True)
    results = {}
    for name, gb in (("small", a.gb / 10), ("big", a.gb)):
        path = work / f"{name}.jsonl"
        records = write_file(path, int(gb * (1 << 30)), a.filler_kb)
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(path), str(model), str(records)],
            capture_output=True, text=True, cwd=REPO, check=True,
        )  # fmt: skip
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["file_gb"] = round(path.stat().st_size / (1 << 30), 2)
        results[name] = result
        print(f"{name}: {json.dumps(result)}", flush=True)
        if not a.keep:
            path.unlink()
    big, small = results["big"], results["small"]
    assert big["source_rows"] == records, "the big file was not read to its end"
    grew = big["peak_rss_mb"] - small["peak_rss_mb"]
    verdict = "bounded" if grew < a.tolerance_mb else "NOT bounded"
    print(
        f"peak RSS {big['peak_rss_mb']:.0f} MB for {big['file_gb']} GB "
        f"({big['source_rows']:,} records, {big['batches']:,} batches, {big['seconds']:.0f} s, "
        f"{big['file_gb'] * 1024 / big['seconds']:.1f} MB/s) vs {small['peak_rss_mb']:.0f} MB "
        f"for {small['file_gb']} GB: {grew:+.0f} MB, {verdict} (tolerance {a.tolerance_mb} MB)"
    )
    return 0 if grew < a.tolerance_mb else 1


if __name__ == "__main__":
    sys.exit(main())
