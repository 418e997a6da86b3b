"""Publishing a fully fine-tuned policy version: its trained tensors as safetensors + a manifest.

``publish_full_weights(model, dest, method)`` writes ``dest`` (``services.common.full_weights``
names the layout) through a temporary sibling and a rename, so a reader (the training service's
``FetchAdapter``) never sees half a version. What travels is what can differ from the base every
receiver holds: FULL: every parameter; FREEZE: the trainable ones (the frozen ones are the base's,
bit for bit). Tied weights (``lm_head`` = ``embed_tokens``) travel once, as ``named_parameters``
lists them. Tensors keep the trainer's dtype: a receiver that serves in bfloat16 casts on load.

The sha256 written into the manifest is of the weights file; the training service hashes the
whole archive again for the stream (cached per folder), and receivers verify that one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from services.common.full_weights import MANIFEST_FILE, METHODS, WEIGHTS_FILE, Manifest
from services.common.weight_files import base_shape

_DTYPES = {
    torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
}  # fmt: skip


def policy_tensors(model: torch.nn.Module, method: str) -> dict[str, torch.Tensor]:
    """The tensors a version of ``model`` ships: all parameters (``full``) or the trainable ones
    (``freeze``), detached, on the CPU, contiguous."""
    if method not in METHODS:
        raise ValueError(f"full-weights versions are for methods {METHODS}, not {method!r}")
    out = {}
    for name, param in model.named_parameters():  # tied weights once
        if method == "full" or param.requires_grad:
            out[name] = param.detach().to("cpu", copy=True).contiguous()
    if not out:
        raise ValueError(f"method {method!r}: the model has no trainable parameter to publish")
    return out


def publish_full_weights(model: torch.nn.Module, dest: str | Path, method: str) -> int:
    """Write the version folder ``dest`` atomically; returns its size in bytes."""
    dest = Path(dest)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = policy_tensors(model, method)
    weights = tmp / WEIGHTS_FILE
    save_file(tensors, str(weights), metadata={"format": "pt"})
    digest = hashlib.sha256()
    with weights.open("rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    manifest = Manifest(
        method=method,
        complete=method == "full",
        tensors={
            n: (_DTYPES.get(t.dtype, str(t.dtype)), tuple(t.shape)) for n, t in tensors.items()
        },
        sha256=digest.hexdigest(),
        size_bytes=weights.stat().st_size,
        base_shape=base_shape(model.config.to_dict()),
    )
    (tmp / MANIFEST_FILE).write_text(manifest.to_json())
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return manifest.size_bytes + (dest / MANIFEST_FILE).stat().st_size
