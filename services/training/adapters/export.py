"""ExportModel: a job's model written out as a Hugging Face folder, or its adapter alone.

- merged (LoRA): the base model is rebuilt as the job trained on it (``spec.base_model`` with
  its RoPE scaling in the config and its LLaMA-Pro blocks inserted: the adapter only reproduces
  the trained model over that base), the adapter version applied with peft's
  ``PeftModel.from_pretrained`` and folded in with ``merge_and_unload``, and the result saved
  with ``save_pretrained`` (safetensors) beside the base model's tokenizer; a value head
  (``value_head.safetensors``, reward models and PPO) is copied along;
- merged (FULL/FREEZE): the job's trained model folder (``<job_dir>/model/``, else the latest
  checkpoint that is a Hugging Face folder) is copied, with the base tokenizer when it lacks one;
- adapter only (LoRA): the adapter version's folder is copied.

Everything is written beside ``output_dir`` and renamed into place, so a failed export leaves
nothing behind. A merge runs in a child process (``model.merge``, named by module: torch,
transformers and peft load there, never in the service), so a large model never grows the
service. The servicer resolves which folders to export.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import secrets
import shutil
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from services.common.errors import FailedPrecondition, invalid

logger = logging.getLogger(__name__)

MERGE_MODULE = "services.training.model.merge"  # runs in the export's child process
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def check_output_dir(output_dir: str) -> Path:
    """The absolute output folder; it must not exist, or be an empty folder."""
    if not output_dir:
        raise invalid("output_dir", "required: a folder on the training machine")
    out = Path(output_dir).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FailedPrecondition(
            f"output_dir {out} exists and is not an empty folder; choose another",
            reason="OUTPUT_DIR_NOT_EMPTY",
        )
    return out


def export_adapter(adapter_dir: Path, out: Path) -> list[str]:
    """Copy a PEFT adapter folder."""
    return _publish(out, lambda staging: _copy_tree(adapter_dir, staging))


def export_merged_lora(spec_bytes: bytes, adapter_dir: Path, out: Path) -> list[str]:
    """Merge the adapter into the job's base (``spec_bytes``: its serialized
    ``TrainingJobSpec``) and save a full model folder plus the tokenizer.

    The merge runs in a child process: loading a large model must not grow (or, out of memory,
    kill) the service."""

    def write(staging: Path) -> None:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            args = (spec_bytes, str(adapter_dir), str(staging))
            job = pool.submit(_in_child, MERGE_MODULE, "merge_lora", *args)
            try:
                job.result()
            except BrokenProcessPool:
                raise FailedPrecondition(
                    "the export process died before finishing (killed by the system, e.g. out "
                    "of memory); free memory on the training machine and export again",
                    reason="EXPORT_PROCESS_DIED",
                ) from None

    return _publish(out, write)


def _in_child(module: str, function: str, *args):
    """``module.function(*args)``, imported in the child process that runs it."""
    return getattr(importlib.import_module(module), function)(*args)


def export_model_folder(model_dir: Path, base_model: str, out: Path) -> list[str]:
    """Copy a trained full model folder, adding the base tokenizer when it has none."""

    def write(staging: Path) -> None:
        _copy_tree(model_dir, staging)
        if not (staging / "tokenizer_config.json").exists():
            for name in TOKENIZER_FILES:
                if (Path(base_model) / name).is_file():
                    shutil.copy2(Path(base_model) / name, staging / name)

    return _publish(out, write)


def _copy_tree(src: Path, dst: Path) -> None:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_dir():
            (dst / rel).mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dst / rel)


def _publish(out: Path, write) -> list[str]:
    """Run ``write(staging)`` in a sibling folder, then rename it to ``out``; the file list."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.export-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        write(staging)
        if out.exists():
            out.rmdir()  # empty (checked by check_output_dir); rename needs it gone or empty
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    logger.info("exported %d files to %s", len(files), out)
    return files


def export_job(view, version: int, mode: int, output_dir: str) -> tuple[Path, int, list[str]]:
    """Export one job (a ``jobs.store.JobView``): (folder written, version exported, files)."""
    from llamafleet.training.v1 import training_pb2 as pb

    if mode not in (pb.EXPORT_MODE_MERGED, pb.EXPORT_MODE_ADAPTER_ONLY):
        raise invalid("mode", "required: EXPORT_MODE_MERGED or EXPORT_MODE_ADAPTER_ONLY")
    spec = view.spec
    if spec.finetuning.type != pb.FINETUNING_TYPE_LORA:
        if mode == pb.EXPORT_MODE_ADAPTER_ONLY:
            raise FailedPrecondition(
                f"job {view.id!r} trains all or some weights, not an adapter; export it MERGED",
                reason="NO_ADAPTER",
            )
        if version != 0:
            raise invalid("version", "FULL/FREEZE jobs have no adapter versions; use 0 (latest)")
        model_dir = _trained_model_dir(view)
        out = check_output_dir(output_dir)
        return out, 0, export_model_folder(model_dir, spec.base_model, out)
    version, adapter_dir, _ = view.resolve_adapter(version)
    out = check_output_dir(output_dir)
    if mode == pb.EXPORT_MODE_ADAPTER_ONLY:
        return out, version, export_adapter(adapter_dir, out)
    files = export_merged_lora(spec.SerializeToString(), adapter_dir, out)
    return out, version, files


def _trained_model_dir(view) -> Path:
    candidates = [view.dir / "model"] + [Path(c.path) for c in reversed(view.checkpoints())]
    for folder in candidates:
        if (folder / "config.json").is_file():
            return folder
    raise FailedPrecondition(
        f"job {view.id!r} has no trained model folder yet (no {view.dir / 'model'} and no "
        "checkpoint holding a config.json)",
        reason="NO_MODEL_YET",
    )
