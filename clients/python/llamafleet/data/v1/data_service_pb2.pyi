from google.protobuf import struct_pb2 as _struct_pb2
from llamafleet.data.v1 import data_pb2 as _data_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PreviewExampleRequest(_message.Message):
    __slots__ = ("record", "format", "kind", "tokenization", "record_json")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TOKENIZATION_FIELD_NUMBER: _ClassVar[int]
    RECORD_JSON_FIELD_NUMBER: _ClassVar[int]
    record: _struct_pb2.Struct
    format: _data_pb2.FormatOptions
    kind: _data_pb2.ExampleKind
    tokenization: _data_pb2.TokenizationOptions
    record_json: str
    def __init__(self, record: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., format: _Optional[_Union[_data_pb2.FormatOptions, _Mapping]] = ..., kind: _Optional[_Union[_data_pb2.ExampleKind, str]] = ..., tokenization: _Optional[_Union[_data_pb2.TokenizationOptions, _Mapping]] = ..., record_json: _Optional[str] = ...) -> None: ...

class PreviewExampleResponse(_message.Message):
    __slots__ = ("kind", "sequences", "reference_answer")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ANSWER_FIELD_NUMBER: _ClassVar[int]
    kind: _data_pb2.ExampleKind
    sequences: _containers.RepeatedCompositeFieldContainer[_data_pb2.RenderedSequence]
    reference_answer: str
    def __init__(self, kind: _Optional[_Union[_data_pb2.ExampleKind, str]] = ..., sequences: _Optional[_Iterable[_Union[_data_pb2.RenderedSequence, _Mapping]]] = ..., reference_answer: _Optional[str] = ...) -> None: ...

class PrepareDatasetRequest(_message.Message):
    __slots__ = ("dataset_id", "spec")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    spec: _data_pb2.DatasetSpec
    def __init__(self, dataset_id: _Optional[str] = ..., spec: _Optional[_Union[_data_pb2.DatasetSpec, _Mapping]] = ...) -> None: ...

class PrepareDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: _data_pb2.Dataset
    def __init__(self, dataset: _Optional[_Union[_data_pb2.Dataset, _Mapping]] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("dataset_id",)
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    def __init__(self, dataset_id: _Optional[str] = ...) -> None: ...

class GetDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: _data_pb2.Dataset
    def __init__(self, dataset: _Optional[_Union[_data_pb2.Dataset, _Mapping]] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets", "next_page_token")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[_data_pb2.Dataset]
    next_page_token: str
    def __init__(self, datasets: _Optional[_Iterable[_Union[_data_pb2.Dataset, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StreamBatchesRequest(_message.Message):
    __slots__ = ("dataset_id", "split", "rank", "world_size", "epoch", "seed", "shuffle", "batch_rows", "batch_tokens", "cursor", "count_only")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SHUFFLE_FIELD_NUMBER: _ClassVar[int]
    BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    COUNT_ONLY_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    split: _data_pb2.Split
    rank: int
    world_size: int
    epoch: int
    seed: int
    shuffle: bool
    batch_rows: int
    batch_tokens: int
    cursor: str
    count_only: bool
    def __init__(self, dataset_id: _Optional[str] = ..., split: _Optional[_Union[_data_pb2.Split, str]] = ..., rank: _Optional[int] = ..., world_size: _Optional[int] = ..., epoch: _Optional[int] = ..., seed: _Optional[int] = ..., shuffle: _Optional[bool] = ..., batch_rows: _Optional[int] = ..., batch_tokens: _Optional[int] = ..., cursor: _Optional[str] = ..., count_only: _Optional[bool] = ...) -> None: ...

class StreamBatchesResponse(_message.Message):
    __slots__ = ("batch", "cursor", "num_batches")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    NUM_BATCHES_FIELD_NUMBER: _ClassVar[int]
    batch: _data_pb2.Batch
    cursor: str
    num_batches: int
    def __init__(self, batch: _Optional[_Union[_data_pb2.Batch, _Mapping]] = ..., cursor: _Optional[str] = ..., num_batches: _Optional[int] = ...) -> None: ...

class ParseToolCallsRequest(_message.Message):
    __slots__ = ("text", "tool_format", "template")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOOL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    text: str
    tool_format: str
    template: str
    def __init__(self, text: _Optional[str] = ..., tool_format: _Optional[str] = ..., template: _Optional[str] = ...) -> None: ...

class ParseToolCallsResponse(_message.Message):
    __slots__ = ("calls", "tool_format")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[ParsedToolCall]
    tool_format: str
    def __init__(self, calls: _Optional[_Iterable[_Union[ParsedToolCall, _Mapping]]] = ..., tool_format: _Optional[str] = ...) -> None: ...

class ParsedToolCall(_message.Message):
    __slots__ = ("name", "arguments")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    arguments: str
    def __init__(self, name: _Optional[str] = ..., arguments: _Optional[str] = ...) -> None: ...
