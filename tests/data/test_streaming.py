"""Streaming: a bounded shuffle buffer, and peak memory that does not grow with the file size.

The memory test runs ``stream_child.py`` in fresh processes and compares their peak RSS
(``VmHWM``; ``ru_maxrss`` would carry pytest's own size over fork + exec) on files of different
sizes made by repeating one pre-encoded block of records: the full pipeline (read, shuffle
buffer, normalise, template, tokenize, pack, batch) over the *whole* of a ~3 GB file and of a
~300 MB file. Each record carries a 16 KB ``source`` field the sharegpt mapping does not use
(read, parsed and held in the shuffle buffer, never tokenized), so that several GB go through
the pipeline in a few minutes of this 2-core machine's tokenizer time.
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


def _write(path: Path, size: int) -> int:
    """Repeat a block of 2,000 records up to ``size`` bytes; returns the number of records."""
    records = [sharegpt_record(i, turns=1 + i % 3, words=4 + i % 40) for i in range(2000)]
    filler = "".join(f"{k % 997:03d}-" for k in range(4096))  # 16 KB
    block = "".join(json.dumps({**r, "source": filler}) + "\n" for r in records).encode()
    written = 0
    with open(path, "wb") as f:
        while written < size:
            f.write(block)
            written += len(block)
    return written // len(block) * len(records)


def _peak(path: Path, tokenizer_dir: str, mode: str, timeout: int = 240) -> dict:
    out = subprocess.run(
        [sys.executable, str(CHILD), str(path), tokenizer_dir, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.heavy  # ~2 min: scripts/test_heavy.sh
@pytest.mark.timeout(600)
def test_peak_memory_is_independent_of_file_size(tmp_path, model_dir):
    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    try:
        big_records = _write(big, 3 << 30)
        small_records = _write(small, 300 << 20)
        full_big = _peak(big, model_dir, "all", timeout=900)
        full_small = _peak(small, model_dir, "all")
        print(json.dumps({"3GB": full_big, "300MB": full_small}))  # shown with pytest -s
        # both read to the end, every record encoded
        assert full_big["source_rows"] == full_big["examples"] == big_records
        assert full_small["source_rows"] == full_small["examples"] == small_records
        assert abs(full_big["peak_rss_mb"] - full_small["peak_rss_mb"]) < 64, (full_big, full_small)
        assert full_big["peak_rss_mb"] < 1024  # a 3 GB file is far from being held
    finally:
        big.unlink(missing_ok=True)
        small.unlink(missing_ok=True)
