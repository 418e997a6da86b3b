"""proto <-> domain translation for ``llamafleet.data.v1.DataService``.

Enum tables map the contract's choices onto the domain's names; the work happens in
``datasets`` (the lifecycle of prepared datasets over ``store``) and ``pipeline``/``encode`` (a
preview). Blocking work (preparing, reading metadata, streaming) runs in worker threads so the
server keeps answering health checks while a dataset is prepared or streamed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math

from google.protobuf import json_format
from llamafleet.common.v1 import common_pb2
from llamafleet.data.v1 import data_pb2 as d
from llamafleet.data.v1 import data_service_pb2 as pb
from llamafleet.data.v1 import data_service_pb2_grpc

from services.common.errors import FieldViolation, InvalidArgument, invalid
from services.data import access, registry
from services.data import batches as bt
from services.data import templates as tpl
from services.data.config import DataConfig
from services.data.datasets import Datasets, make_encoder
from services.data.encode import EncodeOptions, trained_spans
from services.data.formats import FormatSpec, RowError, to_example
from services.data.pipeline import DataSpec, SourceSpec, format_for_kind, resolve_kind
from services.data.prepare import check_spec
from services.data.sources import ReadLimits
from services.data.store import DatasetMeta, check_id

logger = logging.getLogger(__name__)

FORMATS = {
    d.DATASET_FORMAT_ALPACA: "alpaca",
    d.DATASET_FORMAT_SHAREGPT: "sharegpt",
    d.DATASET_FORMAT_OPENAI: "openai",
    d.DATASET_FORMAT_PREFERENCE_ALPACA: "preference_alpaca",
    d.DATASET_FORMAT_PREFERENCE_SHAREGPT: "preference_sharegpt",
    d.DATASET_FORMAT_TEXT: "text",
    d.DATASET_FORMAT_PROMPT: "prompt",
}
KINDS = {
    d.EXAMPLE_KIND_PRETRAIN: "pretrain",
    d.EXAMPLE_KIND_SFT: "sft",
    d.EXAMPLE_KIND_PREFERENCE: "preference",
    d.EXAMPLE_KIND_PROMPT: "prompt",
    d.EXAMPLE_KIND_FEEDBACK: "feedback",
}
KIND_ENUM = {v: k for k, v in KINDS.items()}
FILE_TYPES = {
    d.FILE_TYPE_UNSPECIFIED: "",
    d.FILE_TYPE_JSON: "json",
    d.FILE_TYPE_JSONL: "jsonl",
    d.FILE_TYPE_CSV: "csv",
    d.FILE_TYPE_PARQUET: "parquet",
    d.FILE_TYPE_TEXT: "text",
}
_POLICIES = (d.BAD_ROW_POLICY_UNSPECIFIED, d.BAD_ROW_POLICY_SKIP, d.BAD_ROW_POLICY_FAIL)
SPLITS = {d.SPLIT_UNSPECIFIED: "train", d.SPLIT_TRAIN: "train", d.SPLIT_EVAL: "eval"}
SPLIT_ENUM = {"train": d.SPLIT_TRAIN, "eval": d.SPLIT_EVAL}
_COLUMN_KEYS = (
    "prompt",
    "query",
    "response",
    "history",
    "messages",
    "system",
    "tools",
    "chosen",
    "rejected",
    "kto_tag",
    "images",
    "videos",
    "audios",
)
_TAG_KEYS = tuple(f.name for f in d.RoleTags.DESCRIPTOR.fields)
_PAGE_BYTES = 2 << 20  # a ListDatasets page stops growing past this (the limit is 4 MiB)


def _known(table: dict, value: int, field_path: str, enum) -> None:
    """INVALID_ARGUMENT for an enum number this service does not know (proto3 keeps them)."""
    if value not in table:
        names = ", ".join(enum.Name(k) for k in table if k)
        raise invalid(field_path, f"unknown value {value}; use one of {names}")


def _format(options: d.FormatOptions, field: str, base: FormatSpec | None = None) -> FormatSpec:
    columns = dict(base.columns) if base else {}
    tags = dict(base.tags) if base else {}
    columns.update(
        {k: getattr(options.columns, k) for k in _COLUMN_KEYS if getattr(options.columns, k)}
    )
    tags.update({k: getattr(options.tags, k) for k in _TAG_KEYS if getattr(options.tags, k)})
    if options.format in FORMATS:
        name = FORMATS[options.format]
    elif base is not None:
        name = base.format
    else:
        raise invalid(
            f"{field}.format",
            f"set the record format; valid choices: {', '.join(FORMATS.values())}",
        )
    return FormatSpec(name, columns, tags)


def _encode_options(tok: d.TokenizationOptions, config: DataConfig) -> EncodeOptions:
    t = tok.template
    return EncodeOptions(
        template=t.name,
        cutoff_len=tok.cutoff_len or config.default_cutoff_len,
        train_on_prompt=tok.train_on_prompt,
        mask_history=tok.mask_history,
        default_system=t.default_system if t.HasField("default_system") else None,
        tool_format=t.tool_format,
        enable_thinking=t.enable_thinking if t.HasField("enable_thinking") else True,
        preserve_thinking=t.preserve_thinking,
    )


def to_domain(spec: d.DatasetSpec, config: DataConfig) -> tuple[DataSpec, d.DatasetSpec]:
    """The domain spec and the proto spec with defaults filled in; every path it names resolved
    under the service's roots (``access.py``)."""
    access.check_spec_sizes(spec, config)
    if spec.tokenization.cutoff_len < 0:
        raise invalid("spec.tokenization.cutoff_len", "must not be negative")
    if spec.kind:
        _known(KINDS, spec.kind, "spec.kind", d.ExampleKind)
    _known(_POLICIES, spec.bad_row_policy, "spec.bad_row_policy", d.BadRowPolicy)
    sources = []
    for i, s in enumerate(spec.sources):
        field = f"spec.sources[{i}]"
        if s.HasField("registry"):
            folder = config.registry_dir
            if s.registry.dataset_dir:
                where = f"{field}.registry.dataset_dir"
                folder = access.registry_dir(s.registry.dataset_dir, where, config)
            entry = registry.resolve(folder, s.registry.name)
            fmt = _format(s.format, f"{field}.format", entry.format)
            paths = access.source_files(entry.paths, f"{field}.registry.file_name", config)
            file_type, limit = "", entry.num_samples
        elif s.HasField("files"):
            if not s.files.paths:
                raise invalid(f"{field}.files.paths", "name at least one file or folder")
            fmt = _format(s.format, f"{field}.format")
            _known(FILE_TYPES, s.files.file_type, f"{field}.files.file_type", d.FileType)
            paths = access.source_files(list(s.files.paths), f"{field}.files.paths", config)
            file_type, limit = FILE_TYPES[s.files.file_type], None
        else:
            raise invalid(field, "set files or registry")
        if s.HasField("max_samples"):
            limit = s.max_samples
        sources.append(SourceSpec(paths, fmt, file_type, limit, _read_limits(config)))
    kind = resolve_kind([s.format for s in sources], KINDS.get(spec.kind, ""))
    sources = [
        SourceSpec(
            s.paths,
            format_for_kind(s.format, kind, f"spec.sources[{i}].format"),
            s.file_type,
            s.max_samples,
            s.read_limits,
        )
        for i, s in enumerate(sources)
    ]
    filled = d.DatasetSpec()
    filled.CopyFrom(spec)
    filled.kind = KIND_ENUM[kind]
    filled.tokenization.cutoff_len = spec.tokenization.cutoff_len or config.default_cutoff_len
    if filled.bad_row_policy == d.BAD_ROW_POLICY_UNSPECIFIED:
        filled.bad_row_policy = d.BAD_ROW_POLICY_SKIP
    domain = DataSpec(
        sources=tuple(sources),
        kind=kind,
        tokenizer_path=access.tokenizer_dir(
            spec.tokenization.tokenizer_path, "spec.tokenization.tokenizer_path", config
        ),
        encode=_encode_options(spec.tokenization, config),
        packing=spec.packing,
        streaming=spec.streaming,
        seed=spec.seed,
        fail_on_bad_rows=spec.bad_row_policy == d.BAD_ROW_POLICY_FAIL,
        eval_fraction=spec.eval_fraction,
    )
    check_spec(domain)
    return domain, filled


def _bad_record_value(record, exc: ValueError) -> InvalidArgument:
    """The field of ``record`` (a Struct) holding a number JSON cannot carry."""

    def find(value, path: str) -> str:
        kind = value.WhichOneof("kind")
        if kind == "number_value" and not math.isfinite(value.number_value):
            return path
        children = ()
        if kind == "struct_value":
            children = ((f"{path}.{k}", v) for k, v in value.struct_value.fields.items())
        elif kind == "list_value":
            children = ((f"{path}[{i}]", v) for i, v in enumerate(value.list_value.values))
        for child_path, child in children:
            if found := find(child, child_path):
                return found
        return ""

    where = next((f for k, v in record.fields.items() if (f := find(v, f"record.{k}"))), "record")
    return InvalidArgument(
        f"bad record: {where}: not a JSON value (NaN or infinity)",
        reason="BAD_ROW",
        violations=[FieldViolation(where, f"not a JSON value: {exc}"[:200])],
    )


def _read_limits(config: DataConfig) -> ReadLimits:
    return ReadLimits(config.max_record_bytes, config.max_json_file_mb << 20)


def _stats_proto(stats: dict) -> d.DatasetStats:
    return d.DatasetStats(**stats)


def dataset_proto(meta: DatasetMeta) -> d.Dataset:
    ds = d.Dataset(
        id=meta.id,
        spec=d.DatasetSpec.FromString(meta.spec),
        fingerprint=meta.fingerprint,
        kind=KIND_ENUM[meta.kind],
        stats=_stats_proto(meta.stats),
        end_token_ids=meta.end_token_ids or (),
    )
    ds.create_time.FromNanoseconds(int(meta.create_time * 1e9))
    for split in meta.splits:
        ds.splits.append(
            d.DatasetSplit(
                split=SPLIT_ENUM[split.split],
                stats=_stats_proto(split.stats),
                shard_paths=split.shard_paths,
            )
        )
    return ds


def _token_row(row: dict) -> d.TokenRow:
    return d.TokenRow(
        input_ids=row["input_ids"],
        labels=row["labels"],
        position_ids=row["position_ids"],
        cu_seqlens=row["cu_seqlens"],
        example_ids=row["example_ids"],
    )


def _single(example_id: str, ids: list[int], labels: list[int]) -> d.TokenRow:
    return d.TokenRow(
        input_ids=ids,
        labels=labels,
        position_ids=range(len(ids)),
        cu_seqlens=[0, len(ids)],
        example_ids=[example_id],
    )


def batch_proto(layout: str, epoch: int, index: int, rows: list[dict]) -> d.Batch:
    batch = d.Batch(epoch=epoch, index=index)
    for row in rows:
        if layout == "rows":
            batch.rows.append(_token_row(row))
            sides = [row["labels"]]
        elif layout == "feedback":
            batch.feedback.append(
                d.FeedbackExample(
                    row=_single(row["example_id"], row["input_ids"], row["labels"]),
                    prompt_length=row["prompt_length"],
                    desirable=row["desirable"],
                )
            )
            sides = [row["labels"]]
        elif layout == "pairs":
            eid = row["example_id"]
            batch.pairs.append(
                d.PreferencePair(
                    chosen=_single(eid, row["chosen_ids"], row["chosen_labels"]),
                    rejected=_single(eid, row["rejected_ids"], row["rejected_labels"]),
                )
            )
            sides = [row["chosen_labels"], row["rejected_labels"]]
        else:
            batch.prompts.append(
                d.PromptExample(
                    example_id=row["example_id"],
                    prompt_ids=row["prompt_ids"],
                    reference_answer=row["reference_answer"],
                )
            )
            sides = [[-100] * len(row["prompt_ids"])]
        for labels in sides:
            batch.tokens += len(labels)
            batch.trained_tokens += len(labels) - labels.count(-100)
    return batch


def _preview_record(request: pb.PreviewExampleRequest, max_bytes: int) -> dict:
    """The record of a preview: ``record_json`` parsed as a dataset file's line is (key order and
    integers kept), else the ``record`` Struct (which keeps neither); either at most
    ``max_bytes`` (the data service's ``max_record_bytes``)."""
    if request.record_json:
        size = len(request.record_json.encode("utf-8"))
        if size > max_bytes:
            raise invalid(
                "record_json",
                f"{size} bytes; at most {max_bytes} (the data service's max_record_bytes)",
                "TOO_LONG",
            )
        try:
            record = json.loads(request.record_json)
        except json.JSONDecodeError as exc:
            raise invalid("record_json", f"not JSON: {exc}", "BAD_ROW") from None
        if not isinstance(record, dict):
            raise invalid("record_json", "must be one JSON object", "BAD_ROW")
        return record
    if request.record.ByteSize() > max_bytes:
        raise invalid(
            "record",
            f"{request.record.ByteSize()} bytes; at most {max_bytes} "
            "(the data service's max_record_bytes)",
            "TOO_LONG",
        )
    try:
        return json_format.MessageToDict(request.record)
    except ValueError as exc:  # NaN / infinity: no JSON value (json_format refuses them)
        raise _bad_record_value(request.record, exc) from None


def parse_tool_calls(
    request: pb.ParseToolCallsRequest, max_bytes: int
) -> pb.ParseToolCallsResponse:
    """The calls in a generated text, read by the same tool-format code that renders them."""
    if len(request.text.encode()) > max_bytes:
        raise invalid("text", f"at most {max_bytes} bytes (the service's max_record_bytes)")
    fmt = request.tool_format
    if fmt:
        tpl.check_tool_format(fmt, "tool_format")
    elif request.template:
        template = tpl.get_template(request.template, "template")
        if template is None:
            raise invalid(
                "template",
                "the tokenizer's own chat template names no tool format; set tool_format",
            )
        fmt = template.tool_format
    else:
        raise invalid("tool_format", f"set tool_format ({', '.join(tpl.TOOL_FORMATS)}) or template")
    calls = tpl.extract_tool_calls(fmt, request.text) or []
    return pb.ParseToolCallsResponse(
        calls=[pb.ParsedToolCall(name=c.name, arguments=c.arguments) for c in calls],
        tool_format=fmt,
    )


class DataServicer(data_service_pb2_grpc.DataServiceServicer):
    def __init__(self, config: DataConfig) -> None:
        self.config = config
        self.datasets = Datasets(config)

    async def PreviewExample(self, request: pb.PreviewExampleRequest, context):
        return await asyncio.to_thread(self._preview, request)

    def _preview(self, request: pb.PreviewExampleRequest) -> pb.PreviewExampleResponse:
        fmt = _format(request.format, "format")
        if request.kind:
            _known(KINDS, request.kind, "kind", d.ExampleKind)
        kind = resolve_kind([fmt], KINDS.get(request.kind, ""), "kind")
        fmt = format_for_kind(fmt, kind, "format")
        access.check_tokenization_sizes(request.tokenization, "tokenization", self.config)
        options = _encode_options(request.tokenization, self.config)
        path = request.tokenization.tokenizer_path
        path = access.tokenizer_dir(path, "tokenization.tokenizer_path", self.config)
        encoder = make_encoder(path, options)
        record = _preview_record(request, self.config.max_record_bytes)
        try:
            example = to_example(record, fmt, kind)
            (result,) = encoder.encode([example])
            if isinstance(result, RowError):
                raise result
        except RowError as err:
            where = f"record.{err.field}" if err.field else "record"
            raise InvalidArgument(
                f"bad record: {where}: {err.description}",
                reason="BAD_ROW",
                violations=[FieldViolation(where, err.description)],
                metadata={"row_reason": err.reason},
            ) from None
        response = pb.PreviewExampleResponse(
            kind=KIND_ENUM[kind], reference_answer=result.reference
        )
        tokenizer = encoder.tokenizer
        for seq in result.sequences:
            spans = trained_spans(seq.labels)
            text = seq.text if not seq.truncated else tokenizer.decode(seq.ids)
            response.sequences.append(
                d.RenderedSequence(
                    name=seq.name,
                    text=text,
                    input_ids=seq.ids,
                    labels=seq.labels,
                    trained_spans=[common_pb2.TokenSpan(start=s, end=e) for s, e in spans],
                    trained_texts=[tokenizer.decode(seq.ids[s:e]) for s, e in spans],
                    truncated=seq.truncated,
                )
            )
        return response

    async def ParseToolCalls(self, request: pb.ParseToolCallsRequest, context):
        return parse_tool_calls(request, self.config.max_record_bytes)

    async def PrepareDataset(self, request: pb.PrepareDatasetRequest, context):
        return await asyncio.to_thread(self._prepare, request)

    def _prepare(self, request: pb.PrepareDatasetRequest) -> pb.PrepareDatasetResponse:
        if request.dataset_id:
            check_id(request.dataset_id)
        spec, filled = to_domain(request.spec, self.config)
        spec_bytes = filled.SerializeToString(deterministic=True)
        meta = self.datasets.prepare(request.dataset_id, spec, spec_bytes)
        return pb.PrepareDatasetResponse(dataset=dataset_proto(meta))

    async def GetDataset(self, request: pb.GetDatasetRequest, context):
        meta = await asyncio.to_thread(self.datasets.get, request.dataset_id)
        return pb.GetDatasetResponse(dataset=dataset_proto(meta))

    async def ListDatasets(self, request: pb.ListDatasetsRequest, context):
        size = request.page_size or 50
        if size < 0:
            raise invalid("page_size", "must not be negative")
        size = min(size, 1000)
        try:
            start = int(request.page_token or 0)
        except ValueError:
            start = -1
        if start < 0:
            raise invalid("page_token", "not a token from ListDatasets")
        page, more = await asyncio.to_thread(self.datasets.page, start, size)
        response = pb.ListDatasetsResponse()
        for i, meta in enumerate(page):
            item = dataset_proto(meta)
            # a page stays well under the message limit, however large the datasets' specs
            if i and response.ByteSize() + item.ByteSize() > _PAGE_BYTES:
                response.next_page_token = str(start + i)
                return response
            response.datasets.append(item)
        response.next_page_token = str(start + size) if more else ""
        return response

    async def StreamBatches(self, request: pb.StreamBatchesRequest, context):
        meta = await asyncio.to_thread(self.datasets.get, request.dataset_id)
        _known(SPLITS, request.split, "split", d.Split)
        split = SPLITS[request.split]
        shuffle = request.shuffle if request.HasField("shuffle") else split == "train"
        which = request.WhichOneof("batch_size")
        plan = bt.BatchPlan(
            dataset_id=request.dataset_id,
            split=split,
            rank=request.rank,
            world_size=request.world_size or 1,
            seed=request.seed,
            shuffle=shuffle,
            mode="tokens" if which == "batch_tokens" else "rows",
            size=getattr(request, which) if which else 0,
        )
        if request.epoch < 0:
            raise invalid("epoch", "must not be negative")
        epoch, start = request.epoch, 0
        if request.cursor and not request.count_only:
            epoch, start = bt.decode_cursor(request.cursor, plan)
        if meta.split(split) is None:
            raise invalid("split", f"dataset {meta.id!r} has no {split} split")
        spec = None
        if meta.streaming:  # the stored spec, read again (its sources are read as it streams)
            stored = d.DatasetSpec.FromString(meta.spec)  # paths resolved again, off the loop
            spec, _ = await asyncio.to_thread(to_domain, stored, self.config)
        if request.count_only:
            count = await asyncio.to_thread(self.datasets.count, meta, spec, plan, epoch)
            yield pb.StreamBatchesResponse(num_batches=count)
            return
        batches, counted = await asyncio.to_thread(
            self.datasets.batches, meta, spec, plan, epoch, start
        )
        while True:
            item = await asyncio.to_thread(next, batches, None)
            if item is None:
                if counted is not None:
                    await asyncio.to_thread(
                        self.datasets.record_pass, meta.id, split, spec, counted
                    )
                return
            index, rows = item
            yield pb.StreamBatchesResponse(
                batch=batch_proto(meta.layout, epoch, index, rows),
                cursor=bt.encode_cursor(plan, epoch, index + 1),
            )
