"""The folder layout of a full-weights policy version (``ADAPTER_FORMAT_FULL_SAFETENSORS``).

A GRPO job that fine-tunes all weights (``FINETUNING_TYPE_FULL``) or a subset of them
(``_FREEZE``) publishes each policy version as ``adapters/v<N>/`` holding:

- ``policy.safetensors``: the trained tensors, named as in the base model's ``named_parameters``
  (tied weights once). FULL: every parameter. FREEZE: the trainable ones only; the others are the
  base's, which every receiver already holds, so they never travel.
- ``full_weights.json``: the manifest: ``method``, ``complete`` (every parameter, or a subset),
  each tensor's dtype and shape, the weights file's sha256 and size, and the shape of the base
  it was trained on (``weight_files.base_shape``).

The training service streams the folder with ``FetchAdapter`` as a deterministic tar, like a PEFT
adapter (the archive's sha256 is verified by the receiver); the manifest lets a receiver check
what it loads against its own base model before touching it. Pure Python (no torch): the trainer
writes the tensors and the rollout engines read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import FailedPrecondition

MANIFEST_FILE = "full_weights.json"
WEIGHTS_FILE = "policy.safetensors"
FORMAT = "llamafleet-full-weights/1"
METHODS = ("full", "freeze")


@dataclass(frozen=True)
class Manifest:
    method: str  # "full" or "freeze"
    complete: bool  # every parameter of the model (FULL) or the trainable subset (FREEZE)
    tensors: dict[str, tuple[str, tuple[int, ...]]]  # name -> (safetensors dtype, shape)
    sha256: str  # of policy.safetensors
    size_bytes: int
    base_shape: dict

    def to_json(self) -> str:
        body = {
            "format": FORMAT,
            "method": self.method,
            "complete": self.complete,
            "weights_file": WEIGHTS_FILE,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "base_shape": self.base_shape,
            "tensors": {n: {"dtype": d, "shape": list(s)} for n, (d, s) in self.tensors.items()},
        }
        return json.dumps(body, indent=1, sort_keys=True) + "\n"


def is_full_weights(folder: str | Path) -> bool:
    """Whether ``folder`` is a full-weights version (else a PEFT adapter folder)."""
    return (Path(folder) / MANIFEST_FILE).is_file()


def read_manifest(folder: str | Path, what: str) -> Manifest:
    """The manifest of the full-weights version in ``folder``; FAILED_PRECONDITION when it is
    not one, is malformed, or its weights file is missing or of another size."""
    folder = Path(folder)
    try:
        body = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(
            f"{what}: {folder / MANIFEST_FILE} is missing or not JSON ({exc})",
            reason="FULL_WEIGHTS_MANIFEST",
        ) from None
    if body.get("format") != FORMAT or body.get("method") not in METHODS:
        raise FailedPrecondition(
            f"{what}: {folder / MANIFEST_FILE} has format {body.get('format')!r} and method "
            f"{body.get('method')!r}; this service reads {FORMAT!r} with method full or freeze",
            reason="FULL_WEIGHTS_MANIFEST",
        )
    weights = folder / WEIGHTS_FILE
    size = weights.stat().st_size if weights.is_file() else -1
    if size != body.get("size_bytes"):
        raise FailedPrecondition(
            f"{what}: {weights} is {'missing' if size < 0 else f'{size} bytes'}, the manifest "
            f"says {body.get('size_bytes')} bytes",
            reason="FULL_WEIGHTS_MANIFEST",
        )
    tensors = {
        name: (spec["dtype"], tuple(int(d) for d in spec["shape"]))
        for name, spec in body.get("tensors", {}).items()
    }
    return Manifest(
        body["method"], bool(body["complete"]), tensors, body["sha256"], size,
        body.get("base_shape", {}),
    )  # fmt: skip
