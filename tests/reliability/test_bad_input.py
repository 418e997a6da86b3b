"""A battery of malformed inputs against the four real services, the CLI, LLaMA-Factory job files
and dataset files (service configs: test_bad_config.py).

Each case is a row: (surface, what is wrong, the input, the status or exit code, a substring the
message must contain). Every RPC case runs against the real services (``inproc_fleet``: port 0,
loopback), and after each one the service must still answer health SERVING and a good call OK.
No case may produce a traceback for the caller, UNKNOWN, or INTERNAL.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from inproc_fleet import InProcFleet
from llamafleet import cli
from llamafleet.common.v1 import common_pb2 as c
from llamafleet.data.v1 import data_pb2 as d
from llamafleet.data.v1 import data_service_pb2 as dpb
from llamafleet.lf_config import ConfigFileError, load_job_spec
from llamafleet.reward.v1 import reward_pb2 as wp
from llamafleet.reward.v1 import reward_service_pb2 as wpb
from llamafleet.rollout.v1 import rollout_pb2 as r
from llamafleet.rollout.v1 import rollout_service_pb2 as rpb
from llamafleet.training.v1 import training_pb2 as t
from llamafleet.training.v1 import training_service_pb2 as tpb

S = grpc.StatusCode
DATA = "llamafleet.data.v1.DataService"
TRAINING = "llamafleet.training.v1.TrainingService"
ROLLOUT = "llamafleet.rollout.v1.RolloutService"
REWARD = "llamafleet.reward.v1.RewardService"
SERVICE_OF = {DATA: "data", TRAINING: "training", ROLLOUT: "rollout", REWARD: "reward"}
STREAMING = {"StreamBatches", "Generate", "WatchTrainingJob", "FetchAdapter"}
TRAVERSAL = "../../etc/passwd"
SEEN: Counter = Counter()  # surface -> cases run (the module's last test checks the total)


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def raw_string(field_number: int, data: bytes) -> bytes:
    """A length-delimited field with arbitrary bytes (protobuf rejects non-UTF-8 strings)."""
    return _varint(field_number << 3 | 2) + _varint(len(data)) + data


# -- fixtures ---------------------------------------------------------------------------------


@dataclass
class Ctx:
    fleet: InProcFleet
    root: Path
    model: Path
    files: dict[str, Path]
    dataset_id: str


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> Ctx:
    from services.training.tiny.model import build_tiny_model

    root = tmp_path_factory.mktemp("bad-input")
    model = build_tiny_model(root / "tiny", "tiny", seed=0)
    files = {
        "good": ("good.jsonl", b'{"instruction": "hi", "output": "hello"}\n' * 4),
        "non_utf8": ("non-utf8.jsonl", b'{"instruction": "\xff\xfe", "output": "x"}\n'),
        "truncated": ("truncated.jsonl", b'{"instruction": "hi", "output": \n'),
        "truncated_json": ("truncated.json", b'[{"instruction": "hi", "output": "x"'),
        "wrong_types": ("wrong-types.jsonl", b'{"instruction": 5, "output": [1, 2]}\n'),
        "fake_parquet": ("fake.parquet", b"PAR1 this is not parquet"),
        "fake_parquet_ext": ("not-parquet.jsonl.bin", b"not parquet"),
        "fake_arrow": ("fake.arrow", b"ARROW1 nope"),
        "csv_non_utf8": ("bad.csv", b"instruction,output\n\xff\xfe,x\n"),
        "not_array": ("scalar.json", b"42"),
        "not_object": ("strings.jsonl", b'"just a string"\n'),
        "nan": ("nan.jsonl", b'{"instruction": NaN, "output": "x"}\n'),
    }
    paths = {}
    for key, (name, data) in files.items():
        paths[key] = root / name
        paths[key].write_bytes(data)
    paths["link"] = root / "link.jsonl"
    paths["link"].symlink_to("/etc/passwd")
    paths["fifo"] = root / "fifo.jsonl"
    os.mkfifo(paths["fifo"])
    for key, files in {
        "broken_tokenizer": {"tokenizer.json": "{not json", "tokenizer_config.json": "{}"},
        "odd_tokenizer": {"tokenizer_config.json": '{"tokenizer_class": 5}'},
    }.items():
        paths[key] = root / key
        paths[key].mkdir()
        for name, text in files.items():
            (paths[key] / name).write_text(text)
    for folder, text in (
        ("registry", '{"good": {"file_name": "../good.jsonl"}, "scalar": 5, '
         '"hub": {"hf_hub_url": "org/data"}, "escape": {"file_name": "../../../../etc/passwd"}}'),
        ("broken-registry", '{"good": {"file_name": '),
    ):  # fmt: skip
        (root / folder).mkdir()
        (root / folder / "dataset_info.json").write_text(text)
    fleet = InProcFleet(root / "fleet", model).start()
    try:
        spec = _spec(paths["good"], model, policy=d.BAD_ROW_POLICY_FAIL)
        fleet.channels["data"].unary_unary(f"/{DATA}/PrepareDataset")(
            dpb.PrepareDatasetRequest(dataset_id="good", spec=spec).SerializeToString(),
            timeout=60,
        )
        yield Ctx(fleet, root, model, paths, "good")
    finally:
        fleet.stop()


def _spec(path, model, fmt=d.DATASET_FORMAT_ALPACA, ft=d.FILE_TYPE_UNSPECIFIED, **kw):
    policy = kw.pop("policy", d.BAD_ROW_POLICY_FAIL)
    tok = kw.pop("tokenization", None) or d.TokenizationOptions(tokenizer_path=str(model))
    return d.DatasetSpec(
        sources=[
            d.DatasetSource(
                files=d.FileSource(paths=[str(path)], file_type=ft),
                format=d.FormatOptions(format=fmt),
            )
        ],
        tokenization=tok,
        bad_row_policy=policy,
        **kw,
    )


def _prepare(ctx: Ctx, key: str, **kw) -> bytes:
    spec = _spec(ctx.files[key], ctx.model, **kw)
    return dpb.PrepareDatasetRequest(spec=spec).SerializeToString()


def _prepare_spec(**options) -> Callable[[Ctx], bytes]:
    def body(ctx: Ctx) -> bytes:
        kw = dict(options)
        tok = kw.pop("tok", None)
        if tok is not None:
            kw["tokenization"] = tok(ctx)
        return _prepare(ctx, "good", **kw)

    return body


def _registry(name: str, folder: str = "registry") -> Callable[[Ctx], bytes]:
    def body(ctx: Ctx) -> bytes:
        source = d.DatasetSource(
            registry=d.RegistryEntry(name=name, dataset_dir=str(ctx.root / folder)),
            format=d.FormatOptions(format=d.DATASET_FORMAT_ALPACA),
        )
        tok = d.TokenizationOptions(tokenizer_path=str(ctx.model))
        spec = d.DatasetSpec(sources=[source], tokenization=tok)
        return dpb.PrepareDatasetRequest(spec=spec).SerializeToString()

    return body


def _sampling(**kw) -> Callable[[Ctx], bytes]:
    return lambda ctx: rpb.GenerateRequest(
        prompt_text="hi", sampling=r.SamplingParams(**kw)
    ).SerializeToString()


def _score(**kw) -> Callable[[Ctx], bytes]:
    items = kw.pop("items", [wp.ScoreItem(item_id="a", completion_text="x", reference_answer="x")])
    return lambda ctx: wpb.ScoreRolloutsRequest(items=items, **kw).SerializeToString()


def _msg(message) -> Callable[[Ctx], bytes]:
    return lambda ctx: message.SerializeToString()


def _preview(**options) -> Callable[[Ctx], bytes]:
    def body(ctx: Ctx) -> bytes:
        kw = dict(options)
        tok = kw.pop("tok", lambda ctx: d.TokenizationOptions(tokenizer_path=str(ctx.model)))
        record = kw.pop("record", {"instruction": "hi", "output": "x"})
        request = dpb.PreviewExampleRequest(
            format=d.FormatOptions(format=kw.pop("fmt", d.DATASET_FORMAT_ALPACA)),
            tokenization=tok(ctx),
            **kw,
        )
        request.record.update(record)
        return request.SerializeToString()

    return body


# -- RPC cases -------------------------------------------------------------------------------

# (surface, description, service, method, body(ctx) -> bytes, expected code, substring)
RPC_CASES = [
    # data service: ids, paging, enums, lengths
    ("rpc", "dataset id with path traversal", DATA, "GetDataset",
     _msg(dpb.GetDatasetRequest(dataset_id=TRAVERSAL)), S.INVALID_ARGUMENT, "dataset_id"),
    ("rpc", "missing dataset id", DATA, "GetDataset",
     _msg(dpb.GetDatasetRequest()), S.INVALID_ARGUMENT, "dataset_id"),
    ("rpc", "non-UTF-8 dataset id", DATA, "GetDataset",
     lambda ctx: raw_string(1, b"\xff\xfe"), S.INVALID_ARGUMENT, "not a valid GetDatasetRequest"),
    ("rpc", "negative page_size", DATA, "ListDatasets",
     _msg(dpb.ListDatasetsRequest(page_size=-1)), S.INVALID_ARGUMENT, "page_size"),
    ("rpc", "page_token not issued by the service", DATA, "ListDatasets",
     _msg(dpb.ListDatasetsRequest(page_token="abc")), S.INVALID_ARGUMENT, "page_token"),
    ("rpc", "negative page_token", DATA, "ListDatasets",
     _msg(dpb.ListDatasetsRequest(page_token="-5")), S.INVALID_ARGUMENT, "page_token"),
    ("rpc", "truncated varint", DATA, "ListDatasets",
     lambda ctx: b"\x08", S.INVALID_ARGUMENT, "not a valid ListDatasetsRequest"),
    ("rpc", "message over max_message_mb (2 MiB > 1 MiB)", DATA, "ListDatasets",
     lambda ctx: raw_string(2, b"x" * (2 << 20)), S.RESOURCE_EXHAUSTED, "larger than max"),
    ("rpc", "empty PrepareDataset", DATA, "PrepareDataset",
     _msg(dpb.PrepareDatasetRequest()), S.INVALID_ARGUMENT, "kind"),
    ("rpc", "dataset id '../x' on prepare", DATA, "PrepareDataset",
     lambda ctx: dpb.PrepareDatasetRequest(
         dataset_id="../x", spec=_spec(ctx.files["good"], ctx.model)).SerializeToString(),
     S.INVALID_ARGUMENT, "dataset_id"),
    ("rpc", "file path with traversal", DATA, "PrepareDataset",
     lambda ctx: dpb.PrepareDatasetRequest(
         spec=_spec(TRAVERSAL, ctx.model)).SerializeToString(),
     S.PERMISSION_DENIED, "spec.sources[0].files.paths[0]"),
    ("rpc", "absolute file path outside the roots (/etc/passwd)", DATA, "PrepareDataset",
     lambda ctx: dpb.PrepareDatasetRequest(
         spec=_spec("/etc/passwd", ctx.model)).SerializeToString(),
     S.PERMISSION_DENIED, "dataset_roots"),
    ("rpc", "/proc/self/environ", DATA, "PrepareDataset",
     lambda ctx: dpb.PrepareDatasetRequest(
         spec=_spec("/proc/self/environ", ctx.model)).SerializeToString(),
     S.PERMISSION_DENIED, "never opened"),
    ("rpc", "symlink inside a root pointing at /etc/passwd", DATA, "PrepareDataset",
     lambda ctx: dpb.PrepareDatasetRequest(
         spec=_spec(ctx.files["link"], ctx.model)).SerializeToString(),
     S.PERMISSION_DENIED, "dataset_roots"),
    ("rpc", "a FIFO inside a root", DATA, "PrepareDataset",
     lambda ctx: dpb.PrepareDatasetRequest(
         spec=_spec(ctx.files["fifo"], ctx.model)).SerializeToString(),
     S.PERMISSION_DENIED, "a FIFO"),
    ("rpc", "path of 5000 characters", DATA, "PrepareDataset",
     lambda ctx: dpb.PrepareDatasetRequest(
         spec=_spec("a/" * 2500, ctx.model)).SerializeToString(),
     S.INVALID_ARGUMENT, "max_path_chars"),
    ("rpc", "NUL byte in a path", DATA, "PrepareDataset",
     lambda ctx: dpb.PrepareDatasetRequest(
         spec=_spec("good\x00.jsonl", ctx.model)).SerializeToString(),
     S.INVALID_ARGUMENT, "NUL byte"),
    ("rpc", "file that does not exist", DATA, "PrepareDataset",
     lambda ctx: dpb.PrepareDatasetRequest(
         spec=_spec(ctx.root / "missing.jsonl", ctx.model)).SerializeToString(),
     S.INVALID_ARGUMENT, "does not exist"),
    ("rpc", "unknown DatasetFormat 99", DATA, "PrepareDataset",
     _prepare_spec(fmt=99), S.INVALID_ARGUMENT, "format"),
    ("rpc", "unknown FileType 99", DATA, "PrepareDataset",
     _prepare_spec(ft=99), S.INVALID_ARGUMENT, "file_type"),
    ("rpc", "unknown ExampleKind 99", DATA, "PrepareDataset",
     _prepare_spec(kind=99), S.INVALID_ARGUMENT, "spec.kind"),
    ("rpc", "unknown BadRowPolicy 99", DATA, "PrepareDataset",
     _prepare_spec(policy=99), S.INVALID_ARGUMENT, "bad_row_policy"),
    ("rpc", "cutoff_len -1", DATA, "PrepareDataset",
     _prepare_spec(tok=lambda ctx: d.TokenizationOptions(
         tokenizer_path=str(ctx.model), cutoff_len=-1)), S.INVALID_ARGUMENT, "cutoff_len"),
    ("rpc", "tokenizer path with traversal", DATA, "PrepareDataset",
     _prepare_spec(tok=lambda ctx: d.TokenizationOptions(tokenizer_path=TRAVERSAL)),
     S.PERMISSION_DENIED, "tokenizer_path"),
    ("rpc", "tokenizer folder with a broken tokenizer.json", DATA, "PrepareDataset",
     _prepare_spec(tok=lambda ctx: d.TokenizationOptions(
         tokenizer_path=str(ctx.files["broken_tokenizer"]))),
     S.INVALID_ARGUMENT, "cannot load a tokenizer"),
    ("rpc", "tokenizer_config.json with tokenizer_class 5", DATA, "PreviewExample",
     _preview(tok=lambda ctx: d.TokenizationOptions(
         tokenizer_path=str(ctx.files["odd_tokenizer"]))),
     S.INVALID_ARGUMENT, "cannot load a tokenizer"),
    ("rpc", "eval_fraction 1.5", DATA, "PrepareDataset",
     _prepare_spec(eval_fraction=1.5), S.INVALID_ARGUMENT, "eval_fraction"),
    ("rpc", "eval_fraction NaN", DATA, "PrepareDataset",
     _prepare_spec(eval_fraction=float("nan")), S.INVALID_ARGUMENT, "eval_fraction"),
    ("rpc", "registry entry name with traversal", DATA, "PrepareDataset",
     _registry(TRAVERSAL), S.INVALID_ARGUMENT, "no dataset '../../etc/passwd'"),
    ("rpc", "registry folder outside the roots (/etc)", DATA, "PrepareDataset",
     _registry("good", "/etc"), S.PERMISSION_DENIED, "registry.dataset_dir"),
    ("rpc", "registry folder without dataset_info.json", DATA, "PrepareDataset",
     _registry("good", "tiny"), S.NOT_FOUND, "dataset_info.json"),
    ("dataset", "registry entry naming a file outside the roots", DATA, "PrepareDataset",
     _registry("escape"), S.PERMISSION_DENIED, "registry.file_name"),
    ("dataset", "registry entry that is not an object", DATA, "PrepareDataset",
     _registry("scalar"), S.INVALID_ARGUMENT, "an entry must be an object"),
    ("dataset", "registry entry pointing at the hub", DATA, "PrepareDataset",
     _registry("hub"), S.INVALID_ARGUMENT, "download the files"),
    ("dataset", "dataset_info.json that is not JSON", DATA, "PrepareDataset",
     _registry("good", "broken-registry"), S.INVALID_ARGUMENT, "dataset_info.json"),
    ("rpc", "unknown template name", DATA, "PreviewExample",
     _preview(tok=lambda ctx: d.TokenizationOptions(
         tokenizer_path=str(ctx.model), template=d.TemplateOptions(name="nope"))),
     S.INVALID_ARGUMENT, "unknown template"),
    ("rpc", "preview without a format", DATA, "PreviewExample",
     _msg(dpb.PreviewExampleRequest()), S.INVALID_ARGUMENT, "format.format"),
    ("rpc", "preview with tokenizer outside the roots", DATA, "PreviewExample",
     _preview(tok=lambda ctx: d.TokenizationOptions(tokenizer_path="/nonexistent")),
     S.PERMISSION_DENIED, "tokenizer_path"),
    ("rpc", "preview with tokenizer that is not a folder", DATA, "PreviewExample",
     _preview(tok=lambda ctx: d.TokenizationOptions(tokenizer_path=str(ctx.files["good"]))),
     S.INVALID_ARGUMENT, "not a folder"),
    ("rpc", "preview record with NaN", DATA, "PreviewExample",
     _preview(record={"instruction": float("nan"), "output": "x"}),
     S.INVALID_ARGUMENT, "instruction"),
    ("rpc", "preview record with a number where text goes", DATA, "PreviewExample",
     _preview(record={"instruction": 5, "output": "x"}), S.INVALID_ARGUMENT, "instruction"),
    ("rpc", "stream: dataset id with traversal", DATA, "StreamBatches",
     _msg(dpb.StreamBatchesRequest(dataset_id=TRAVERSAL)), S.INVALID_ARGUMENT, "dataset_id"),
    ("rpc", "stream: unknown Split 99", DATA, "StreamBatches",
     _msg(dpb.StreamBatchesRequest(dataset_id="good", split=99)), S.INVALID_ARGUMENT, "split"),
    ("rpc", "stream: epoch -1", DATA, "StreamBatches",
     _msg(dpb.StreamBatchesRequest(dataset_id="good", batch_rows=2, epoch=-1)), S.INVALID_ARGUMENT, "epoch"),
    ("rpc", "stream: cursor not from the service", DATA, "StreamBatches",
     _msg(dpb.StreamBatchesRequest(dataset_id="good", batch_rows=2, cursor="garbage")),
     S.INVALID_ARGUMENT, "cursor"),
    # dataset files, through PrepareDataset with bad_row_policy FAIL
    ("dataset", "non-UTF-8 jsonl", DATA, "PrepareDataset",
     lambda ctx: _prepare(ctx, "non_utf8"), S.INVALID_ARGUMENT, "not valid UTF-8"),
    ("dataset", "truncated JSON line", DATA, "PrepareDataset",
     lambda ctx: _prepare(ctx, "truncated"), S.INVALID_ARGUMENT, "not JSON"),
    ("dataset", "truncated .json array", DATA, "PrepareDataset",
     lambda ctx: _prepare(ctx, "truncated_json"), S.INVALID_ARGUMENT, "not JSON"),
    ("dataset", "wrong column types", DATA, "PrepareDataset",
     lambda ctx: _prepare(ctx, "wrong_types"), S.INVALID_ARGUMENT, "must be a string"),
    ("dataset", ".parquet file that is not parquet", DATA, "PrepareDataset",
     lambda ctx: _prepare(ctx, "fake_parquet"), S.INVALID_ARGUMENT, "fake.parquet"),
    ("dataset", "file_type PARQUET on a non-parquet file", DATA, "PrepareDataset",
     lambda ctx: _prepare(ctx, "fake_parquet_ext", ft=d.FILE_TYPE_PARQUET),
     S.INVALID_ARGUMENT, "not-parquet.jsonl.bin"),
    ("dataset", ".arrow file that is not Arrow", DATA, "PrepareDataset",
     lambda ctx: _prepare(ctx, "fake_arrow"), S.INVALID_ARGUMENT, "fake.arrow"),
    ("dataset", "non-UTF-8 csv", DATA, "PrepareDataset",
     lambda ctx: _prepare(ctx, "csv_non_utf8"), S.INVALID_ARGUMENT, "UTF-8"),
    ("dataset", ".json holding a number", DATA, "PrepareDataset",
     lambda ctx: _prepare(ctx, "not_array"), S.INVALID_ARGUMENT, "array of records"),
    ("rpc", "batch_rows 10^9, world_size -3", DATA, "StreamBatches",
     _msg(dpb.StreamBatchesRequest(dataset_id="good", batch_rows=10**9, world_size=-3)),
     S.INVALID_ARGUMENT, "world_size"),
    ("dataset", "jsonl line that is not an object", DATA, "PrepareDataset",
     lambda ctx: _prepare(ctx, "not_object"), S.INVALID_ARGUMENT, "strings.jsonl:1"),
    ("dataset", "jsonl record with NaN", DATA, "PrepareDataset",
     lambda ctx: _prepare(ctx, "nan"), S.INVALID_ARGUMENT, "nan.jsonl:1"),
    # training service
    ("rpc", "job id with traversal", TRAINING, "GetTrainingJob",
     _msg(tpb.GetTrainingJobRequest(job_id=TRAVERSAL)), S.NOT_FOUND, "no training job"),
    ("rpc", "non-UTF-8 job id", TRAINING, "GetTrainingJob",
     lambda ctx: raw_string(1, b"\xc3\x28"), S.INVALID_ARGUMENT, "not a valid"),
    ("rpc", "cancel job '../..'", TRAINING, "CancelTrainingJob",
     _msg(tpb.CancelTrainingJobRequest(job_id="../..")), S.NOT_FOUND, "no training job"),
    ("rpc", "negative page_size", TRAINING, "ListTrainingJobs",
     _msg(tpb.ListTrainingJobsRequest(page_size=-1)), S.INVALID_ARGUMENT, "page_size"),
    ("rpc", "page_token not issued", TRAINING, "ListTrainingJobs",
     _msg(tpb.ListTrainingJobsRequest(page_token="zz")), S.INVALID_ARGUMENT, "page_token"),
    ("rpc", "unknown JobState 99", TRAINING, "ListTrainingJobs",
     _msg(tpb.ListTrainingJobsRequest(states=[99])), S.INVALID_ARGUMENT, "states[0]"),
    ("rpc", "empty spec", TRAINING, "CreateTrainingJob",
     _msg(tpb.CreateTrainingJobRequest()), S.INVALID_ARGUMENT, "spec.stage"),
    ("rpc", "job id traversal, unknown Stage 99, base model /etc", TRAINING, "CreateTrainingJob",
     _msg(tpb.CreateTrainingJobRequest(spec=t.TrainingJobSpec(
         job_id="../../x", stage=99, base_model="/etc", output_dir=TRAVERSAL))),
     S.INVALID_ARGUMENT, "spec.stage: unknown value 99"),
    ("rpc", "job id traversal", TRAINING, "CreateTrainingJob",
     lambda ctx: tpb.CreateTrainingJobRequest(spec=t.TrainingJobSpec(
         job_id="../../x", stage=t.STAGE_SFT, base_model=str(ctx.model))).SerializeToString(),
     S.INVALID_ARGUMENT, "spec.job_id"),
    ("rpc", "base model outside the roots (/etc)", TRAINING, "CreateTrainingJob",
     _msg(tpb.CreateTrainingJobRequest(spec=t.TrainingJobSpec(
         job_id="x", stage=t.STAGE_SFT, base_model="/etc"))),
     S.PERMISSION_DENIED, "model_roots"),
    ("rpc", "output_dir with traversal", TRAINING, "CreateTrainingJob",
     lambda ctx: tpb.CreateTrainingJobRequest(spec=t.TrainingJobSpec(
         job_id="x", stage=t.STAGE_SFT, base_model=str(ctx.model), output_dir=TRAVERSAL)
     ).SerializeToString(), S.PERMISSION_DENIED, "spec.output_dir"),
    ("rpc", "output_dir inside the jobs folder", TRAINING, "CreateTrainingJob",
     lambda ctx: tpb.CreateTrainingJobRequest(spec=t.TrainingJobSpec(
         job_id="x", stage=t.STAGE_SFT, base_model=str(ctx.model),
         output_dir=str(ctx.root / "fleet" / "jobs" / "other"))).SerializeToString(),
     S.PERMISSION_DENIED, "spec.output_dir"),
    ("rpc", "infinite learning rate, NaN beta, unknown dtype, world size 2^31-1", TRAINING,
     "CreateTrainingJob", lambda ctx: tpb.CreateTrainingJobRequest(spec=t.TrainingJobSpec(
         job_id="x", stage=t.STAGE_SFT, base_model=str(ctx.model), compute_dtype=99,
         hyperparameters=t.Hyperparameters(learning_rate=float("inf")),
         preference=t.PreferenceConfig(beta=float("nan")),
         distributed=t.DistributedConfig(world_size=2**31 - 1))).SerializeToString(),
     S.INVALID_ARGUMENT, "max_world_size"),
    ("rpc", "rollout_batch_size -1 on an SFT job", TRAINING, "CreateTrainingJob",
     lambda ctx: tpb.CreateTrainingJobRequest(spec=t.TrainingJobSpec(
         job_id="x", stage=t.STAGE_SFT, base_model=str(ctx.model),
         ppo=t.PpoConfig(rollout_batch_size=-1))).SerializeToString(),
     S.INVALID_ARGUMENT, "spec.ppo.rollout_batch_size"),
    ("rpc", "a 512 KB string in the spec (the fleet caps messages at 1 MiB)", TRAINING,
     "CreateTrainingJob",
     lambda ctx: tpb.CreateTrainingJobRequest(spec=t.TrainingJobSpec(
         job_id="x", stage=t.STAGE_PPO, base_model=str(ctx.model),
         ppo=t.PpoConfig(reward_scorer="s" * (1 << 19)))).SerializeToString(),
     S.INVALID_ARGUMENT, "spec.ppo.reward_scorer"),
    ("rpc", "trust_remote_code without the owner's allow_remote_code", TRAINING,
     "CreateTrainingJob", lambda ctx: tpb.CreateTrainingJobRequest(spec=t.TrainingJobSpec(
         job_id="x", stage=t.STAGE_SFT, base_model=str(ctx.model), trust_remote_code=True)
     ).SerializeToString(), S.PERMISSION_DENIED, "allow_remote_code"),
    ("rpc", "negative learning rate, dataset id traversal", TRAINING, "CreateTrainingJob",
     lambda ctx: tpb.CreateTrainingJobRequest(spec=t.TrainingJobSpec(
         job_id="ok", stage=t.STAGE_SFT, base_model=str(ctx.model),
         dataset=t.DatasetRef(dataset_id=TRAVERSAL),
         hyperparameters=t.Hyperparameters(learning_rate=-1))).SerializeToString(),
     S.INVALID_ARGUMENT, "learning_rate"),
    ("rpc", "watch: after_sequence -1", TRAINING, "WatchTrainingJob",
     _msg(tpb.WatchTrainingJobRequest(job_id="x", after_sequence=-1)),
     S.INVALID_ARGUMENT, "after_sequence"),
    ("rpc", "adapter id with traversal", TRAINING, "FetchAdapter",
     _msg(tpb.FetchAdapterRequest(adapter=c.AdapterRef(id=TRAVERSAL, version=1))),
     S.NOT_FOUND, "no training job"),
    ("rpc", "fetch: offset -1", TRAINING, "FetchAdapter",
     _msg(tpb.FetchAdapterRequest(offset=-1)), S.INVALID_ARGUMENT, "offset"),
    ("rpc", "export: output_dir traversal, unknown mode", TRAINING, "ExportModel",
     _msg(tpb.ExportModelRequest(job_id="x", output_dir="../../etc", mode=99)),
     S.PERMISSION_DENIED, "export_roots"),
    ("rpc", "export: unknown job, unknown mode", TRAINING, "ExportModel",
     lambda ctx: tpb.ExportModelRequest(
         job_id="x", output_dir=str(ctx.root / "out"), mode=99).SerializeToString(),
     S.INVALID_ARGUMENT, "mode"),
    ("rpc", "export: unknown job", TRAINING, "ExportModel",
     lambda ctx: tpb.ExportModelRequest(
         job_id="x", output_dir=str(ctx.root / "out")).SerializeToString(),
     S.NOT_FOUND, "no training job"),
    ("rpc", "benchmark: task_dir traversal", TRAINING, "RunBenchmark",
     lambda ctx: tpb.RunBenchmarkRequest(
         base_model=str(ctx.model), task_dir="../../etc", task="mmlu").SerializeToString(),
     S.PERMISSION_DENIED, "task_dir"),
    ("rpc", "benchmark: task with a slash, n_shot -1", TRAINING, "RunBenchmark",
     lambda ctx: tpb.RunBenchmarkRequest(
         base_model=str(ctx.model), task_dir=str(ctx.root), task="a/b").SerializeToString(),
     S.INVALID_ARGUMENT, "task"),
    ("rpc", "parse tool calls: unknown tool format", DATA, "ParseToolCalls",
     _msg(dpb.ParseToolCallsRequest(text="x", tool_format="qwen9")),
     S.INVALID_ARGUMENT, "did you mean 'qwen'"),
    # rollout service
    ("rpc", "neither prompt_ids nor prompt_text", ROLLOUT, "Generate",
     _msg(rpb.GenerateRequest()), S.INVALID_ARGUMENT, "prompt"),
    ("rpc", "both prompt_ids and prompt_text", ROLLOUT, "Generate",
     _msg(rpb.GenerateRequest(prompt_text="hi", prompt_ids=[1])), S.INVALID_ARGUMENT, "exactly one"),
    ("rpc", "max_tokens 10^9", ROLLOUT, "Generate",
     _sampling(max_tokens=10**9), S.INVALID_ARGUMENT, "sampling.max_tokens"),
    ("rpc", "n 10^6", ROLLOUT, "Generate", _sampling(n=10**6), S.INVALID_ARGUMENT, "sampling.n"),
    ("rpc", "temperature NaN", ROLLOUT, "Generate",
     _sampling(temperature=float("nan")), S.INVALID_ARGUMENT, "temperature"),
    ("rpc", "top_p -3, top_k -5", ROLLOUT, "Generate",
     _sampling(top_p=-3, top_k=-5), S.INVALID_ARGUMENT, "sampling.top_k"),
    ("rpc", "repetition_penalty inf", ROLLOUT, "Generate",
     _sampling(repetition_penalty=float("inf")), S.INVALID_ARGUMENT, "repetition_penalty"),
    ("rpc", "token ids out of the vocabulary", ROLLOUT, "Generate",
     _msg(rpb.GenerateRequest(prompt_ids=[10**9, -1])), S.INVALID_ARGUMENT, "prompt_ids[0]"),
    ("rpc", "prompt longer than the model's context (100k tokens)", ROLLOUT, "Generate",
     _msg(rpb.GenerateRequest(prompt_ids=[5] * 100_000)), S.INVALID_ARGUMENT, "context"),
    ("rpc", "non-UTF-8 prompt_text", ROLLOUT, "Generate",
     lambda ctx: raw_string(2, b"\xff\xfe\xfd"), S.INVALID_ARGUMENT, "not a valid GenerateRequest"),
    ("rpc", "absurd length prefix (4 GiB)", ROLLOUT, "Generate",
     lambda ctx: b"\x12\xff\xff\xff\xff\x0f", S.INVALID_ARGUMENT, "not a valid GenerateRequest"),
    ("rpc", "adapter id with traversal", ROLLOUT, "Generate",
     _msg(rpb.GenerateRequest(prompt_text="hi", adapter=c.AdapterRef(id=TRAVERSAL, version=1))),
     S.INVALID_ARGUMENT, "adapter.id"),
    ("rpc", "adapter version 0", ROLLOUT, "Generate",
     _msg(rpb.GenerateRequest(prompt_text="hi", adapter=c.AdapterRef(id="nope"))),
     S.INVALID_ARGUMENT, "adapter.version"),
    ("rpc", "negative stop token id", ROLLOUT, "Generate",
     _sampling(stop_token_ids=[-1]), S.INVALID_ARGUMENT, "stop_token_ids"),
    ("rpc", "load: empty adapter", ROLLOUT, "LoadAdapter",
     _msg(rpb.LoadAdapterRequest()), S.INVALID_ARGUMENT, "adapter.id"),
    ("rpc", "load: adapter id with traversal", ROLLOUT, "LoadAdapter",
     _msg(rpb.LoadAdapterRequest(adapter=c.AdapterRef(id=TRAVERSAL, version=1))),
     S.INVALID_ARGUMENT, "adapter.id"),
    ("rpc", "load: adapter the training service does not have", ROLLOUT, "LoadAdapter",
     _msg(rpb.LoadAdapterRequest(adapter=c.AdapterRef(id="nope", version=1))),
     S.NOT_FOUND, "nope@1"),
    ("rpc", "load: any source_address (adapters come from the configured training)", ROLLOUT,
     "LoadAdapter", _msg(rpb.LoadAdapterRequest(
         adapter=c.AdapterRef(id="nope", version=1), source_address="127.0.0.1:1")),
     S.PERMISSION_DENIED, "training_address"),
    ("rpc", "load: adapter id of 4 KB", ROLLOUT, "LoadAdapter",
     _msg(rpb.LoadAdapterRequest(adapter=c.AdapterRef(id="a" * 4096, version=1))),
     S.INVALID_ARGUMENT, "max_id_chars"),
    ("rpc", "adapter id with a NUL byte", ROLLOUT, "Generate",
     _msg(rpb.GenerateRequest(prompt_text="hi", adapter=c.AdapterRef(id="a\x00b", version=1))),
     S.INVALID_ARGUMENT, "control character"),
    ("rpc", "prompt_text over max_prompt_chars (300k characters)", ROLLOUT, "Generate",
     _msg(rpb.GenerateRequest(prompt_text="hi " * 100_000)), S.INVALID_ARGUMENT,
     "max_prompt_chars"),
    ("rpc", "stop string of 2000 characters", ROLLOUT, "Generate",
     _sampling(stop=["x" * 2000]), S.INVALID_ARGUMENT, "sampling.stop"),
    ("rpc", "load: negative version", ROLLOUT, "LoadAdapter",
     _msg(rpb.LoadAdapterRequest(adapter=c.AdapterRef(id="nope", version=-5))),
     S.INVALID_ARGUMENT, "adapter.version"),
    # reward service
    ("rpc", "empty request (no scorer)", REWARD, "ScoreRollouts",
     _msg(wpb.ScoreRolloutsRequest()), S.INVALID_ARGUMENT, "scorer"),
    ("rpc", "unknown scorer", REWARD, "ScoreRollouts",
     _score(scorer="nope"), S.INVALID_ARGUMENT, "valid scorers"),
    ("rpc", "5000 items (limit 4096)", REWARD, "ScoreRollouts",
     _score(scorer="exact_match", items=[wp.ScoreItem(item_id="a")] * 5000),
     S.INVALID_ARGUMENT, "at most 4096"),
    ("rpc", "reward_model scorer without a model", REWARD, "ScoreRollouts",
     _score(scorer="reward_model"), S.FAILED_PRECONDITION, "reward_model"),
    ("rpc", "reward adapter id with traversal", REWARD, "ScoreRollouts",
     _score(scorer="reward_model", reward_adapter=c.AdapterRef(id="../../etc", version=1)),
     S.INVALID_ARGUMENT, "reward_adapter.id"),
    ("rpc", "missing reference answer", REWARD, "ScoreRollouts",
     _score(scorer="exact_match", items=[wp.ScoreItem(item_id="a")]),
     S.INVALID_ARGUMENT, "reference_answer"),
    ("rpc", "job id of 4 KB", REWARD, "ScoreRollouts",
     _score(scorer="exact_match", job_id="j" * 4096), S.INVALID_ARGUMENT, "max_id_chars"),
    ("rpc", "completion text of 300k characters", REWARD, "ScoreRollouts",
     _score(scorer="exact_match", items=[wp.ScoreItem(
         item_id="a", completion_text="x" * 300_000, reference_answer="x")]),
     S.INVALID_ARGUMENT, "max_item_chars"),
    ("rpc", "non-UTF-8 scorer name", REWARD, "ScoreRollouts",
     lambda ctx: raw_string(2, b"\xff"), S.INVALID_ARGUMENT, "not a valid ScoreRolloutsRequest"),
]  # fmt: skip


@pytest.mark.parametrize(
    "surface,description,service,method,body,code,needle",
    RPC_CASES,
    ids=[f"{c[0]}-{c[3]}-{c[1]}" for c in RPC_CASES],
)
def test_rpc_bad_input(ctx, surface, description, service, method, body, code, needle):
    name = SERVICE_OF[service]
    outcome = ctx.fleet.call(
        name, service, method, body(ctx), streaming=method in STREAMING, timeout=60
    )
    assert outcome.code == code, (description, outcome)
    assert needle in outcome.details, (description, outcome.details)
    assert "Traceback" not in outcome.details and 'File "' not in outcome.details
    ctx.fleet.assert_serving(name)
    SEEN[surface] += 1


def test_a_good_stream_still_works_after_the_bad_ones(ctx):
    """The prepared dataset streams and Generate produces tokens: nothing was left broken."""
    request = dpb.StreamBatchesRequest(dataset_id=ctx.dataset_id, batch_rows=2)
    got = ctx.fleet.call("data", DATA, "StreamBatches", request.SerializeToString(), streaming=True)
    assert got.code == S.OK and got.messages >= 1, got
    request = rpb.GenerateRequest(prompt_text="hi", sampling=r.SamplingParams(max_tokens=2))
    got = ctx.fleet.call(
        "rollout", ROLLOUT, "Generate", request.SerializeToString(), streaming=True
    )
    assert got.code == S.OK and got.messages >= 1, got


# -- CLI ---------------------------------------------------------------------------------------


def _cluster_json(ctx: Ctx, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    services = {
        n: {"name": n, "pid": os.getpid(), "address": a} for n, a in ctx.fleet.addresses.items()
    }
    state = {"run_dir": str(run_dir), "redis_url": "redis://127.0.0.1:1/0", "services": services}
    (run_dir / "cluster.json").write_text(json.dumps(state))
    return run_dir


# (description, argv(ctx, tmp) -> list[str], expected exit code, substring of stderr)
CLI_CASES = [
    ("unknown command", lambda ctx, tmp: ["frobnicate"], 2, "invalid choice"),
    ("--timeout not a number", lambda ctx, tmp: ["status", "--json", "--timeout", "x"], 2,
     "unrecognized arguments"),
    ("no cluster in run dir", lambda ctx, tmp: ["data", "list", "--run-dir", str(tmp / "none")],
     2, "no cluster"),
    ("corrupt cluster.json", lambda ctx, tmp: ["data", "list", "--run-dir", str(_garbage_run(tmp))],
     2, "cluster.json"),
    ("--record not JSON", lambda ctx, tmp: ["data", "preview", "--record", "{nope",
     "--tokenizer", str(ctx.model), "--run-dir", str(_cluster_json(ctx, tmp / "run"))],
     2, "not JSON"),
    ("--record a JSON list", lambda ctx, tmp: ["data", "preview", "--record", "[1]",
     "--tokenizer", str(ctx.model), "--run-dir", str(_cluster_json(ctx, tmp / "run"))],
     2, "one JSON object"),
    ("--record @file that is not UTF-8", lambda ctx, tmp: ["data", "preview", "--record",
     "@" + str(ctx.files["non_utf8"]), "--tokenizer", str(ctx.model),
     "--run-dir", str(_cluster_json(ctx, tmp / "run"))], 2, "UTF-8"),
    ("--format unknown", lambda ctx, tmp: ["data", "preview", "--record", "{}", "--format", "xml",
     "--tokenizer", "x"], 2, "invalid choice"),
    ("data get with path traversal", lambda ctx, tmp: ["data", "get", TRAVERSAL,
     "--run-dir", str(_cluster_json(ctx, tmp / "run"))], 2, "dataset_id"),
    ("data prepare without files", lambda ctx, tmp: ["data", "prepare", "--tokenizer",
     str(ctx.model), "--run-dir", str(_cluster_json(ctx, tmp / "run"))], 2, "--file"),
    ("data prepare of a fake parquet", lambda ctx, tmp: ["data", "prepare", "--file",
     str(ctx.files["fake_parquet"]), "--format", "alpaca", "--tokenizer", str(ctx.model),
     "--bad-rows", "fail", "--run-dir", str(_cluster_json(ctx, tmp / "run"))], 2, "fake.parquet"),
    ("data list page size -1", lambda ctx, tmp: ["data", "list", "--page-size", "-1",
     "--run-dir", str(_cluster_json(ctx, tmp / "run"))], 2, "page_size"),
    ("export of a job id with traversal", lambda ctx, tmp: ["export", TRAVERSAL, str(tmp / "out"),
     "--address", ctx.fleet.addresses["training"]], 2, "no training job"),
    ("train with a missing config file", lambda ctx, tmp: ["train", str(tmp / "missing.yaml"),
     "--address", ctx.fleet.addresses["training"]], 2, "missing.yaml"),
]  # fmt: skip


def _garbage_run(tmp: Path) -> Path:
    run = tmp / "garbage-run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "cluster.json").write_bytes(b"{not json \xff")
    return run


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("description,argv,code,needle", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(ctx, tmp_path, capsys, description, argv, code, needle):
    got, err = run_cli(argv(ctx, tmp_path), capsys)
    assert got == code, (description, err)
    assert needle in err, (description, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    if lines and lines[0].startswith("usage:"):  # argparse: usage, then one error line
        lines = lines[-1:]
    assert len(lines) == 1, err
    SEEN["cli"] += 1


# -- LLaMA-Factory job files (through `llamafleet train`) --------------------------------------

# (description, file content, substring of the error)
LF_CASES = [
    ("not YAML", b"stage: sft\n  bad: [indent\n", "not valid YAML"),
    ("not UTF-8", b"stage: sft\nmodel_name_or_path: \xff\xfe\n", "UTF-8"),
    ("a list, not a mapping", b"- stage\n- sft\n", "expected a mapping"),
    ("unknown key", b"stage: sft\nmodel_name_or_path: /m\nlerning_rate: 1e-4\n", "learning_rate"),
    ("unknown stage", b"stage: xyz\nmodel_name_or_path: /m\ndataset: d\n", "stage"),
    ("learning_rate not a number", b"stage: sft\nmodel_name_or_path: /m\ndataset: d\n"
     b"learning_rate: fast\n", "learning_rate"),
    ("lora_rank a list", b"stage: sft\nmodel_name_or_path: /m\ndataset: d\n"
     b"lora_rank: [1, 2]\n", "lora_rank"),
    ("native spec with an unknown enum name", b"base_model: /m\nstage: STAGE_NOPE\n",
     "STAGE_NOPE"),
]  # fmt: skip


@pytest.mark.parametrize("description,content,needle", LF_CASES, ids=[c[0] for c in LF_CASES])
def test_llamafactory_config_bad_input(ctx, tmp_path, capsys, description, content, needle):
    path = tmp_path / "job.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigFileError) as err:
        load_job_spec(path)
    assert needle in str(err.value), (description, str(err.value))
    code, stderr = run_cli(
        ["train", str(path), "--address", ctx.fleet.addresses["training"]], capsys
    )
    assert code == 2 and needle in stderr and "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    SEEN["lf-config"] += 1


def test_at_least_fifty_cases_were_exercised():
    """Runs last in this module: the battery really ran its cases (not just collected them)."""
    total = sum(SEEN.values())
    print(f"\nBAD-INPUT CASES {dict(SEEN)} total {total}")
    assert total >= 50, SEEN
