"""The v1 gRPC contract: layout, services, streaming shapes and conventions of protos/llamafleet.

Other services implement these RPCs; this file pins what they are. It reads the generated Python
descriptors (so it also proves every generated module imports), checks the generated stubs match
the protos, and runs ``buf lint`` / ``buf format`` when buf is installed.
"""

from __future__ import annotations

import filecmp
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor

REPO = Path(__file__).resolve().parents[1]
PROTOS = REPO / "protos"
GENERATED = REPO / "clients" / "python"
DOMAINS = ("common", "data", "training", "reward", "rollout")
GO_PACKAGE = "github.com/llamafleet/llamafleet/clients/go/gen/llamafleet/{d}/v1;{d}v1"

# service -> {rpc: server_streaming}. No RPC streams from the client.
EXPECTED_RPCS = {
    "llamafleet.data.v1.DataService": {
        "PreviewExample": False,
        "PrepareDataset": False,
        "GetDataset": False,
        "ListDatasets": False,
        "StreamBatches": True,
        "ParseToolCalls": False,
    },
    "llamafleet.training.v1.TrainingService": {
        "CreateTrainingJob": False,
        "GetTrainingJob": False,
        "ListTrainingJobs": False,
        "CancelTrainingJob": False,
        "WatchTrainingJob": True,
        "FetchAdapter": True,
        "ExportModel": False,
        "RunBenchmark": False,
    },
    "llamafleet.rollout.v1.RolloutService": {
        "Generate": True,
        "LoadAdapter": False,
        "ListAdapters": False,
    },
    "llamafleet.reward.v1.RewardService": {
        "ScoreRollouts": False,
        "ListRewardFunctions": False,
        "TestRewardFunction": False,
    },
}


def _proto_files(domain: str) -> list[str]:
    names = [f"{domain}.proto"]
    if domain != "common":
        names.append(f"{domain}_service.proto")
    return names


def _module_names() -> list[str]:
    mods = []
    for domain in DOMAINS:
        for proto in _proto_files(domain):
            stem = proto.removesuffix(".proto")
            mods += [
                f"llamafleet.{domain}.v1.{stem}_pb2",
                f"llamafleet.{domain}.v1.{stem}_pb2_grpc",
            ]
    return mods


def _file_descriptors() -> list[descriptor.FileDescriptor]:
    return [importlib.import_module(m).DESCRIPTOR for m in _module_names() if m.endswith("_pb2")]


def _all_messages(fd: descriptor.FileDescriptor):
    stack = list(fd.message_types_by_name.values())
    while stack:
        msg = stack.pop()
        yield msg
        stack.extend(msg.nested_types)


def _all_enums(fd: descriptor.FileDescriptor):
    yield from fd.enum_types_by_name.values()
    for msg in _all_messages(fd):
        yield from msg.enum_types


def _services() -> dict[str, descriptor.ServiceDescriptor]:
    return {s.full_name: s for fd in _file_descriptors() for s in fd.services_by_name.values()}


def test_proto_layout_is_one_resource_file_and_one_service_file_per_domain():
    found = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))
    expected = sorted(f"llamafleet/{d}/v1/{name}" for d in DOMAINS for name in _proto_files(d))
    assert found == expected


@pytest.mark.parametrize("module", _module_names())
def test_generated_module_imports(module):
    importlib.import_module(module)


@pytest.mark.parametrize("fd", _file_descriptors(), ids=lambda fd: fd.name)
def test_file_package_and_go_package(fd):
    domain = fd.name.split("/")[1]
    assert fd.package == f"llamafleet.{domain}.v1"
    assert fd.GetOptions().go_package == GO_PACKAGE.format(d=domain)


def test_services_have_exactly_the_contract_rpcs_with_their_streaming_shape():
    services = _services()
    assert sorted(services) == sorted(EXPECTED_RPCS)
    for name, expected in EXPECTED_RPCS.items():
        methods = services[name].methods_by_name
        assert sorted(methods) == sorted(expected), name
        for rpc, server_streaming in expected.items():
            method = methods[rpc]
            assert method.server_streaming is server_streaming, f"{name}.{rpc}"
            assert method.client_streaming is False, f"{name}.{rpc}"
            assert method.input_type.name == f"{rpc}Request"
            assert method.output_type.name == f"{rpc}Response"


def test_services_live_in_the_service_files():
    for fd in _file_descriptors():
        is_service_file = fd.name.endswith("_service.proto")
        assert bool(fd.services_by_name) == is_service_file, fd.name


@pytest.mark.parametrize("fd", _file_descriptors(), ids=lambda fd: fd.name)
def test_enum_zero_values_are_unspecified(fd):
    for enum in _all_enums(fd):
        zero = enum.values_by_number[0]
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper()
        assert zero.name == f"{prefix}_UNSPECIFIED", enum.full_name
        assert all(v.name.startswith(prefix + "_") for v in enum.values), enum.full_name


def test_no_response_or_payload_carries_an_error_field():
    """Errors are gRPC status codes with google.rpc details, never a field of a response.

    Checked on every llamafleet message (responses, what they embed, and the Redis stream
    payloads); a failed job says why in TrainingJob.failure_message.
    """
    error_name = re.compile(r"(^|_)errors?(_|$)")
    messages = [m for fd in _file_descriptors() for m in _all_messages(fd)]
    responses = {m.output_type.full_name for s in _services().values() for m in s.methods}
    assert responses <= {m.full_name for m in messages}
    for msg in messages:
        for field in msg.fields:
            assert not error_name.search(field.name), f"{msg.full_name}.{field.name}"


def test_stream_payloads_round_trip_and_carry_the_task_through():
    from llamafleet.common.v1 import common_pb2
    from llamafleet.reward.v1 import reward_pb2
    from llamafleet.rollout.v1 import rollout_pb2

    task = rollout_pb2.RolloutTask(
        item_id="job1:3:7:0:2",
        job_id="job1",
        policy_version=3,
        step=7,
        shard=0,
        sample_index=2,
        prompt_ids=[1, 2, 3],
        sampling=rollout_pb2.SamplingParams(temperature=0.0, max_tokens=16),
        adapter=common_pb2.AdapterRef(id="job1", version=3),
        reference_answer="42",
        scorer="exact_match",
    )
    rollout = rollout_pb2.Rollout(
        task=task,
        completion_ids=[4, 5],
        logprobs=[-0.5, -1.25],
        finish_reason=rollout_pb2.FINISH_REASON_STOP,
        engine="hf",
        adapter_version=3,
    )
    scored = reward_pb2.ScoredRollout(
        rollout=rollout, raw_score=1.0, normalized_score=0.5, scorer="exact_match"
    )
    back = reward_pb2.ScoredRollout.FromString(scored.SerializeToString())
    assert back == scored
    assert back.rollout.task.item_id == "job1:3:7:0:2"
    assert list(back.rollout.logprobs) == [-0.5, -1.25]
    # temperature 0 (greedy) is distinguishable from unset (1.0): proto3 optional presence.
    assert back.rollout.task.sampling.HasField("temperature")
    assert not back.rollout.task.sampling.HasField("top_p")


def test_training_event_is_a_oneof_with_a_sequence():
    from llamafleet.training.v1 import training_pb2

    event = training_pb2.TrainingEvent(
        sequence=5, metrics=training_pb2.TrainingMetrics(step=10, loss=1.5)
    )
    assert event.WhichOneof("event") == "metrics"
    kinds = {f.name for f in training_pb2.TrainingEvent.DESCRIPTOR.oneofs_by_name["event"].fields}
    assert {"state_change", "metrics", "log", "checkpoint_saved"} <= kinds


def test_generated_stubs_match_the_protos(tmp_path):
    """The committed stubs are what scripts/gen_protos.sh produces from the committed protos."""
    pytest.importorskip("grpc_tools")
    protos = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I", str(PROTOS)]
    cmd += [f"--{kind}_out={tmp_path}" for kind in ("python", "pyi", "grpc_python")]
    subprocess.run(cmd + protos, check=True, cwd=PROTOS)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert fresh
    for rel in fresh:
        committed = GENERATED / rel
        assert committed.is_file(), f"{rel} missing: run scripts/gen_protos.sh"
        assert filecmp.cmp(committed, tmp_path / rel, shallow=False), (
            f"{rel} is stale: run scripts/gen_protos.sh"
        )
    for domain in DOMAINS:
        stale = {
            p.relative_to(GENERATED)
            for p in (GENERATED / "llamafleet" / domain).rglob("*_pb2*.py*")
            if "__pycache__" not in p.parts
        } - set(fresh)
        assert not stale, f"generated files without a proto: {sorted(stale)}"


def _buf() -> str | None:
    for candidate in (os.environ.get("BUF"), str(REPO / ".venv" / "bin" / "buf"), "buf"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


@pytest.mark.parametrize(
    "args", [["lint"], ["format", "-d", "--exit-code", "protos"]], ids=["lint", "format"]
)
def test_buf_accepts_the_protos(args):
    buf = _buf()
    if buf is None:
        pytest.skip("buf not installed (pip install buf-bin)")
    result = subprocess.run([buf, *args], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
