from llamafleet.common.v1 import common_pb2 as _common_pb2
from llamafleet.training.v1 import training_pb2 as _training_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateTrainingJobRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: _training_pb2.TrainingJobSpec
    def __init__(self, spec: _Optional[_Union[_training_pb2.TrainingJobSpec, _Mapping]] = ...) -> None: ...

class CreateTrainingJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _training_pb2.TrainingJob
    def __init__(self, job: _Optional[_Union[_training_pb2.TrainingJob, _Mapping]] = ...) -> None: ...

class GetTrainingJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetTrainingJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _training_pb2.TrainingJob
    def __init__(self, job: _Optional[_Union[_training_pb2.TrainingJob, _Mapping]] = ...) -> None: ...

class ListTrainingJobsRequest(_message.Message):
    __slots__ = ("states", "page_size", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[_training_pb2.JobState]
    page_size: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[_training_pb2.JobState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTrainingJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_training_pb2.TrainingJob]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[_training_pb2.TrainingJob, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelTrainingJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelTrainingJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _training_pb2.TrainingJob
    def __init__(self, job: _Optional[_Union[_training_pb2.TrainingJob, _Mapping]] = ...) -> None: ...

class WatchTrainingJobRequest(_message.Message):
    __slots__ = ("job_id", "after_sequence")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_sequence: int
    def __init__(self, job_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class WatchTrainingJobResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _training_pb2.TrainingEvent
    def __init__(self, event: _Optional[_Union[_training_pb2.TrainingEvent, _Mapping]] = ...) -> None: ...

class FetchAdapterRequest(_message.Message):
    __slots__ = ("adapter", "offset")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    adapter: _common_pb2.AdapterRef
    offset: int
    def __init__(self, adapter: _Optional[_Union[_common_pb2.AdapterRef, _Mapping]] = ..., offset: _Optional[int] = ...) -> None: ...

class FetchAdapterResponse(_message.Message):
    __slots__ = ("chunk",)
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    chunk: _training_pb2.AdapterChunk
    def __init__(self, chunk: _Optional[_Union[_training_pb2.AdapterChunk, _Mapping]] = ...) -> None: ...

class ExportModelRequest(_message.Message):
    __slots__ = ("job_id", "version", "mode", "output_dir")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    mode: _training_pb2.ExportMode
    output_dir: str
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ..., mode: _Optional[_Union[_training_pb2.ExportMode, str]] = ..., output_dir: _Optional[str] = ...) -> None: ...

class ExportModelResponse(_message.Message):
    __slots__ = ("output_dir", "version", "mode", "files")
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    output_dir: str
    version: int
    mode: _training_pb2.ExportMode
    files: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, output_dir: _Optional[str] = ..., version: _Optional[int] = ..., mode: _Optional[_Union[_training_pb2.ExportMode, str]] = ..., files: _Optional[_Iterable[str]] = ...) -> None: ...

class RunBenchmarkRequest(_message.Message):
    __slots__ = ("base_model", "adapter", "task_dir", "task", "split", "n_shot", "lang", "save_dir", "template")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    TASK_DIR_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    N_SHOT_FIELD_NUMBER: _ClassVar[int]
    LANG_FIELD_NUMBER: _ClassVar[int]
    SAVE_DIR_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    adapter: _common_pb2.AdapterRef
    task_dir: str
    task: str
    split: str
    n_shot: int
    lang: str
    save_dir: str
    template: str
    def __init__(self, base_model: _Optional[str] = ..., adapter: _Optional[_Union[_common_pb2.AdapterRef, _Mapping]] = ..., task_dir: _Optional[str] = ..., task: _Optional[str] = ..., split: _Optional[str] = ..., n_shot: _Optional[int] = ..., lang: _Optional[str] = ..., save_dir: _Optional[str] = ..., template: _Optional[str] = ...) -> None: ...

class SubjectScore(_message.Message):
    __slots__ = ("subject", "name", "category", "correct", "total", "accuracy")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    subject: str
    name: str
    category: str
    correct: int
    total: int
    accuracy: float
    def __init__(self, subject: _Optional[str] = ..., name: _Optional[str] = ..., category: _Optional[str] = ..., correct: _Optional[int] = ..., total: _Optional[int] = ..., accuracy: _Optional[float] = ...) -> None: ...

class RunBenchmarkResponse(_message.Message):
    __slots__ = ("subjects", "categories", "accuracy", "total", "save_dir")
    class CategoriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    SAVE_DIR_FIELD_NUMBER: _ClassVar[int]
    subjects: _containers.RepeatedCompositeFieldContainer[SubjectScore]
    categories: _containers.ScalarMap[str, float]
    accuracy: float
    total: int
    save_dir: str
    def __init__(self, subjects: _Optional[_Iterable[_Union[SubjectScore, _Mapping]]] = ..., categories: _Optional[_Mapping[str, float]] = ..., accuracy: _Optional[float] = ..., total: _Optional[int] = ..., save_dir: _Optional[str] = ...) -> None: ...
