from llamafleet.rollout.v1 import rollout_pb2 as _rollout_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreItem(_message.Message):
    __slots__ = ("item_id", "prompt_ids", "completion_ids", "prompt_text", "completion_text", "reference_answer")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_IDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEXT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TEXT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ANSWER_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    completion_ids: _containers.RepeatedScalarFieldContainer[int]
    prompt_text: str
    completion_text: str
    reference_answer: str
    def __init__(self, item_id: _Optional[str] = ..., prompt_ids: _Optional[_Iterable[int]] = ..., completion_ids: _Optional[_Iterable[int]] = ..., prompt_text: _Optional[str] = ..., completion_text: _Optional[str] = ..., reference_answer: _Optional[str] = ...) -> None: ...

class Score(_message.Message):
    __slots__ = ("item_id", "raw_score", "normalized_score")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    RAW_SCORE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_SCORE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    raw_score: float
    normalized_score: float
    def __init__(self, item_id: _Optional[str] = ..., raw_score: _Optional[float] = ..., normalized_score: _Optional[float] = ...) -> None: ...

class ScoredRollout(_message.Message):
    __slots__ = ("rollout", "raw_score", "normalized_score", "scorer")
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    RAW_SCORE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORER_FIELD_NUMBER: _ClassVar[int]
    rollout: _rollout_pb2.Rollout
    raw_score: float
    normalized_score: float
    scorer: str
    def __init__(self, rollout: _Optional[_Union[_rollout_pb2.Rollout, _Mapping]] = ..., raw_score: _Optional[float] = ..., normalized_score: _Optional[float] = ..., scorer: _Optional[str] = ...) -> None: ...
