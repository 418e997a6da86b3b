"""Property-based tests: random requests, built from the protobuf descriptors, to every RPC of the
four real services. Whatever the request, the answer is never UNKNOWN or INTERNAL (both mean a
bug: an unhandled exception or a crash), never carries stack text, and the service keeps serving.

The strategy knows nothing about any RPC: it walks the request message's DESCRIPTOR (scalars by
type, enums including numbers the enum does not define, repeated fields bounded, nested messages
to a bounded depth, one member of each oneof, ``google.protobuf.Struct`` as a small JSON object).
Strings mix random text with values that reach deeper into the services (the tiny model's folder,
the prepared dataset's id, scorer names, path traversals, paths outside the roots, /proc and /dev,
over-long ids and paths, NUL bytes, an address). Streams are read for a few messages
and then cancelled. Training jobs that a random spec manages to create are cancelled afterwards,
and the test checks that none is left running.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inproc_fleet import RPCS, InProcFleet
from llamafleet.common.v1 import common_pb2 as c
from llamafleet.data.v1 import data_pb2 as d
from llamafleet.data.v1 import data_service_pb2 as dpb
from llamafleet.reward.v1 import reward_pb2 as wp
from llamafleet.reward.v1 import reward_service_pb2 as wpb
from llamafleet.rollout.v1 import rollout_pb2 as r
from llamafleet.rollout.v1 import rollout_service_pb2 as rpb
from llamafleet.training.v1 import training_pb2 as t
from llamafleet.training.v1 import training_service_pb2 as tpb

MAX_EXAMPLES = 25
JOB = "prop-job"  # a real job, so the job RPCs get past NOT_FOUND
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
TALLY: dict[str, dict[str, int]] = {}  # rpc -> status code name -> examples


# -- the strategy ----------------------------------------------------------------------------


def _strings(interesting: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.text(max_size=16), st.sampled_from(interesting))


def _scalar(field: FieldDescriptor, strings: st.SearchStrategy[str]) -> st.SearchStrategy:
    kind = field.type
    if kind in RANGES:
        lo, hi = RANGES[kind]
        return st.one_of(st.integers(max(lo, -3), 10), st.integers(lo, hi))
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        # proto3 enums are open: numbers the enum does not define arrive as they are.
        return st.one_of(
            st.sampled_from(known), st.integers(-5, 200), st.integers(-(2**31), 2**31 - 1)
        )
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        return strings
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=32)
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()  # NaN and infinities included
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    raise AssertionError(f"unhandled field type {kind} of {field.full_name}")


_JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def messages(draw, descriptor: Descriptor, strings, depth: int = 0, sparse: bool = False):
    """A random message of ``descriptor``'s type, from the descriptor alone.

    Each field is set with probability 1/2, or 1/5 when ``sparse`` (for mutating a valid request).
    """
    message = message_factory.GetMessageClass(descriptor)()
    if descriptor.full_name == "google.protobuf.Struct":
        message.update(draw(st.dictionaries(st.text(max_size=12), _JSON, max_size=4)))
        return message
    chosen = {}
    for oneof in descriptor.oneofs:  # at most one member of each oneof
        chosen[oneof.name] = draw(st.sampled_from([None, *[f.name for f in oneof.fields]]))
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and not oneof.name.startswith("_"):  # a real oneof
            if chosen[oneof.name] != field.name:
                continue
        elif draw(st.integers(0, 4 if sparse else 1)) != 0:
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = field.message_type
            if sub.GetOptions().map_entry:
                continue
            if sub.full_name.startswith("google.") and sub.full_name != "google.protobuf.Struct":
                continue  # timestamps and durations: never part of a request's meaning here
            if depth >= 3:
                continue
            count = draw(st.integers(0, 3)) if field.is_repeated else 1
            target = getattr(message, field.name)
            for _ in range(count):
                value = draw(messages(sub, strings, depth + 1, sparse))
                (target.add() if field.is_repeated else target).CopyFrom(value)
        elif field.is_repeated:
            values = draw(st.lists(_scalar(field, strings), max_size=4))
            getattr(message, field.name).extend(values)
        else:
            setattr(message, field.name, draw(_scalar(field, strings)))
    return message


@st.composite
def mutated(draw, base, strings):
    """A valid request with a few fields overwritten (or appended to) at random."""
    message = type(base)()
    message.CopyFrom(base)
    message.MergeFrom(draw(messages(base.DESCRIPTOR, strings, sparse=True)))
    return message


def requests(descriptor: Descriptor, strings, base=None) -> st.SearchStrategy:
    """Random requests; half of them start from ``base`` (a valid request) when there is one,
    so that examples get past the first check and into the service's deeper code."""
    fresh = messages(descriptor, strings)
    return fresh if base is None else st.one_of(fresh, mutated(base, strings))


def valid_bases(model: Path, data: Path) -> dict[str, object]:
    """A request each RPC answers OK (or NOT_FOUND for a missing adapter), by method name."""
    preview = dpb.PreviewExampleRequest(
        format=d.FormatOptions(format=d.DATASET_FORMAT_ALPACA),
        tokenization=d.TokenizationOptions(tokenizer_path=str(model)),
    )
    preview.record.update({"instruction": "hi", "output": "x"})
    return {
        "llamafleet.data.v1.DataService.GetDataset": dpb.GetDatasetRequest(dataset_id="good"),
        "llamafleet.data.v1.DataService.PrepareDataset": dpb.PrepareDatasetRequest(
            spec=_dataset_spec(model, data)
        ),
        "llamafleet.data.v1.DataService.PreviewExample": preview,
        "llamafleet.data.v1.DataService.StreamBatches": dpb.StreamBatchesRequest(
            dataset_id="good", batch_rows=2
        ),
        "llamafleet.rollout.v1.RolloutService.Generate": rpb.GenerateRequest(
            prompt_text="hi", sampling=r.SamplingParams(max_tokens=2)
        ),
        "llamafleet.rollout.v1.RolloutService.LoadAdapter": rpb.LoadAdapterRequest(
            adapter=c.AdapterRef(id="policy", version=1)
        ),
        "llamafleet.reward.v1.RewardService.ScoreRollouts": wpb.ScoreRolloutsRequest(
            scorer="exact_match",
            items=[wp.ScoreItem(item_id="a", completion_text="x", reference_answer="x")],
        ),
        "llamafleet.training.v1.TrainingService.GetTrainingJob": tpb.GetTrainingJobRequest(
            job_id=JOB
        ),
        "llamafleet.training.v1.TrainingService.WatchTrainingJob": tpb.WatchTrainingJobRequest(
            job_id=JOB
        ),
        "llamafleet.training.v1.TrainingService.FetchAdapter": tpb.FetchAdapterRequest(
            adapter=c.AdapterRef(id=JOB, version=1)
        ),
        "llamafleet.training.v1.TrainingService.ExportModel": tpb.ExportModelRequest(
            job_id=JOB, mode=t.EXPORT_MODE_ADAPTER_ONLY, output_dir=str(data.parent / "export")
        ),
        "llamafleet.training.v1.TrainingService.CancelTrainingJob": tpb.CancelTrainingJobRequest(
            job_id=JOB
        ),
    }


def _dataset_spec(model: Path, data: Path) -> d.DatasetSpec:
    return d.DatasetSpec(
        sources=[
            d.DatasetSource(
                files=d.FileSource(paths=[str(data)]),
                format=d.FormatOptions(format=d.DATASET_FORMAT_ALPACA),
            )
        ],
        tokenization=d.TokenizationOptions(tokenizer_path=str(model)),
    )


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from services.training.tiny.model import build_tiny_model

    root = tmp_path_factory.mktemp("properties")
    model = build_tiny_model(root / "tiny", "tiny", seed=0)
    data = root / "good.jsonl"
    data.write_text('{"instruction": "hi", "output": "hello"}\n' * 4)
    fleet = InProcFleet(root / "fleet", model).start()
    spec = _dataset_spec(model, data)
    fleet.channels["data"].unary_unary("/llamafleet.data.v1.DataService/PrepareDataset")(
        dpb.PrepareDatasetRequest(dataset_id="good", spec=spec).SerializeToString(), timeout=60
    )
    _create_job(fleet, model)
    interesting = [
        "",
        "good",
        JOB,
        "policy",
        str(model),
        str(data),
        str(root),
        "../../etc/passwd",
        "/etc/passwd",
        "exact_match",
        "contains_answer",
        "regex",
        "format_json",
        "reward_model",
        "alpaca",
        "chatml",
        "\x00",
        "good\x00.jsonl",
        "é" * 40,
        "a" * 300,
        "a" * 4096,  # an id or name far past max_id_chars / max_name_chars
        "a/" * 2600,  # a path past max_path_chars
        "/proc/self/environ",
        "/dev/zero",
        str(root / "fleet" / "jobs"),
        "127.0.0.1:1",  # an address to dial, where a field could take one
    ]
    try:
        yield fleet, _strings(interesting), valid_bases(model, data)
    finally:
        try:
            _cancel_all_jobs(fleet)
        finally:
            fleet.stop()
        _report()


def _create_job(fleet: InProcFleet, model: Path) -> None:
    """A valid job; the in-process training service has no data_address, so its runner fails
    within seconds. Waits (bounded) until it has, so job RPCs see a finished job."""
    path = "/llamafleet.training.v1.TrainingService/"
    channel = fleet.channels["training"]
    spec = t.TrainingJobSpec(
        job_id=JOB,
        stage=t.STAGE_SFT,
        base_model=str(model),
        dataset=t.DatasetRef(dataset_id="good"),
    )
    channel.unary_unary(path + "CreateTrainingJob")(
        tpb.CreateTrainingJobRequest(spec=spec).SerializeToString(), timeout=30
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        reply = tpb.GetTrainingJobResponse.FromString(
            channel.unary_unary(path + "GetTrainingJob")(
                tpb.GetTrainingJobRequest(job_id=JOB).SerializeToString(), timeout=10
            )
        )
        if reply.job.state in _TERMINAL:
            return
        time.sleep(0.2)
    raise AssertionError(f"job {JOB} did not finish")


def _cancel_all_jobs(fleet: InProcFleet) -> None:
    """Cancel every job a random spec created; wait (bounded) until none is running."""
    path = "/llamafleet.training.v1.TrainingService/"
    channel = fleet.channels["training"]
    deadline = time.monotonic() + 60
    while True:
        reply = tpb.ListTrainingJobsResponse.FromString(
            channel.unary_unary(path + "ListTrainingJobs")(b"", timeout=10)
        )
        live = [j for j in reply.jobs if j.state not in _TERMINAL]
        if not live:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs still running after cancel: {[j.id for j in live]}")
        for job in live:
            request = tpb.CancelTrainingJobRequest(job_id=job.id)
            try:
                channel.unary_unary(path + "CancelTrainingJob")(
                    request.SerializeToString(), timeout=10
                )
            except grpc.RpcError:
                pass
        time.sleep(0.2)


_TERMINAL = {t.JOB_STATE_SUCCEEDED, t.JOB_STATE_FAILED, t.JOB_STATE_CANCELLED}


def _report() -> None:
    total = sum(sum(v.values()) for v in TALLY.values())
    print(f"\nPROPERTY EXAMPLES {len(TALLY)} RPCs, {total} calls")
    for rpc, codes in sorted(TALLY.items()):
        print(f"  {rpc}: {dict(sorted(codes.items()))}")


# -- the property ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,service,method", RPCS, ids=[f"{s.name}.{m.name}" for _n, s, m in RPCS]
)
def test_no_request_gets_unknown_or_internal(world, name, service, method):
    fleet, strings, bases = world
    tally = TALLY.setdefault(method.full_name, {})

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=requests(method.input_type, strings, bases.get(method.full_name)))
    def check(request):
        outcome = fleet.call_rpc(
            name, service, method, request.SerializeToString(), timeout=30, max_messages=3
        )
        tally[outcome.code.name] = tally.get(outcome.code.name, 0) + 1
        assert outcome.code not in FORBIDDEN, (method.full_name, request, outcome)
        assert "Traceback" not in outcome.details, outcome.details
        assert outcome.code != grpc.StatusCode.DEADLINE_EXCEEDED, (method.full_name, request)

    check()
    # A request type without fields has one value, which Hypothesis tries once.
    assert sum(tally.values()) >= (MAX_EXAMPLES if method.input_type.fields else 1)
    fleet.assert_serving(name)


def test_every_rpc_of_every_service_is_covered():
    """The parametrization comes from the service descriptors: a new RPC is tested unedited."""
    served = {m.full_name for _n, _s, m in RPCS}
    assert len(served) == 20 and {n for n, _s, _m in RPCS} == {
        "data",
        "training",
        "rollout",
        "reward",
    }
