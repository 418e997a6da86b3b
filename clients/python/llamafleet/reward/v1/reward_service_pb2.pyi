from llamafleet.common.v1 import common_pb2 as _common_pb2
from llamafleet.reward.v1 import reward_pb2 as _reward_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
