import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AdapterRef(_message.Message):
    __slots__ = ("id", "version")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: int
    def __init__(self, id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class TokenSpan(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("stream", "group", "entry_id", "item_id", "payload_type", "payload", "reason", "deliveries", "consumer", "dead_letter_time")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_TIME_FIELD_NUMBER: _ClassVar[int]
    stream: str
    group: str
    entry_id: str
    item_id: str
    payload_type: str
    payload: bytes
    reason: str
    deliveries: int
    consumer: str
    dead_letter_time: _timestamp_pb2.Timestamp
    def __init__(self, stream: _Optional[str] = ..., group: _Optional[str] = ..., entry_id: _Optional[str] = ..., item_id: _Optional[str] = ..., payload_type: _Optional[str] = ..., payload: _Optional[bytes] = ..., reason: _Optional[str] = ..., deliveries: _Optional[int] = ..., consumer: _Optional[str] = ..., dead_letter_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RewardSettings(_message.Message):
    __slots__ = ("whiten", "scale", "clip", "regex_pattern", "ignore_case", "functions")
    WHITEN_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    REGEX_PATTERN_FIELD_NUMBER: _ClassVar[int]
    IGNORE_CASE_FIELD_NUMBER: _ClassVar[int]
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    whiten: bool
    scale: float
    clip: float
    regex_pattern: str
    ignore_case: bool
    functions: _containers.RepeatedCompositeFieldContainer[RewardFunctionRef]
    def __init__(self, whiten: _Optional[bool] = ..., scale: _Optional[float] = ..., clip: _Optional[float] = ..., regex_pattern: _Optional[str] = ..., ignore_case: _Optional[bool] = ..., functions: _Optional[_Iterable[_Union[RewardFunctionRef, _Mapping]]] = ...) -> None: ...

class RewardFunctionRef(_message.Message):
    __slots__ = ("name", "weight", "args", "label")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    weight: float
    args: _struct_pb2.Struct
    label: str
    def __init__(self, name: _Optional[str] = ..., weight: _Optional[float] = ..., args: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., label: _Optional[str] = ...) -> None: ...
