import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from llamafleet.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExampleKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXAMPLE_KIND_UNSPECIFIED: _ClassVar[ExampleKind]
    EXAMPLE_KIND_PRETRAIN: _ClassVar[ExampleKind]
    EXAMPLE_KIND_SFT: _ClassVar[ExampleKind]
    EXAMPLE_KIND_PREFERENCE: _ClassVar[ExampleKind]
    EXAMPLE_KIND_PROMPT: _ClassVar[ExampleKind]
    EXAMPLE_KIND_FEEDBACK: _ClassVar[ExampleKind]

class DatasetFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATASET_FORMAT_UNSPECIFIED: _ClassVar[DatasetFormat]
    DATASET_FORMAT_ALPACA: _ClassVar[DatasetFormat]
    DATASET_FORMAT_SHAREGPT: _ClassVar[DatasetFormat]
    DATASET_FORMAT_OPENAI: _ClassVar[DatasetFormat]
    DATASET_FORMAT_PREFERENCE_ALPACA: _ClassVar[DatasetFormat]
    DATASET_FORMAT_PREFERENCE_SHAREGPT: _ClassVar[DatasetFormat]
    DATASET_FORMAT_TEXT: _ClassVar[DatasetFormat]
    DATASET_FORMAT_PROMPT: _ClassVar[DatasetFormat]

class FileType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILE_TYPE_UNSPECIFIED: _ClassVar[FileType]
    FILE_TYPE_JSON: _ClassVar[FileType]
    FILE_TYPE_JSONL: _ClassVar[FileType]
    FILE_TYPE_CSV: _ClassVar[FileType]
    FILE_TYPE_PARQUET: _ClassVar[FileType]
    FILE_TYPE_TEXT: _ClassVar[FileType]

class BadRowPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BAD_ROW_POLICY_UNSPECIFIED: _ClassVar[BadRowPolicy]
    BAD_ROW_POLICY_SKIP: _ClassVar[BadRowPolicy]
    BAD_ROW_POLICY_FAIL: _ClassVar[BadRowPolicy]

class Split(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPLIT_UNSPECIFIED: _ClassVar[Split]
    SPLIT_TRAIN: _ClassVar[Split]
    SPLIT_EVAL: _ClassVar[Split]
EXAMPLE_KIND_UNSPECIFIED: ExampleKind
EXAMPLE_KIND_PRETRAIN: ExampleKind
EXAMPLE_KIND_SFT: ExampleKind
EXAMPLE_KIND_PREFERENCE: ExampleKind
EXAMPLE_KIND_PROMPT: ExampleKind
EXAMPLE_KIND_FEEDBACK: ExampleKind
DATASET_FORMAT_UNSPECIFIED: DatasetFormat
DATASET_FORMAT_ALPACA: DatasetFormat
DATASET_FORMAT_SHAREGPT: DatasetFormat
DATASET_FORMAT_OPENAI: DatasetFormat
DATASET_FORMAT_PREFERENCE_ALPACA: DatasetFormat
DATASET_FORMAT_PREFERENCE_SHAREGPT: DatasetFormat
DATASET_FORMAT_TEXT: DatasetFormat
DATASET_FORMAT_PROMPT: DatasetFormat
FILE_TYPE_UNSPECIFIED: FileType
FILE_TYPE_JSON: FileType
FILE_TYPE_JSONL: FileType
FILE_TYPE_CSV: FileType
FILE_TYPE_PARQUET: FileType
FILE_TYPE_TEXT: FileType
BAD_ROW_POLICY_UNSPECIFIED: BadRowPolicy
BAD_ROW_POLICY_SKIP: BadRowPolicy
BAD_ROW_POLICY_FAIL: BadRowPolicy
SPLIT_UNSPECIFIED: Split
SPLIT_TRAIN: Split
SPLIT_EVAL: Split

class ColumnMapping(_message.Message):
    __slots__ = ("prompt", "query", "response", "history", "messages", "system", "tools", "chosen", "rejected", "kto_tag", "images", "videos", "audios")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    KTO_TAG_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    VIDEOS_FIELD_NUMBER: _ClassVar[int]
    AUDIOS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    query: str
    response: str
    history: str
    messages: str
    system: str
    tools: str
    chosen: str
    rejected: str
    kto_tag: str
    images: str
    videos: str
    audios: str
    def __init__(self, prompt: _Optional[str] = ..., query: _Optional[str] = ..., response: _Optional[str] = ..., history: _Optional[str] = ..., messages: _Optional[str] = ..., system: _Optional[str] = ..., tools: _Optional[str] = ..., chosen: _Optional[str] = ..., rejected: _Optional[str] = ..., kto_tag: _Optional[str] = ..., images: _Optional[str] = ..., videos: _Optional[str] = ..., audios: _Optional[str] = ...) -> None: ...

class RoleTags(_message.Message):
    __slots__ = ("role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag")
    ROLE_TAG_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TAG_FIELD_NUMBER: _ClassVar[int]
    USER_TAG_FIELD_NUMBER: _ClassVar[int]
    ASSISTANT_TAG_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_TAG_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_TAG_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_TAG_FIELD_NUMBER: _ClassVar[int]
    role_tag: str
    content_tag: str
    user_tag: str
    assistant_tag: str
    observation_tag: str
    function_tag: str
    system_tag: str
    def __init__(self, role_tag: _Optional[str] = ..., content_tag: _Optional[str] = ..., user_tag: _Optional[str] = ..., assistant_tag: _Optional[str] = ..., observation_tag: _Optional[str] = ..., function_tag: _Optional[str] = ..., system_tag: _Optional[str] = ...) -> None: ...

class FormatOptions(_message.Message):
    __slots__ = ("format", "columns", "tags")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    format: DatasetFormat
    columns: ColumnMapping
    tags: RoleTags
    def __init__(self, format: _Optional[_Union[DatasetFormat, str]] = ..., columns: _Optional[_Union[ColumnMapping, _Mapping]] = ..., tags: _Optional[_Union[RoleTags, _Mapping]] = ...) -> None: ...

class FileSource(_message.Message):
    __slots__ = ("paths", "file_type")
    PATHS_FIELD_NUMBER: _ClassVar[int]
    FILE_TYPE_FIELD_NUMBER: _ClassVar[int]
    paths: _containers.RepeatedScalarFieldContainer[str]
    file_type: FileType
    def __init__(self, paths: _Optional[_Iterable[str]] = ..., file_type: _Optional[_Union[FileType, str]] = ...) -> None: ...

class RegistryEntry(_message.Message):
    __slots__ = ("dataset_dir", "name")
    DATASET_DIR_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    dataset_dir: str
    name: str
    def __init__(self, dataset_dir: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class DatasetSource(_message.Message):
    __slots__ = ("files", "registry", "format", "max_samples")
    FILES_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    files: FileSource
    registry: RegistryEntry
    format: FormatOptions
    max_samples: int
    def __init__(self, files: _Optional[_Union[FileSource, _Mapping]] = ..., registry: _Optional[_Union[RegistryEntry, _Mapping]] = ..., format: _Optional[_Union[FormatOptions, _Mapping]] = ..., max_samples: _Optional[int] = ...) -> None: ...

class TemplateOptions(_message.Message):
    __slots__ = ("name", "default_system", "tool_format", "enable_thinking", "preserve_thinking")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SYSTEM_FIELD_NUMBER: _ClassVar[int]
    TOOL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    ENABLE_THINKING_FIELD_NUMBER: _ClassVar[int]
    PRESERVE_THINKING_FIELD_NUMBER: _ClassVar[int]
    name: str
    default_system: str
    tool_format: str
    enable_thinking: bool
    preserve_thinking: bool
    def __init__(self, name: _Optional[str] = ..., default_system: _Optional[str] = ..., tool_format: _Optional[str] = ..., enable_thinking: _Optional[bool] = ..., preserve_thinking: _Optional[bool] = ...) -> None: ...

class TokenizationOptions(_message.Message):
    __slots__ = ("tokenizer_path", "template", "cutoff_len", "train_on_prompt", "mask_history")
    TOKENIZER_PATH_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    CUTOFF_LEN_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ON_PROMPT_FIELD_NUMBER: _ClassVar[int]
    MASK_HISTORY_FIELD_NUMBER: _ClassVar[int]
    tokenizer_path: str
    template: TemplateOptions
    cutoff_len: int
    train_on_prompt: bool
    mask_history: bool
    def __init__(self, tokenizer_path: _Optional[str] = ..., template: _Optional[_Union[TemplateOptions, _Mapping]] = ..., cutoff_len: _Optional[int] = ..., train_on_prompt: _Optional[bool] = ..., mask_history: _Optional[bool] = ...) -> None: ...

class DatasetSpec(_message.Message):
    __slots__ = ("sources", "kind", "tokenization", "packing", "streaming", "seed", "bad_row_policy", "eval_fraction")
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TOKENIZATION_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BAD_ROW_POLICY_FIELD_NUMBER: _ClassVar[int]
    EVAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    sources: _containers.RepeatedCompositeFieldContainer[DatasetSource]
    kind: ExampleKind
    tokenization: TokenizationOptions
    packing: bool
    streaming: bool
    seed: int
    bad_row_policy: BadRowPolicy
    eval_fraction: float
    def __init__(self, sources: _Optional[_Iterable[_Union[DatasetSource, _Mapping]]] = ..., kind: _Optional[_Union[ExampleKind, str]] = ..., tokenization: _Optional[_Union[TokenizationOptions, _Mapping]] = ..., packing: _Optional[bool] = ..., streaming: _Optional[bool] = ..., seed: _Optional[int] = ..., bad_row_policy: _Optional[_Union[BadRowPolicy, str]] = ..., eval_fraction: _Optional[float] = ...) -> None: ...

class DatasetStats(_message.Message):
    __slots__ = ("source_rows", "examples", "rows", "tokens", "trained_tokens", "padding_fraction", "truncated_examples", "dropped_rows", "estimated")
    class DroppedRowsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SOURCE_ROWS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PADDING_FRACTION_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_ROWS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    source_rows: int
    examples: int
    rows: int
    tokens: int
    trained_tokens: int
    padding_fraction: float
    truncated_examples: int
    dropped_rows: _containers.ScalarMap[str, int]
    estimated: bool
    def __init__(self, source_rows: _Optional[int] = ..., examples: _Optional[int] = ..., rows: _Optional[int] = ..., tokens: _Optional[int] = ..., trained_tokens: _Optional[int] = ..., padding_fraction: _Optional[float] = ..., truncated_examples: _Optional[int] = ..., dropped_rows: _Optional[_Mapping[str, int]] = ..., estimated: _Optional[bool] = ...) -> None: ...

class DatasetSplit(_message.Message):
    __slots__ = ("split", "stats", "shard_paths")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    SHARD_PATHS_FIELD_NUMBER: _ClassVar[int]
    split: Split
    stats: DatasetStats
    shard_paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, split: _Optional[_Union[Split, str]] = ..., stats: _Optional[_Union[DatasetStats, _Mapping]] = ..., shard_paths: _Optional[_Iterable[str]] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("id", "spec", "fingerprint", "create_time", "kind", "stats", "splits", "end_token_ids")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    SPLITS_FIELD_NUMBER: _ClassVar[int]
    END_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: DatasetSpec
    fingerprint: str
    create_time: _timestamp_pb2.Timestamp
    kind: ExampleKind
    stats: DatasetStats
    splits: _containers.RepeatedCompositeFieldContainer[DatasetSplit]
    end_token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[DatasetSpec, _Mapping]] = ..., fingerprint: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[_Union[ExampleKind, str]] = ..., stats: _Optional[_Union[DatasetStats, _Mapping]] = ..., splits: _Optional[_Iterable[_Union[DatasetSplit, _Mapping]]] = ..., end_token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class TokenRow(_message.Message):
    __slots__ = ("input_ids", "labels", "position_ids", "cu_seqlens", "example_ids")
    INPUT_IDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    POSITION_IDS_FIELD_NUMBER: _ClassVar[int]
    CU_SEQLENS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    input_ids: _containers.RepeatedScalarFieldContainer[int]
    labels: _containers.RepeatedScalarFieldContainer[int]
    position_ids: _containers.RepeatedScalarFieldContainer[int]
    cu_seqlens: _containers.RepeatedScalarFieldContainer[int]
    example_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, input_ids: _Optional[_Iterable[int]] = ..., labels: _Optional[_Iterable[int]] = ..., position_ids: _Optional[_Iterable[int]] = ..., cu_seqlens: _Optional[_Iterable[int]] = ..., example_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class PreferencePair(_message.Message):
    __slots__ = ("chosen", "rejected")
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    chosen: TokenRow
    rejected: TokenRow
    def __init__(self, chosen: _Optional[_Union[TokenRow, _Mapping]] = ..., rejected: _Optional[_Union[TokenRow, _Mapping]] = ...) -> None: ...

class PromptExample(_message.Message):
    __slots__ = ("example_id", "prompt_ids", "reference_answer")
    EXAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ANSWER_FIELD_NUMBER: _ClassVar[int]
    example_id: str
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    reference_answer: str
    def __init__(self, example_id: _Optional[str] = ..., prompt_ids: _Optional[_Iterable[int]] = ..., reference_answer: _Optional[str] = ...) -> None: ...

class FeedbackExample(_message.Message):
    __slots__ = ("row", "prompt_length", "desirable")
    ROW_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DESIRABLE_FIELD_NUMBER: _ClassVar[int]
    row: TokenRow
    prompt_length: int
    desirable: bool
    def __init__(self, row: _Optional[_Union[TokenRow, _Mapping]] = ..., prompt_length: _Optional[int] = ..., desirable: _Optional[bool] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("epoch", "index", "rows", "pairs", "prompts", "tokens", "trained_tokens", "feedback")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    index: int
    rows: _containers.RepeatedCompositeFieldContainer[TokenRow]
    pairs: _containers.RepeatedCompositeFieldContainer[PreferencePair]
    prompts: _containers.RepeatedCompositeFieldContainer[PromptExample]
    tokens: int
    trained_tokens: int
    feedback: _containers.RepeatedCompositeFieldContainer[FeedbackExample]
    def __init__(self, epoch: _Optional[int] = ..., index: _Optional[int] = ..., rows: _Optional[_Iterable[_Union[TokenRow, _Mapping]]] = ..., pairs: _Optional[_Iterable[_Union[PreferencePair, _Mapping]]] = ..., prompts: _Optional[_Iterable[_Union[PromptExample, _Mapping]]] = ..., tokens: _Optional[int] = ..., trained_tokens: _Optional[int] = ..., feedback: _Optional[_Iterable[_Union[FeedbackExample, _Mapping]]] = ...) -> None: ...

class RenderedSequence(_message.Message):
    __slots__ = ("name", "text", "input_ids", "labels", "trained_spans", "trained_texts", "truncated")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    INPUT_IDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_SPANS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TEXTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    text: str
    input_ids: _containers.RepeatedScalarFieldContainer[int]
    labels: _containers.RepeatedScalarFieldContainer[int]
    trained_spans: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenSpan]
    trained_texts: _containers.RepeatedScalarFieldContainer[str]
    truncated: bool
    def __init__(self, name: _Optional[str] = ..., text: _Optional[str] = ..., input_ids: _Optional[_Iterable[int]] = ..., labels: _Optional[_Iterable[int]] = ..., trained_spans: _Optional[_Iterable[_Union[_common_pb2.TokenSpan, _Mapping]]] = ..., trained_texts: _Optional[_Iterable[str]] = ..., truncated: _Optional[bool] = ...) -> None: ...
