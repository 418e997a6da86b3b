"""A job config file -> ``TrainingJobSpec``: LLaMA-Factory's flat YAML, or the spec itself as YAML.

The flat form is what LLaMA-Factory's ``llamafactory-cli train`` reads (``stage``,
``model_name_or_path``, ``finetuning_type``, ``lora_rank``, ``dataset``, ``template``,
``cutoff_len``, ``learning_rate``, ...). Each supported key maps onto one place of the spec
(``FLAT_KEYS``); a handful of keys that change nothing here (worker counts, cache flags) are
accepted with a note (``NO_EFFECT_KEYS``); keys of features llamafleet does not have are refused
with the reason (``REFUSED_KEYS``; LLaMA-Factory's own "off" value for them is accepted); any other
key is an error naming the nearest supported one. ``dataset`` names with ``dataset_dir``, ``template`` and ``cutoff_len``
become an inline ``data.v1.DatasetSpec`` of registry sources. Relative paths are made absolute
against the current directory, as LLaMA-Factory resolves them. ``rope_scaling`` scales RoPE for
``cutoff_len`` tokens (2048 when unset), the ``model_max_length`` LLaMA-Factory derives from it.

The native form is the ``TrainingJobSpec`` message written as YAML (``base_model``,
``hyperparameters: {learning_rate: ...}``, enum names such as ``STAGE_SFT``), read with
``json_format.ParseDict``. A file is native when it has ``base_model`` or nested mappings.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from google.protobuf import json_format

from llamafleet.data.v1 import data_pb2
from llamafleet.lf_keys import (
    EXAMPLE_KINDS,
    FLAT_KEYS,
    NO_EFFECT_KEYS,
    REFUSED_KEYS,
    ConfigFileError,
    hint,
    refused,
)
from llamafleet.training.v1 import training_pb2 as pb

__all__ = ["ConfigFileError", "FLAT_KEYS", "load_job_spec", "from_flat", "from_native"]

DEFAULT_CUTOFF_LEN = 2048  # LLaMA-Factory's cutoff_len default, and the data service's


def load_job_spec(path: str | Path) -> tuple[pb.TrainingJobSpec, list[str]]:
    """The spec in ``path`` and notes about keys that were accepted but change nothing."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigFileError(
            f"{path} is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigFileError(f"{path}: expected a mapping of key: value")
    try:
        if is_native(data):
            return from_native(data), []
        return from_flat(data)
    except ConfigFileError as exc:
        raise ConfigFileError(f"{path}: {exc}") from None


def is_native(data: dict) -> bool:
    """A TrainingJobSpec as YAML: it names base_model, or nests mappings without being a
    LLaMA-Factory file (which may nest a few values, e.g. kt_config, but names its model)."""
    if "base_model" in data or "baseModel" in data:
        return True
    lf = "model_name_or_path" in data or "stage" in data
    return not lf and any(isinstance(v, dict) for v in data.values())


def from_native(data: dict) -> pb.TrainingJobSpec:
    fields = pb.TrainingJobSpec.DESCRIPTOR.fields
    names = [f.name for f in fields] + [f.json_name for f in fields]
    for key in data:
        if key not in names:
            raise ConfigFileError(f"unknown TrainingJobSpec field {key!r}{hint(str(key), names)}")
    try:
        return json_format.ParseDict(data, pb.TrainingJobSpec())
    except json_format.ParseError as exc:
        raise ConfigFileError(f"not a valid TrainingJobSpec: {exc}") from None


def from_flat(data: dict) -> tuple[pb.TrainingJobSpec, list[str]]:
    spec, ctx, notes = pb.TrainingJobSpec(stage=pb.STAGE_SFT), {}, []
    for key, value in data.items():
        key = str(key)
        if key in NO_EFFECT_KEYS:
            notes.append(f"{key}: accepted, no effect in llamafleet ({NO_EFFECT_KEYS[key]})")
            continue
        if key in REFUSED_KEYS:
            why = refused(key, value)
            if why is not None:
                raise ConfigFileError(f"{key}: refused: {why}")
            notes.append(f"{key}: {value!r} is LLaMA-Factory's 'off'; accepted")
            continue
        if key not in FLAT_KEYS:
            raise ConfigFileError(
                f"unsupported key {key!r}{hint(key, list(FLAT_KEYS))}; "
                "see `llamafleet train --help` for the supported LLaMA-Factory keys"
            )
        FLAT_KEYS[key](spec, ctx, key, value)
    if data.get("bf16") is True and data.get("fp16") is True:
        raise ConfigFileError("bf16 and fp16: set at most one")
    if "dataset" not in ctx:
        raise ConfigFileError("dataset: required (names of dataset_info.json entries)")
    if ctx.get("use_llama_pro"):  # a base expanded by LLaMA-Factory's scripts/llama_pro.py
        spec.finetuning.llama_pro.num_expand = spec.finetuning.freeze.trainable_layers or 2
        spec.finetuning.llama_pro.expanded = True
    if spec.rope_scaling:  # LLaMA-Factory scales RoPE for model_max_length = cutoff_len
        spec.max_context_length = ctx.get("cutoff_len") or DEFAULT_CUTOFF_LEN
    spec.dataset.spec.CopyFrom(_dataset_spec(spec, ctx, ctx["dataset"]))
    if "eval_dataset" in ctx:
        spec.eval_dataset.spec.CopyFrom(_dataset_spec(spec, ctx, ctx["eval_dataset"]))
        spec.eval_dataset.spec.eval_fraction = 0
    return spec, notes


def _dataset_spec(spec: pb.TrainingJobSpec, ctx: dict, names: list[str]) -> data_pb2.DatasetSpec:
    out = data_pb2.DatasetSpec(kind=EXAMPLE_KINDS[spec.stage])
    for name in names:
        source = out.sources.add(registry=data_pb2.RegistryEntry(name=name))
        source.registry.dataset_dir = ctx.get("dataset_dir", "")
        if "max_samples" in ctx:
            source.max_samples = ctx["max_samples"]
    tok = out.tokenization
    tok.template.name = ctx.get("template", "")
    if "default_system" in ctx:
        tok.template.default_system = ctx["default_system"]
    tok.template.tool_format = ctx.get("tool_format", "")
    tok.cutoff_len = ctx.get("cutoff_len", 0)
    tok.train_on_prompt = ctx.get("train_on_prompt", False)
    tok.mask_history = ctx.get("mask_history", False)
    if "enable_thinking" in ctx:
        tok.template.enable_thinking = ctx["enable_thinking"]
    tok.template.preserve_thinking = ctx.get("preserve_thinking", False)
    out.packing = ctx.get("packing", False)
    out.streaming = ctx.get("streaming", False)
    out.seed = ctx.get("seed", 0)
    val = ctx.get("val_size", 0.0)
    if not 0 <= val < 1:
        raise ConfigFileError(f"val_size: give the eval split as a fraction in [0, 1), got {val}")
    out.eval_fraction = val
    return out
