import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from llamafleet.common.v1 import common_pb2 as _common_pb2
from llamafleet.reward.v1 import reward_pb2 as _reward_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RewardFunctionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REWARD_FUNCTION_KIND_UNSPECIFIED: _ClassVar[RewardFunctionKind]
    REWARD_FUNCTION_KIND_RULE: _ClassVar[RewardFunctionKind]
    REWARD_FUNCTION_KIND_BUILTIN: _ClassVar[RewardFunctionKind]
    REWARD_FUNCTION_KIND_USER: _ClassVar[RewardFunctionKind]
    REWARD_FUNCTION_KIND_SANDBOX: _ClassVar[RewardFunctionKind]
    REWARD_FUNCTION_KIND_REMOTE: _ClassVar[RewardFunctionKind]
REWARD_FUNCTION_KIND_UNSPECIFIED: RewardFunctionKind
REWARD_FUNCTION_KIND_RULE: RewardFunctionKind
REWARD_FUNCTION_KIND_BUILTIN: RewardFunctionKind
REWARD_FUNCTION_KIND_USER: RewardFunctionKind
REWARD_FUNCTION_KIND_SANDBOX: RewardFunctionKind
REWARD_FUNCTION_KIND_REMOTE: RewardFunctionKind

class ScoreRolloutsRequest(_message.Message):
    __slots__ = ("items", "scorer", "reward_adapter", "job_id", "reward_settings")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SCORER_FIELD_NUMBER: _ClassVar[int]
    REWARD_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REWARD_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_reward_pb2.ScoreItem]
    scorer: str
    reward_adapter: _common_pb2.AdapterRef
    job_id: str
    reward_settings: _common_pb2.RewardSettings
    def __init__(self, items: _Optional[_Iterable[_Union[_reward_pb2.ScoreItem, _Mapping]]] = ..., scorer: _Optional[str] = ..., reward_adapter: _Optional[_Union[_common_pb2.AdapterRef, _Mapping]] = ..., job_id: _Optional[str] = ..., reward_settings: _Optional[_Union[_common_pb2.RewardSettings, _Mapping]] = ...) -> None: ...

class ScoreRolloutsResponse(_message.Message):
    __slots__ = ("scores", "scorer")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    SCORER_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[_reward_pb2.Score]
    scorer: str
    def __init__(self, scores: _Optional[_Iterable[_Union[_reward_pb2.Score, _Mapping]]] = ..., scorer: _Optional[str] = ...) -> None: ...

class RewardFunctionInfo(_message.Message):
    __slots__ = ("name", "kind", "description", "source", "timeout", "available", "unavailable_reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: RewardFunctionKind
    description: str
    source: str
    timeout: _duration_pb2.Duration
    available: bool
    unavailable_reason: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[RewardFunctionKind, str]] = ..., description: _Optional[str] = ..., source: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., available: _Optional[bool] = ..., unavailable_reason: _Optional[str] = ...) -> None: ...

class ListRewardFunctionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRewardFunctionsResponse(_message.Message):
    __slots__ = ("functions",)
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    functions: _containers.RepeatedCompositeFieldContainer[RewardFunctionInfo]
    def __init__(self, functions: _Optional[_Iterable[_Union[RewardFunctionInfo, _Mapping]]] = ...) -> None: ...

class TestRewardFunctionRequest(_message.Message):
    __slots__ = ("functions", "item")
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    functions: _containers.RepeatedCompositeFieldContainer[_common_pb2.RewardFunctionRef]
    item: _reward_pb2.ScoreItem
    def __init__(self, functions: _Optional[_Iterable[_Union[_common_pb2.RewardFunctionRef, _Mapping]]] = ..., item: _Optional[_Union[_reward_pb2.ScoreItem, _Mapping]] = ...) -> None: ...

class TestRewardFunctionResponse(_message.Message):
    __slots__ = ("score", "components")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    score: float
    components: _containers.RepeatedCompositeFieldContainer[_reward_pb2.RewardComponent]
    def __init__(self, score: _Optional[float] = ..., components: _Optional[_Iterable[_Union[_reward_pb2.RewardComponent, _Mapping]]] = ...) -> None: ...
