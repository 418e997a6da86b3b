"""Which weight files the services load: safetensors only, never a pickle.

A pickle (``pytorch_model.bin``, ``adapter_model.bin``, ``*.pt``) can run arbitrary code when it
is loaded, and ``torch.load(weights_only=True)`` is still an unpickler. Base models come from
configuration and adapters arrive over the network, so every service checks a folder here before
handing it to transformers or PEFT, and refuses one whose only weights are a pickle.

It looks at file names only (no torch): the loaders are also told ``use_safetensors=True`` where
they accept it, so a folder holding both formats is read through safetensors.

An adapter is also checked against the base it is about to be applied to: training writes
``llamafleet_base.json`` beside each adapter (the shape of the model it trained: layer count,
RoPE scaling), and a LoRA trained on LLaMA-Pro blocks or a RoPE-scaled base is refused over a
base without them, which would silently give another model. And an adapter whose training base
(``AdapterBlobInfo.base_model``, as training reports it on FetchAdapter) is another base model,
by name (``llamafleet.bases.base_name``, the name the cluster routes by), is refused too:
``require_trained_base``.
"""

from __future__ import annotations

import json
from pathlib import Path

from llamafleet.bases import base_name

from services.common.errors import FailedPrecondition

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
ADAPTER_BASE_FILE = "llamafleet_base.json"


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


def base_shape(config: dict) -> dict:
    """What an adapter depends on in its base's ``config.json`` (as a dict): the layer count and
    the RoPE scaling (type and factor; unscaled is ``("default", 1.0)``)."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    return {
        "num_hidden_layers": config.get("num_hidden_layers"),
        "rope_type": rope.get("rope_type") or rope.get("type") or "default",
        "rope_factor": float(rope.get("factor") or 1.0),
    }


def require_adapter_base(adapter: Path, base_model: Path | None, what: str) -> None:
    """FAILED_PRECONDITION if ``adapter`` was trained on a base shaped unlike ``base_model`` (its
    ``llamafleet_base.json`` against the base's ``config.json``). Adapters without the file
    (trained elsewhere) and services without a base folder are not checked."""
    marker = Path(adapter) / ADAPTER_BASE_FILE
    if base_model is None or not marker.is_file():
        return
    trained = json.loads(marker.read_text(encoding="utf-8"))
    try:
        served = base_shape(json.loads((Path(base_model) / "config.json").read_text()))
    except (OSError, ValueError):
        return  # the loader reports an unreadable base itself
    differs = [
        f"{key} {trained.get(key)!r} (this base: {served[key]!r})"
        for key in ("num_hidden_layers", "rope_type", "rope_factor")
        if trained.get(key) != served[key]
    ]
    if differs:
        raise FailedPrecondition(
            f"{what} was trained on a base shaped otherwise than {base_model}: "
            f"{', '.join(differs)} (LLaMA-Pro blocks or RoPE scaling); over this base it would "
            "compute another model. Export the job merged and serve that model instead",
            reason="ADAPTER_BASE_MISMATCH",
            metadata={"adapter": str(adapter)},
        )


def require_trained_base(trained_on: str, base_model: Path | None, what: str) -> None:
    """FAILED_PRECONDITION (reason ``ADAPTER_BASE_MISMATCH``) if ``trained_on``, the base model an
    adapter was trained on as training reported it, is another base than ``base_model``, the one
    it is about to be applied to: another base name (the folder's name, as the cluster routes
    tasks by it) and another folder. Not checked when either is unknown (an adapter read back
    from a cache index, a service without a base folder)."""
    if not trained_on or base_model is None:
        return
    served = Path(base_model)
    try:
        same = base_name(trained_on) == base_name(str(served))
    except ValueError:
        same = False
    if same or Path(trained_on).resolve() == served.resolve():
        return
    raise FailedPrecondition(
        f"{what} was trained on base model {trained_on!r}, but this service serves "
        f"{str(served)!r} (ADAPTER_BASE_MISMATCH): over another base it would compute another "
        "model. Send it to the workers of its own base (`llamafleet add-base` starts them)",
        reason="ADAPTER_BASE_MISMATCH",
        metadata={"trained_on": trained_on, "served": str(served)},
    )
