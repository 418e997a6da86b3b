"""Checkpoints: ``<job_dir>/checkpoints/step-<N>/``, enough to resume exactly.

A checkpoint holds:
- ``trainable.safetensors``: the trained weights (all of them for full fine-tuning, the adapters
  and ``additional_target_modules`` for LoRA; the frozen base is the base model folder),
- ``optimizer.pt`` (or DeepSpeed's ``deepspeed/`` shards): optimizer, scheduler and loss scaler,
- ``rng-rank<R>.pt``: Python, NumPy and torch (CPU and CUDA) random states of every rank,
- ``state.json``: step, epoch, the data cursor of the last micro-batch trained on, tokens seen,
  the adapter version published with it, and the loss history for the loss curve.

It is written to ``.step-<N>.tmp`` and renamed, so a folder named ``step-<N>`` is always complete;
a job killed mid-save resumes from the previous one. Only rank 0 writes files (DeepSpeed's own
shards are written by every rank, inside the temporary folder, before the rename).
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_root(job_dir: str | Path) -> Path:
    return Path(job_dir) / "checkpoints"


def list_checkpoints(job_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, folder), oldest first."""
    root = checkpoint_root(job_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_DIR.match(path.name)
        if match and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(job_dir: str | Path) -> Path | None:
    found = list_checkpoints(job_dir)
    return found[-1][1] if found else None


def resume_point(job_dir: str | Path, settings) -> Path | None:
    """The checkpoint a job resumes from: the one it names (``resume_from_checkpoint``), else
    its latest when it resumes, else None."""
    if settings.resume_from:
        folder = Path(settings.resume_from)
        if not (folder / "state.json").is_file():
            raise ValueError(f"resume_from_checkpoint: {folder} holds no checkpoint (state.json)")
        return folder
    return latest_checkpoint(job_dir) if settings.resume else None


def staging_dir(job_dir: str | Path, step: int) -> Path:
    """The temporary folder a checkpoint is written into (create it on every rank)."""
    return checkpoint_root(job_dir) / f".step-{step}.tmp"


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_weights(folder: Path, weights: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    save_file(tensors, folder / "trainable.safetensors")


def save_rng(folder: Path, rank: int) -> None:
    torch.save(rng_state(), folder / f"rng-rank{rank}.pt")


def finish(job_dir: str | Path, step: int, state: dict) -> Path:
    """Write ``state.json`` into the staging folder and rename it to ``step-<N>`` (rank 0)."""
    staging = staging_dir(job_dir, step)
    (staging / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    final = checkpoint_root(job_dir) / f"step-{step}"
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    logger.info("checkpoint saved: %s", final)
    return final


def prune(job_dir: str | Path, keep: int | None) -> list[Path]:
    """Delete the oldest checkpoints beyond ``keep``; returns what was deleted."""
    if keep is None:
        return []
    found = list_checkpoints(job_dir)
    doomed = [path for _, path in found[: max(0, len(found) - keep)]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def load_state(folder: Path) -> dict:
    return json.loads((folder / "state.json").read_text())


def load_weights(folder: Path, model: torch.nn.Module) -> None:
    """Load the trained weights into ``model`` (strict about every saved key)."""
    weights = load_file(folder / "trainable.safetensors")
    missing, unexpected = [], []
    own = model.state_dict()
    for key in weights:
        if key not in own:
            unexpected.append(key)
    if unexpected:
        raise ValueError(f"checkpoint {folder} has weights the model lacks: {unexpected[:3]}")
    result = model.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if k in weights]
    if missing:
        raise ValueError(f"checkpoint {folder}: weights not loaded: {missing[:3]}")


def load_rng(folder: Path, rank: int) -> None:
    path = folder / f"rng-rank{rank}.pt"
    if path.exists():
        set_rng_state(torch.load(path, map_location="cpu", weights_only=False))
