"""Settings of the data service: env prefix ``LLAMAFLEET_DATA_``."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ConfigError, ServerConfig


@dataclass(frozen=True)
class DataConfig(ServerConfig):
    """The data service's configuration (shared server fields in ``ServerConfig``)."""

    datasets_dir: str = ".llamafleet/datasets"  # prepared datasets (Arrow shards + metadata)
    registry_dir: str = "data"  # default directory of dataset_info.json (RegistryEntry)
    default_cutoff_len: int = 2048  # TokenizationOptions.cutoff_len = 0 means this
    shard_rows: int = 50_000  # rows per Arrow shard file
    shuffle_buffer: int = 10_000  # records held by the streaming shuffle buffer
    pack_window: int = 4_096  # examples packed together (best-fit decreasing) when streaming
    stats_prefix_rows: int = 2_000  # records read to estimate stats of a streaming dataset
    encode_batch: int = 512  # examples tokenized per tokenizer call
    # -- what requests may read (services/common/roots.py); os.pathsep-separated folders
    dataset_roots: str = ""  # dataset files, folders and registries; empty = none
    model_roots: str = ""  # tokenizer folders; empty = none
    denied_paths: str = ""  # never read, even under a root (secrets kept beside the data)
    # -- request bounds (services/common/limits.py)
    max_record_bytes: int = 16 << 20  # a longer line or record is a counted bad row
    max_json_file_mb: int = 256  # a .json file (one document) larger than this is refused

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in (
            "default_cutoff_len",
            "shard_rows",
            "shuffle_buffer",
            "pack_window",
            "max_record_bytes",
            "max_json_file_mb",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1")
