"""What a data request may make the data service read: its configured roots applied to a spec.

Every path a request names goes through ``services.common.roots`` here before anything is
opened: source files and folders (each file of a folder checked too, so a symlink inside cannot
lead out), registry folders (``dataset_info.json``) and the files their entries name, and
tokenizer folders (each entry of the folder checked). Dataset files and registries live under
``dataset_roots``, tokenizers under ``model_roots``; ``denied_paths`` are never read even when a
root holds them. The sizes of the spec itself (how many sources and paths, how long a name) are
bounded here too, before any file is touched.

It knows nothing about record formats or tokenizers beyond "a tokenizer is a folder".
"""

from __future__ import annotations

import functools

from llamafleet.data.v1 import data_pb2 as d

from services.common.errors import invalid
from services.common.limits import Limits, check_items, check_name, check_text
from services.common.roots import Roots
from services.data.config import DataConfig
from services.data.sources import DATA_SUFFIXES


@functools.lru_cache(maxsize=8)
def _roots(config: DataConfig) -> tuple[Roots, Roots]:
    limits = Limits.of(config)
    datasets = Roots.parse("dataset_roots", config.dataset_roots, config.denied_paths, limits)
    models = Roots.parse("model_roots", config.model_roots, config.denied_paths, limits)
    return datasets, models


def dataset_roots(config: DataConfig) -> Roots:
    return _roots(config)[0]


def model_roots(config: DataConfig) -> Roots:
    return _roots(config)[1]


def source_files(paths: list[str], field_path: str, config: DataConfig) -> tuple[str, ...]:
    """The real paths of the data files ``paths`` name (a folder: its data files, sorted by name,
    hidden ones left out), every one of them inside ``dataset_roots``."""
    roots = dataset_roots(config)
    check_items(paths, field_path, Limits.of(config))
    files: list[str] = []
    for i, raw in enumerate(paths):
        where = f"{field_path}[{i}]"
        real = roots.resolve(raw, where)
        if real.is_dir():
            found = roots.files_in(real, where, DATA_SUFFIXES)
            if not found:
                raise invalid(where, f"folder {raw[:200]} holds no data files", "NO_FILES")
            files += [str(p) for p in found]
        else:
            files.append(str(real))
    return tuple(files)


def registry_dir(raw: str, field_path: str, config: DataConfig) -> str:
    """The folder of a request's ``dataset_info.json``, inside ``dataset_roots``."""
    return str(dataset_roots(config).resolve(raw, field_path, "dir"))


def tokenizer_dir(raw: str, field_path: str, config: DataConfig) -> str:
    """The real path of a tokenizer folder inside ``model_roots``, every entry of it too."""
    roots = model_roots(config)
    real = roots.resolve(raw, field_path, "dir")
    roots.check_folder(real, field_path)
    return str(real)


def check_spec_sizes(spec: d.DatasetSpec, config: DataConfig) -> None:
    """The bounds of a spec's lists and names (INVALID_ARGUMENT naming the field)."""
    limits = Limits.of(config)
    check_items(spec.sources, "spec.sources", limits)
    for i, source in enumerate(spec.sources):
        field = f"spec.sources[{i}]"
        if source.HasField("registry"):
            check_name(source.registry.name, f"{field}.registry.name", limits)
        for key, value in source.format.columns.ListFields():
            check_name(value, f"{field}.format.columns.{key.name}", limits)
        for key, value in source.format.tags.ListFields():
            check_name(value, f"{field}.format.tags.{key.name}", limits)
    check_tokenization_sizes(spec.tokenization, "spec.tokenization", config)


def check_tokenization_sizes(tok: d.TokenizationOptions, field: str, config: DataConfig) -> None:
    limits = Limits.of(config)
    check_name(tok.template.name, f"{field}.template.name", limits)
    check_name(tok.template.tool_format, f"{field}.template.tool_format", limits)
    check_text(
        tok.template.default_system,
        f"{field}.template.default_system",
        config.max_record_bytes,
        "max_record_bytes",
    )
