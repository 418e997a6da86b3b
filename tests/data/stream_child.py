"""Child process of the streaming memory test: streams a file, reports its own peak RSS (VmHWM).

``python stream_child.py FILE TOKENIZER MODE`` where MODE is ``read`` (the whole file through
reading, the shuffle buffer and record normalisation), ``batches:N`` (the full pipeline --
template, tokenize, pack, batch -- for the first N batches) or ``all`` (the full pipeline to the
end of the file). Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time

from services.data.batches import BatchPlan
from services.data.encode import EncodeOptions, Encoder
from services.data.formats import FormatSpec
from services.data.pipeline import (
    DataSpec,
    SourceSpec,
    Stats,
    iter_examples,
    iter_records,
    load_tokenizer,
)
from services.data.streaming import epoch_rng, shuffle_buffer, streaming_batches

SHUFFLE = 10_000


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ``ru_maxrss``: that survives fork + exec, so a child
    of a big parent (pytest holding a model) would report the parent's size."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    path, tokenizer_path, mode = sys.argv[1:4]
    options = EncodeOptions(template="qwen", cutoff_len=1024)
    spec = DataSpec(
        (SourceSpec((path,), FormatSpec("sharegpt")),), "sft", tokenizer_path, options,
        packing=True, streaming=True, seed=1,
    )  # fmt: skip
    started = time.perf_counter()
    stats = Stats()
    count = 0
    if mode == "read":
        records = ((0, r) for r in iter_records(spec.sources[0], spec.seed, lazy=True))
        for _ in iter_examples(spec, stats, shuffle_buffer(records, SHUFFLE, epoch_rng(1, 0))):
            count += 1
    else:
        n = int(mode.split(":")[1]) if mode != "all" else -1
        encoder = Encoder(load_tokenizer(tokenizer_path), options)
        plan = BatchPlan("x", "train", 0, 1, 1, True, "rows", 8)
        for index, _rows in streaming_batches(
            spec, encoder, plan, 0, 0, shuffle_size=SHUFFLE, encode_batch=512, pack_window=4096,
            stats=stats,
        ):  # fmt: skip
            count = index + 1
            if count == n:
                break
    print(
        json.dumps(
            {
                "peak_rss_mb": peak_rss_mb(),
                "count": count,
                "source_rows": stats.source_rows,
                "examples": stats.examples,
                "seconds": time.perf_counter() - started,
            }
        )
    )


if __name__ == "__main__":
    main()
