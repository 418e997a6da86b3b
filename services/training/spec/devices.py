"""What the training machine's accelerators can do, as the spec check needs it: is there CUDA,
does it have bfloat16, how many GPUs.

torch answers, in the process that has it loaded already (a runner); anywhere else (the training
service, which never loads torch: ``tests/training/test_service_process.py``) a child process of
the same interpreter asks it once, and the answer is kept for the life of the process. Knows
nothing about specs.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import dataclass

from services.common.errors import FailedPrecondition

PROBE_TIMEOUT_S = 300.0  # importing torch on a loaded machine takes a while
_ASK = (
    "import json, torch\n"
    "cuda = torch.cuda.is_available()\n"
    "bf16 = bool(cuda and torch.cuda.is_bf16_supported())\n"
    "print(json.dumps([cuda, bf16, torch.cuda.device_count() if cuda else 0]))\n"
)


@dataclass(frozen=True)
class Devices:
    cuda: bool
    bf16: bool  # the GPU computes in bfloat16 (False without CUDA)
    gpus: int


def _from_torch(torch) -> Devices:
    if not torch.cuda.is_available():
        return Devices(False, False, 0)
    return Devices(True, bool(torch.cuda.is_bf16_supported()), torch.cuda.device_count())


@functools.cache
def probe() -> Devices:
    """This machine's devices, as the runners' torch sees them (asked once per process)."""
    if "torch" in sys.modules:
        return _from_torch(sys.modules["torch"])
    try:
        done = subprocess.run(
            [sys.executable, "-c", _ASK],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"exit code {done.returncode}: {last}")
        cuda, bf16, gpus = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, RuntimeError, ValueError, IndexError, subprocess.TimeoutExpired) as exc:
        raise FailedPrecondition(
            f"cannot tell what this training machine's devices can do: asking torch in "
            f"{sys.executable} failed ({exc}); install the training extra there",
            reason="DEVICE_PROBE_FAILED",
        ) from None
    return Devices(bool(cuda), bool(bf16), int(gpus))
