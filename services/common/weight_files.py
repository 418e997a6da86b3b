"""Which weight files the services load: safetensors only, never a pickle.

A pickle (``pytorch_model.bin``, ``adapter_model.bin``, ``*.pt``) can run arbitrary code when it
is loaded, and ``torch.load(weights_only=True)`` is still an unpickler. Base models come from
configuration and adapters arrive over the network, so every service checks a folder here before
handing it to transformers or PEFT, and refuses one whose only weights are a pickle.

It looks at file names only (no torch): the loaders are also told ``use_safetensors=True`` where
they accept it, so a folder holding both formats is read through safetensors.
"""

from __future__ import annotations

from pathlib import Path

from services.common.errors import FailedPrecondition

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def pickle_files(folder: Path) -> list[str]:
    """Names of the files in ``folder`` that would be unpickled by a fallback loader."""
    return sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)


def _refusal(what: str, folder: Path, wanted: str) -> FailedPrecondition:
    pickles = pickle_files(folder) if folder.is_dir() else []
    found = (
        f"; it holds {', '.join(pickles)}, a pickle, which is never loaded (it can run code)"
        if pickles
        else ""
    )
    return FailedPrecondition(
        f"{what} {folder} has no {wanted}{found}: only safetensors weights are loaded; save it "
        "with save_pretrained(..., safe_serialization=True)",
        reason="SAFETENSORS_REQUIRED",
        metadata={"folder": str(folder)},
    )


def require_safetensors_model(folder: Path, what: str) -> None:
    """FAILED_PRECONDITION unless ``folder`` (a model folder) has ``*.safetensors`` weights."""
    folder = Path(folder)
    if not any(folder.glob("*.safetensors")):
        raise _refusal(what, folder, "*.safetensors weights")


def require_safetensors_adapter(folder: Path, what: str) -> None:
    """FAILED_PRECONDITION unless ``folder`` (a PEFT adapter) has ``adapter_model.safetensors``."""
    folder = Path(folder)
    if not (folder / "adapter_model.safetensors").is_file():
        raise _refusal(what, folder, "adapter_model.safetensors")
