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
    __slots__ = ("item_id", "raw_score", "normalized_score", "components")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    RAW_SCORE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_SCORE_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    raw_score: float
    normalized_score: float
    components: _containers.RepeatedCompositeFieldContainer[RewardComponent]
    def __init__(self, item_id: _Optional[str] = ..., raw_score: _Optional[float] = ..., normalized_score: _Optional[float] = ..., components: _Optional[_Iterable[_Union[RewardComponent, _Mapping]]] = ...) -> None: ...

class RewardComponent(_message.Message):
    __slots__ = ("label", "name", "weight", "score", "sub_scores", "detail")
    class SubScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    LABEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SUB_SCORES_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    label: str
    name: str
    weight: float
    score: float
    sub_scores: _containers.ScalarMap[str, float]
    detail: str
    def __init__(self, label: _Optional[str] = ..., name: _Optional[str] = ..., weight: _Optional[float] = ..., score: _Optional[float] = ..., sub_scores: _Optional[_Mapping[str, float]] = ..., detail: _Optional[str] = ...) -> None: ...

class ScoredRollout(_message.Message):
    __slots__ = ("rollout", "raw_score", "normalized_score", "scorer", "components", "worker")
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    RAW_SCORE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORER_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    rollout: _rollout_pb2.Rollout
    raw_score: float
    normalized_score: float
    scorer: str
    components: _containers.RepeatedCompositeFieldContainer[RewardComponent]
    worker: str
    def __init__(self, rollout: _Optional[_Union[_rollout_pb2.Rollout, _Mapping]] = ..., raw_score: _Optional[float] = ..., normalized_score: _Optional[float] = ..., scorer: _Optional[str] = ..., components: _Optional[_Iterable[_Union[RewardComponent, _Mapping]]] = ..., worker: _Optional[str] = ...) -> None: ...
