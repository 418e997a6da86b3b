"""The memory allocator of a job's training processes: jemalloc, keeping freed pages, when present.

A training step allocates and frees gigabytes of activation-sized tensors whose sizes change
with every micro-batch (packed rows of different lengths). glibc's malloc serves them from a heap
that fragments as the sizes change (the SFT benchmark's peak RSS crept ~400 MiB above its live
tensors over the first steps), or, past its mmap threshold, from fresh pages that the kernel
faults in and zeroes on every allocation (~25% more CPU time when every tensor went that way).
jemalloc with page purging switched off (``dirty_decay_ms:-1,muzzy_decay_ms:-1``) reuses freed
pages across steps with little fragmentation: on the SFT benchmark's first 8 steps, peak RSS
1,406 MiB against 1,908 MiB with glibc, and fewer page faults (issue 4, BENCHMARKS.md "## SFT
training"). PyTorch's own CPU launcher (``torch.backends.xeon.run_cpu``) preloads jemalloc the
same way; a process keeps its peak for its lifetime either way (it is what RSS peaks at).

``allocator_env()`` returns the variables to add to a runner's environment: ``LD_PRELOAD`` of the
machine's ``libjemalloc`` and its ``MALLOC_CONF``, or nothing when the library is not installed
(``apt-get install libjemalloc2``; glibc's malloc is used then), when ``LD_PRELOAD`` already
names an allocator, or when ``LLAMAFLEET_RUNNER_ALLOCATOR=glibc``. A ``MALLOC_CONF`` set by the
operator is kept. glibc's ``MALLOC_*`` tunables were measured and not used: any of them switches
off glibc's dynamic mmap threshold, and every activation then costs page faults.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
from collections.abc import Mapping

logger = logging.getLogger(__name__)

CHOICE_ENV = "LLAMAFLEET_RUNNER_ALLOCATOR"  # "jemalloc" (default, when installed) | "glibc"
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"  # never return freed pages to the kernel
KNOWN_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def find_jemalloc() -> str | None:
    """The jemalloc shared library's name as the dynamic loader finds it, or None."""
    return ctypes.util.find_library("jemalloc")


def allocator_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables that make a training process use jemalloc; {} where it should not or cannot."""
    environ = os.environ if environ is None else environ
    choice = environ.get(CHOICE_ENV, "jemalloc")
    if choice not in ("jemalloc", "glibc"):
        logger.warning(
            "%s=%r is not 'jemalloc' or 'glibc': using glibc's malloc", CHOICE_ENV, choice
        )
        return {}
    preload = environ.get("LD_PRELOAD", "")
    if choice == "glibc" or any(name in preload for name in KNOWN_ALLOCATORS):
        return {}
    library = find_jemalloc()
    if library is None:
        logger.info("libjemalloc not found: training processes use glibc's malloc")
        return {}
    return {
        "LD_PRELOAD": " ".join(filter(None, [library, preload])),
        "MALLOC_CONF": environ.get("MALLOC_CONF") or JEMALLOC_CONF,
    }
