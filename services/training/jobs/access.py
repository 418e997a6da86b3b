"""What a training request may make the service touch, and how large a job spec may be.

Paths (DESIGN.md section 6, trust model; the mechanics are ``services.common.roots``):
- ``spec.base_model`` is read only under ``model_roots`` (every entry of the folder checked, so
  a symlink inside cannot lead out);
- ``spec.eval_benchmark.task_dir`` is read under ``model_roots`` too (as ``RunBenchmark``'s), and
  ``spec.eval_benchmark.save_dir`` written under ``export_roots``;
- ``spec.output_dir`` and ``ExportModel.output_dir`` are written only under ``export_roots`` (a
  relative path goes under the first of them), never inside the jobs folder (the service's own:
  a job's output there could land in another job's folder);
- ``denied_paths`` are refused under any root.

Bounds (``services.common.limits``), before anything is created: the whole spec is walked through
its descriptor (unknown enum numbers anywhere, NaN and infinities, over-long strings and lists),
its serialized size is at most ``max_spec_kb`` (so a page of jobs stays far below the message
limit), ``distributed.world_size`` is at most ``max_world_size``, counts that must not be
negative are not, whatever the stage; ``trust_remote_code`` needs the owner's
``allow_remote_code``.

It knows nothing about recipes: ``spec.validation.validate`` checks what the values mean.
"""

from __future__ import annotations

import functools
from pathlib import Path

from llamafleet.training.v1 import training_pb2 as pb

from services.common.errors import FieldViolation, InvalidArgument, PermissionDenied
from services.common.limits import Limits, message_violations
from services.common.roots import Roots, parse_paths
from services.training.config import TrainingConfig


@functools.lru_cache(maxsize=8)
def _roots(config: TrainingConfig) -> tuple[Roots, Roots]:
    limits = Limits.of(config)
    models = Roots.parse("model_roots", config.model_roots, config.denied_paths, limits)
    writes = Roots(
        "export_roots",
        parse_paths(config.export_roots),
        [*parse_paths(config.denied_paths), config.jobs_dir],
        limits,
    )
    return models, writes


def model_roots(config: TrainingConfig) -> Roots:
    return _roots(config)[0]


def write_roots(config: TrainingConfig) -> Roots:
    """``export_roots``, the jobs folder excepted."""
    return _roots(config)[1]


def string_bounds(limits: Limits) -> dict[str, int]:
    """Which string fields of a spec are ids or names (the rest are bounded like paths)."""
    ids = ("job_id", "dataset_id", "id", "item_id")
    names = ("reward_scorer", "name", "tool_format", "target_modules", "trainable_modules")
    names += ("extra_modules", "additional_target_modules", "report_to", "optim")
    return {**dict.fromkeys(ids, limits.id_chars), **dict.fromkeys(names, limits.name_chars)}


def check_bounds(spec: pb.TrainingJobSpec, config: TrainingConfig) -> None:
    """INVALID_ARGUMENT listing every bound the spec breaks (see the module docstring)."""
    limits = Limits.of(config)
    bad = message_violations(spec, "spec", limits, string_bounds(limits))
    size = spec.ByteSize()
    if size > config.max_spec_kb * 1024:
        bad.append(
            FieldViolation("spec", f"{size} bytes; at most {config.max_spec_kb} KiB (max_spec_kb)")
        )
    world = spec.distributed.world_size
    if not 0 <= world <= config.max_world_size:
        bad.append(
            FieldViolation(
                "spec.distributed.world_size",
                f"must be in 0..{config.max_world_size} (the service's max_world_size; 0 = 1), "
                f"got {world}",
            )
        )
    counts = {
        "ppo.rollout_batch_size": spec.ppo.rollout_batch_size,
        "ppo.ppo_epochs": spec.ppo.ppo_epochs,
        "hyperparameters.gradient_accumulation_steps": (
            spec.hyperparameters.gradient_accumulation_steps
        ),
        "finetuning.lora.rank": spec.finetuning.lora.rank,
        "finetuning.freeze.trainable_layers": spec.finetuning.freeze.trainable_layers,
    }
    for path, value in counts.items():
        if value < 0:
            bad.append(FieldViolation(f"spec.{path}", f"must be >= 0, got {value}"))
    if bad:
        raise InvalidArgument(
            "the training job spec is invalid", reason="INVALID_JOB_SPEC", violations=bad
        )
    if spec.trust_remote_code and not config.allow_remote_code:
        raise PermissionDenied(
            "spec.trust_remote_code: this training service does not run code from model folders "
            "(its owner has not set allow_remote_code)",
            reason="REMOTE_CODE_NOT_ALLOWED",
            violations=[FieldViolation("spec.trust_remote_code", "not allowed here")],
        )


def resolve_paths(
    spec: pb.TrainingJobSpec, config: TrainingConfig
) -> tuple[pb.TrainingJobSpec, list[FieldViolation]]:
    """A copy of ``spec`` whose ``base_model`` and ``output_dir`` are the real paths they name
    under the roots. A path outside the roots is PERMISSION_DENIED at once; one that is merely
    not there (or not a folder) is left as given and returned as a violation, so that the
    caller reports it together with the spec's other problems."""
    out = pb.TrainingJobSpec()
    out.CopyFrom(spec)
    pending: list[FieldViolation] = []
    if spec.base_model:
        roots = model_roots(config)
        try:
            folder = roots.resolve(spec.base_model, "spec.base_model", "dir")
        except PermissionDenied:
            raise
        except InvalidArgument as err:
            pending += err.violations
        else:
            roots.check_folder(folder, "spec.base_model")
            out.base_model = str(folder)
    if spec.adapter_path:  # a PEFT folder the adapter starts from: read like a model folder
        roots = model_roots(config)
        try:
            folder = roots.resolve(spec.adapter_path, "spec.adapter_path", "dir")
        except PermissionDenied:
            raise
        except InvalidArgument as err:
            pending += err.violations
        else:
            roots.check_folder(folder, "spec.adapter_path")
            out.adapter_path = str(folder)
    bench = spec.eval_benchmark
    if bench.task_dir:  # the benchmark scored during training: read like RunBenchmark's
        try:
            folder = model_roots(config).resolve(
                bench.task_dir, "spec.eval_benchmark.task_dir", "dir"
            )
        except PermissionDenied:
            raise
        except InvalidArgument as err:
            pending += err.violations
        else:
            out.eval_benchmark.task_dir = str(folder)
    if bench.save_dir:
        try:
            target = write_roots(config).resolve_for_write(
                bench.save_dir, "spec.eval_benchmark.save_dir"
            )
        except PermissionDenied:
            raise
        except InvalidArgument as err:
            pending += err.violations
        else:
            out.eval_benchmark.save_dir = str(target)
    if spec.output_dir:
        try:
            target = write_roots(config).resolve_for_write(spec.output_dir, "spec.output_dir")
        except PermissionDenied:
            raise
        except InvalidArgument as err:
            pending += err.violations
        else:
            out.output_dir = str(target)
    return out, pending


def export_dir(raw: str, config: TrainingConfig) -> Path:
    """Where ExportModel may write ``raw`` (under the write roots)."""
    return write_roots(config).resolve_for_write(raw, "output_dir")
