"""Streaming: a bounded shuffle buffer, and peak memory that does not grow with the file size.

The memory test runs ``stream_child.py`` in fresh processes and compares their peak RSS
(``VmHWM``; ``ru_maxrss`` would carry pytest's own size over fork + exec) on files of different sizes made by repeating one pre-encoded block of records:
- the full pipeline (read, shuffle buffer, template, tokenize, pack, batch) for the first 200
  batches of a ~2 GB file and of a ~200 MB file: an eager reader would hold the whole file;
- the read stage (read, shuffle buffer, normalise) over the *whole* of a ~200 MB file and of a
  ~40 MB file: nothing accumulates as the stream goes on.
The full pipeline over the whole 2 GB file takes minutes on 2 cores and is not run here.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from services.data.streaming import shuffle_buffer

from .conftest import sharegpt_record

CHILD = Path(__file__).with_name("stream_child.py")
REPO = Path(__file__).resolve().parents[2]


def test_shuffle_buffer_is_a_permutation_holding_at_most_its_size():
    pulled = 0

    def source():
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield i

    out = []
    for item in shuffle_buffer(source(), 50, random.Random(0)):
        assert pulled - len(out) <= 51  # never reads more than the buffer ahead
        out.append(item)
    assert sorted(out) == list(range(1000)) and out != list(range(1000))
    again = list(shuffle_buffer(range(1000), 50, random.Random(0)))
    assert again == out  # seeded: deterministic


def _write(path: Path, size: int) -> Path:
    block = "".join(
        json.dumps(sharegpt_record(i, turns=1 + i % 3, words=4 + i % 40)) + "\n"
        for i in range(2000)
    ).encode()
    with open(path, "wb") as f:
        written = 0
        while written < size:
            f.write(block)
            written += len(block)
    return path


def _peak(path: Path, tokenizer_dir: str, mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(CHILD), str(path), tokenizer_dir, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_is_independent_of_file_size(tmp_path, model_dir):
    big = _write(tmp_path / "big.jsonl", 2 << 30)
    small = _write(tmp_path / "small.jsonl", 200 << 20)
    tiny = _write(tmp_path / "tiny.jsonl", 40 << 20)
    try:
        full_big = _peak(big, model_dir, "batches:200")
        full_small = _peak(small, model_dir, "batches:200")
        assert full_big["count"] == full_small["count"] == 200
        assert abs(full_big["peak_rss_mb"] - full_small["peak_rss_mb"]) < 40, (full_big, full_small)
        assert full_big["peak_rss_mb"] < 1024  # a 2 GB file is far from being held
        whole_small = _peak(small, model_dir, "read")
        whole_tiny = _peak(tiny, model_dir, "read")
        measured = {"2GB:200": full_big, "200MB:200": full_small, "200MB:read": whole_small}
        print(json.dumps({**measured, "40MB:read": whole_tiny}))  # shown with pytest -s
        assert whole_small["source_rows"] > 4 * whole_tiny["source_rows"]  # really read it all
        assert abs(whole_small["peak_rss_mb"] - whole_tiny["peak_rss_mb"]) < 40, (
            whole_small,
            whole_tiny,
        )
    finally:
        for path in (big, small, tiny):
            path.unlink(missing_ok=True)
