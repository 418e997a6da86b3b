from llamafleet.common.v1 import common_pb2 as _common_pb2
from llamafleet.rollout.v1 import rollout_pb2 as _rollout_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("prompt_ids", "prompt_text", "adapter", "sampling")
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEXT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    prompt_text: str
    adapter: _common_pb2.AdapterRef
    sampling: _rollout_pb2.SamplingParams
    def __init__(self, prompt_ids: _Optional[_Iterable[int]] = ..., prompt_text: _Optional[str] = ..., adapter: _Optional[_Union[_common_pb2.AdapterRef, _Mapping]] = ..., sampling: _Optional[_Union[_rollout_pb2.SamplingParams, _Mapping]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("sequence_index", "tokens", "finished")
    SEQUENCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    sequence_index: int
    tokens: _rollout_pb2.TokenDelta
    finished: _rollout_pb2.GenerationFinished
    def __init__(self, sequence_index: _Optional[int] = ..., tokens: _Optional[_Union[_rollout_pb2.TokenDelta, _Mapping]] = ..., finished: _Optional[_Union[_rollout_pb2.GenerationFinished, _Mapping]] = ...) -> None: ...

class LoadAdapterRequest(_message.Message):
    __slots__ = ("adapter", "source_address")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    adapter: _common_pb2.AdapterRef
    source_address: str
    def __init__(self, adapter: _Optional[_Union[_common_pb2.AdapterRef, _Mapping]] = ..., source_address: _Optional[str] = ...) -> None: ...

class LoadAdapterResponse(_message.Message):
    __slots__ = ("adapter",)
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    adapter: _rollout_pb2.LoadedAdapter
    def __init__(self, adapter: _Optional[_Union[_rollout_pb2.LoadedAdapter, _Mapping]] = ...) -> None: ...

class ListAdaptersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAdaptersResponse(_message.Message):
    __slots__ = ("adapters",)
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedCompositeFieldContainer[_rollout_pb2.LoadedAdapter]
    def __init__(self, adapters: _Optional[_Iterable[_Union[_rollout_pb2.LoadedAdapter, _Mapping]]] = ...) -> None: ...
