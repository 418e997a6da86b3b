"""A caller with a valid token reaches only what the cluster's owner allowed (issue 15).

One real local cluster (``cluster.up``, what ``llamafleet up`` runs) with a token, a tiny model,
and one extra root (the test's ``data`` folder) serves the module. Each test is one attack from
the issue, made the way an attacker holding the token would make it, and checks that it is
refused with the right code and that nothing was read, written, dialled or started:

1. ``LoadAdapter(source_address=...)`` toward a listener the test owns: PERMISSION_DENIED, the
   listener is never dialled (so the worker's training token is never sent), and the adapter
   name stays unknown (nothing planted in the cache);
2. files outside the roots (``/etc/passwd``, ``/proc/self/environ``, the run directory's
   ``cluster.json``, ``../../../etc/passwd``, a symlink, a FIFO) as dataset files, registry
   folders and tokenizer folders: PERMISSION_DENIED, no dataset made, no byte of them returned;
3. (training) output and export folders outside the roots: PERMISSION_DENIED, nothing created;
4. a 16 MB ``prompt_text``: INVALID_ARGUMENT at once, untokenized; a prompt just under the limit
   is tokenized off the event loop;
5. 20 dataset files with oversize records or documents: each refused, and the data service's
   RSS afterwards within 100 MB of its RSS before;
6. (training) job specs with 1 MB strings are refused, so listing keeps working;
7. (training) absurd specs (unknown stage, infinite learning rate, ...) are refused before
   anything is created.

Throughout, a thread checks every service's health every 0.2 s: each answer within 1 s.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llamafleet import cluster
from llamafleet.common.v1 import common_pb2 as c
from llamafleet.data.v1 import data_pb2 as d
from llamafleet.data.v1 import data_service_pb2 as dpb
from llamafleet.data.v1 import data_service_pb2_grpc as dgrpc
from llamafleet.reward.v1 import reward_service_pb2 as wpb
from llamafleet.reward.v1 import reward_service_pb2_grpc as wgrpc
from llamafleet.rollout.v1 import rollout_pb2 as r
from llamafleet.rollout.v1 import rollout_service_pb2 as rpb
from llamafleet.rollout.v1 import rollout_service_pb2_grpc as rgrpc
from llamafleet.training.v1 import training_pb2 as t
from llamafleet.training.v1 import training_service_pb2 as tpb
from llamafleet.training.v1 import training_service_pb2_grpc as tgrpc
from reliability_harness import report

S = grpc.StatusCode
TOKEN = "sec-token-5d1f0c"
AUTH = [("authorization", f"Bearer {TOKEN}")]
READ_TOKEN = "sec-read-only-77ab"  # the cluster's second token: it may only read
ENV = ("LLAMAFLEET_TOKEN", "LLAMAFLEET_TLS_CA", "LLAMAFLEET_TLS_CERT", "LLAMAFLEET_TLS_KEY")
PASSWD_LINE = "root:x:0:0"
TALLY: dict[str, int] = {}  # status code name -> calls


class HealthWatch(threading.Thread):
    """Checks each service's health every ``period`` s and keeps the slowest answer."""

    def __init__(self, addresses: dict[str, str], period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.channels = {n: grpc.insecure_channel(a) for n, a in addresses.items()}
        self.period = period
        self.slowest: dict[str, float] = dict.fromkeys(addresses, 0.0)
        self.failures: list[str] = []
        self.checks = 0
        self.phase = "start"  # the running test, for the slow answers' record
        self.slow: list[tuple[str, str, float]] = []  # (phase, service, seconds) over 0.25 s
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for name, channel in self.channels.items():
                started = time.perf_counter()
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=5
                    )
                    if reply.status != health_pb2.HealthCheckResponse.SERVING:
                        self.failures.append(f"{name}: {reply.status}")
                except grpc.RpcError as err:
                    self.failures.append(f"{name}: {err.code().name}")
                took = time.perf_counter() - started
                self.slowest[name] = max(self.slowest[name], took)
                if took > 0.25:
                    self.slow.append((self.phase, name, round(took, 3)))
                self.checks += 1
            self.halt.wait(self.period)

    def assert_fine(self) -> None:
        assert not self.failures, self.failures
        assert max(self.slowest.values()) < 1.0, self.slowest

    def stop(self) -> None:
        self.halt.set()
        self.join(10)
        for channel in self.channels.values():
            channel.close()


class Attack:
    """The cluster, the attacker's stubs (with the token) and the health watch."""

    def __init__(self, state: cluster.ClusterState, work: Path, model: Path) -> None:
        self.state, self.work, self.model = state, work, model
        self.run = Path(state.run_dir)
        self.addresses = {n: s.address for n, s in state.services.items()}
        self.channels = {n: grpc.insecure_channel(a) for n, a in self.addresses.items()}
        self.data = dgrpc.DataServiceStub(self.channels["data"])
        self.rollout = rgrpc.RolloutServiceStub(self.channels["rollout"])
        self.reward = wgrpc.RewardServiceStub(self.channels["reward"])
        self.training = tgrpc.TrainingServiceStub(self.channels["training"])
        self.watch = HealthWatch(self.addresses)

    def refused(
        self, rpc, request, *, streaming: bool = False, timeout: float = 60
    ) -> grpc.RpcError:
        """The error ``rpc`` answers ``request`` with (the test fails if it succeeds)."""
        try:
            if streaming:
                for _ in rpc(request, timeout=timeout, metadata=AUTH):
                    pass
            else:
                rpc(request, timeout=timeout, metadata=AUTH)
        except grpc.RpcError as err:
            TALLY[err.code().name] = TALLY.get(err.code().name, 0) + 1
            assert err.code() not in (S.UNKNOWN, S.INTERNAL), err
            assert "Traceback" not in (err.details() or "")
            return err
        raise AssertionError(f"{request!r} was not refused")

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()


@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    from services.training.tiny.model import build_tiny_model

    work = tmp_path_factory.mktemp("security")
    model = build_tiny_model(work / "tiny", size="tiny", seed=0)
    data = work / "data"
    data.mkdir()
    (data / "good.jsonl").write_text('{"instruction": "hi", "output": "hello"}\n' * 4)
    (data / "passwd.jsonl").symlink_to("/etc/passwd")
    os.mkfifo(data / "fifo.jsonl")
    (data / "registry").mkdir()
    (data / "registry" / "dataset_info.json").write_text(
        '{"escape": {"file_name": "../../../../../../etc/passwd", "formatting": "alpaca"}}'
    )
    with pytest.MonkeyPatch.context() as mp:
        for var in ENV:
            mp.delenv(var, raising=False)
        state = cluster.up(
            work / "run",
            base_model=str(model),
            roots=[str(data)],
            token=TOKEN,
            read_token=READ_TOKEN,
            settings={"data": {"max_record_bytes": str(1 << 20), "max_json_file_mb": "1"}},
            timeout=120,
        )
    fixture = Attack(state, work, model)
    fixture.watch.start()
    try:
        yield fixture
    finally:
        fixture.watch.stop()
        fixture.close()
        cluster.down(state.run_dir)
        report(
            "security",
            refusals=dict(sorted(TALLY.items())),
            health_checks=fixture.watch.checks,
            slowest_health_s={n: round(s, 3) for n, s in fixture.watch.slowest.items()},
            slow_answers=fixture.watch.slow[:20],
        )


@pytest.fixture(autouse=True)
def _phase(request, attack):
    attack.watch.phase = request.node.name
    yield


def _files_spec(path: str, tokenizer: str, fmt=d.DATASET_FORMAT_ALPACA) -> d.DatasetSpec:
    return d.DatasetSpec(
        sources=[
            d.DatasetSource(files=d.FileSource(paths=[path]), format=d.FormatOptions(format=fmt))
        ],
        tokenization=d.TokenizationOptions(tokenizer_path=tokenizer),
        bad_row_policy=d.BAD_ROW_POLICY_FAIL,
    )


def _no_datasets(attack: Attack) -> None:
    listed = attack.data.ListDatasets(dpb.ListDatasetsRequest(), timeout=30, metadata=AUTH)
    assert [ds.id for ds in listed.datasets] == []


# -- 1. adapters come only from the configured training service -------------------------------


def test_load_adapter_never_dials_a_caller_given_address(attack):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        victim = c.AdapterRef(id="victim", version=1)
        err = attack.refused(
            attack.rollout.LoadAdapter,
            rpb.LoadAdapterRequest(adapter=victim, source_address=address),
        )
        assert err.code() == S.PERMISSION_DENIED and "training_address" in err.details()
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing dialled: no token sent anywhere
        # the name is not planted: the configured training service does not know it
        err = attack.refused(
            attack.rollout.Generate,
            rpb.GenerateRequest(prompt_text="hi", adapter=victim),
            streaming=True,
        )
        assert err.code() == S.NOT_FOUND, err
        refs = attack.run / "rollout-adapters" / ".refs"
        assert not (refs / "victim@1").exists()
    finally:
        listener.close()


def test_oversized_ids_get_invalid_argument_not_resource_exhausted(attack):
    """A 4 KB adapter id used to make 21 KB of trailers (the client saw RESOURCE_EXHAUSTED)."""
    huge = c.AdapterRef(id="a" * 4096, version=1)
    err = attack.refused(attack.rollout.LoadAdapter, rpb.LoadAdapterRequest(adapter=huge))
    assert err.code() == S.INVALID_ARGUMENT and "max_id_chars" in err.details()
    assert len(err.details()) < 1100
    err = attack.refused(
        attack.reward.ScoreRollouts,
        wpb.ScoreRolloutsRequest(scorer="exact_match", reward_adapter=huge),
    )
    assert err.code() == S.INVALID_ARGUMENT


# -- 2. no file outside the roots is read ------------------------------------------------------


def test_files_outside_the_roots_are_never_read(attack):
    run, model, data = attack.run, str(attack.model), attack.work / "data"
    outside = {
        "/etc/passwd": S.PERMISSION_DENIED,
        "/proc/self/environ": S.PERMISSION_DENIED,
        str(run / "cluster.json"): S.PERMISSION_DENIED,  # inside a root, but denied
        str(run / "logs" / "data.log"): S.PERMISSION_DENIED,
        "../../../etc/passwd": S.PERMISSION_DENIED,
        str(data / "passwd.jsonl"): S.PERMISSION_DENIED,  # a symlink inside a root
        str(data / "fifo.jsonl"): S.PERMISSION_DENIED,  # never opened (it would block)
        "/dev/zero": S.PERMISSION_DENIED,
        "x" * 5000: S.INVALID_ARGUMENT,
        "good\x00.jsonl": S.INVALID_ARGUMENT,
    }
    for path, code in outside.items():
        for kind in (d.DATASET_FORMAT_ALPACA, d.DATASET_FORMAT_TEXT):
            err = attack.refused(
                attack.data.PrepareDataset,
                dpb.PrepareDatasetRequest(spec=_files_spec(path, model, kind)),
            )
            assert err.code() == code, (path, err)
            assert PASSWD_LINE not in err.details() and TOKEN not in err.details()
            assert "sources[0].files.paths[0]" in err.details(), err.details()
    registry = d.DatasetSpec(
        sources=[d.DatasetSource(registry=d.RegistryEntry(name="x", dataset_dir="/etc"))],
        tokenization=d.TokenizationOptions(tokenizer_path=model),
    )
    err = attack.refused(attack.data.PrepareDataset, dpb.PrepareDatasetRequest(spec=registry))
    assert err.code() == S.PERMISSION_DENIED and "registry.dataset_dir" in err.details()
    registry.sources[0].registry.CopyFrom(
        d.RegistryEntry(name="escape", dataset_dir=str(data / "registry"))
    )
    err = attack.refused(attack.data.PrepareDataset, dpb.PrepareDatasetRequest(spec=registry))
    assert err.code() == S.PERMISSION_DENIED and "registry.file_name" in err.details()
    for tokenizer in ("/etc", "/proc/self", str(run / "redis")):
        preview = dpb.PreviewExampleRequest(
            format=d.FormatOptions(format=d.DATASET_FORMAT_ALPACA),
            tokenization=d.TokenizationOptions(tokenizer_path=tokenizer),
        )
        preview.record.update({"instruction": "hi", "output": "x"})
        err = attack.refused(attack.data.PreviewExample, preview)
        assert err.code() == S.PERMISSION_DENIED and "tokenizer_path" in err.details()
    _no_datasets(attack)
    # the allowed file next to them still works
    good = attack.data.PrepareDataset(
        dpb.PrepareDatasetRequest(
            dataset_id="good", spec=_files_spec(str(data / "good.jsonl"), model)
        ),
        timeout=60,
        metadata=AUTH,
    )
    assert good.dataset.stats.examples == 4


# -- 4. nothing blocks an event loop ------------------------------------------------------------


def test_a_huge_prompt_is_refused_at_once_and_a_long_one_does_not_stall_health(attack):
    started = time.perf_counter()
    err = attack.refused(
        attack.rollout.Generate,
        rpb.GenerateRequest(prompt_text="a" * (16 << 20)),
        streaming=True,
    )
    assert err.code() == S.INVALID_ARGUMENT and "max_prompt_chars" in err.details()
    assert time.perf_counter() - started < 5
    # just under the limit: tokenized (off the loop) and refused for the model's context
    err = attack.refused(
        attack.rollout.Generate,
        rpb.GenerateRequest(prompt_text="hello world " * 21_000),
        streaming=True,
    )
    assert err.code() == S.INVALID_ARGUMENT and "context" in err.details()
    reply = attack.rollout.Generate(
        rpb.GenerateRequest(prompt_text="hi", sampling=r.SamplingParams(max_tokens=2)),
        timeout=60,
        metadata=AUTH,
    )
    assert any(m.HasField("finished") for m in reply)
    attack.watch.assert_fine()


# -- 5. oversize records cost no memory that stays ----------------------------------------------


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_refused_oversize_files_leave_the_data_service_memory_as_it_was(attack):
    folder = attack.work / "data" / "oversize"
    folder.mkdir()
    line = b'{"instruction": "' + b"x" * (3 << 20) + b'", "output": "y"}\n'
    kinds = [
        ("jsonl", line, d.DATASET_FORMAT_ALPACA),
        ("txt", b"y" * (3 << 20) + b"\n", d.DATASET_FORMAT_TEXT),
        ("csv", b"instruction,output\n" + b"z" * (3 << 20) + b",w\n", d.DATASET_FORMAT_ALPACA),
        ("json", b"[" + line.rstrip(b"\n") + b"]", d.DATASET_FORMAT_ALPACA),
    ]
    files = []
    for i in range(21):
        suffix, body, fmt = kinds[i % len(kinds)]
        path = folder / f"big-{i}.{suffix}"
        path.write_bytes(body)
        files.append((path, fmt))
    pid = attack.state.services["data"].pid

    def refuse(path: Path, fmt) -> None:
        err = attack.refused(
            attack.data.PrepareDataset,
            dpb.PrepareDatasetRequest(spec=_files_spec(str(path), str(attack.model), fmt)),
        )
        assert err.code() == S.INVALID_ARGUMENT, err
        assert "max_record_bytes" in err.details() or "max_json_file_mb" in err.details()

    refuse(*files[0])  # warms the tokenizer and the code paths up
    before = _rss_bytes(pid)
    for path, fmt in files[1:]:
        refuse(path, fmt)
    after = _rss_bytes(pid)
    report("security-rss", before_mb=before >> 20, after_mb=after >> 20, files=len(files) - 1)
    assert after - before < 100 << 20, (before, after)
    attack.watch.assert_fine()


def test_a_read_only_token_reads_and_changes_nothing(attack):
    reader = [("authorization", f"Bearer {READ_TOKEN}")]
    attack.data.ListDatasets(dpb.ListDatasetsRequest(), timeout=30, metadata=reader)
    attack.rollout.ListAdapters(rpb.ListAdaptersRequest(), timeout=30, metadata=reader)
    writes = [
        (attack.data.PrepareDataset, dpb.PrepareDatasetRequest()),
        (
            attack.rollout.LoadAdapter,
            rpb.LoadAdapterRequest(adapter=c.AdapterRef(id="x", version=1)),
        ),
    ]
    for rpc, request in writes:
        with pytest.raises(grpc.RpcError) as err:
            rpc(request, timeout=30, metadata=reader)
        assert err.value.code() == S.PERMISSION_DENIED, err.value
        TALLY["PERMISSION_DENIED"] = TALLY.get("PERMISSION_DENIED", 0) + 1


# -- 3, 6, 7. training: nothing written outside the roots, nothing absurd started -----------------


def _spec(attack: Attack, **fields) -> t.TrainingJobSpec:
    spec = t.TrainingJobSpec(job_id="attack", stage=t.STAGE_SFT, base_model=str(attack.model))
    spec.dataset.dataset_id = "good"
    for path, value in fields.items():
        target, *rest = path.split("__")
        holder = spec
        for name in [target, *rest][:-1]:
            holder = getattr(holder, name)
        setattr(holder, [target, *rest][-1], value)
    return spec


def _nothing_started(attack: Attack) -> None:
    listed = attack.training.ListTrainingJobs(
        tpb.ListTrainingJobsRequest(), timeout=30, metadata=AUTH
    )
    assert [j.id for j in listed.jobs] == []
    jobs = attack.run / "jobs"
    assert not jobs.exists() or list(jobs.iterdir()) == []


def test_no_job_writes_outside_the_roots_and_no_export_does(attack):
    outside = attack.work.parent / f"{attack.work.name}-outside"
    for target in (str(outside), "../../../../x", str(attack.run / "jobs" / "other")):
        err = attack.refused(
            attack.training.CreateTrainingJob,
            tpb.CreateTrainingJobRequest(spec=_spec(attack, output_dir=target)),
        )
        assert err.code() == S.PERMISSION_DENIED and "spec.output_dir" in err.details(), err
    for target in (str(outside), "../../../../x", "/etc/cron.d/x"):
        err = attack.refused(
            attack.training.ExportModel,
            tpb.ExportModelRequest(job_id="any", output_dir=target),
        )
        assert err.code() == S.PERMISSION_DENIED and "export_roots" in err.details(), err
    for base in ("/etc", "/proc/self", str(attack.run / "redis")):
        err = attack.refused(
            attack.training.CreateTrainingJob,
            tpb.CreateTrainingJobRequest(spec=_spec(attack, base_model=base)),
        )
        assert err.code() == S.PERMISSION_DENIED and "spec.base_model" in err.details(), err
    assert not outside.exists()
    _nothing_started(attack)


def test_absurd_specs_are_refused_before_anything_starts(attack):
    cases = {
        "stage 99": _spec(attack, stage=99),
        "learning_rate inf": _spec(attack, hyperparameters__learning_rate=float("inf")),
        "compute_dtype 99": _spec(attack, compute_dtype=99),
        "rollout_batch_size -1": _spec(attack, ppo__rollout_batch_size=-1),
        "world_size 2^31-1": _spec(attack, distributed__world_size=2**31 - 1),
        "NaN beta": _spec(attack, preference__beta=float("nan")),
        "remote code": _spec(attack, trust_remote_code=True),
    }
    fields = {
        "stage 99": "spec.stage",
        "learning_rate inf": "spec.hyperparameters.learning_rate",
        "compute_dtype 99": "spec.compute_dtype",
        "rollout_batch_size -1": "spec.ppo.rollout_batch_size",
        "world_size 2^31-1": "spec.distributed.world_size",
        "NaN beta": "spec.preference.beta",
        "remote code": "spec.trust_remote_code",
    }
    for label, spec in cases.items():
        err = attack.refused(
            attack.training.CreateTrainingJob, tpb.CreateTrainingJobRequest(spec=spec)
        )
        code = S.PERMISSION_DENIED if label == "remote code" else S.INVALID_ARGUMENT
        assert err.code() == code and fields[label] in err.details(), (label, err)
    _nothing_started(attack)


def test_huge_strings_in_job_specs_are_refused_and_listing_keeps_working(attack, capsys):
    from llamafleet import cli
    from llamafleet.openai_api import Gateway

    for i in range(10):
        spec = _spec(attack, ppo__reward_scorer="s" * (1 << 20))
        spec.job_id = f"big-{i}"
        err = attack.refused(
            attack.training.CreateTrainingJob, tpb.CreateTrainingJobRequest(spec=spec)
        )
        assert err.code() == S.INVALID_ARGUMENT and "spec.ppo.reward_scorer" in err.details()
        assert len(err.details()) < 1100  # a short prefix of the value, not the value
    _nothing_started(attack)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLAMAFLEET_TOKEN", TOKEN)
        assert cli.main(["jobs", "ls", "--run-dir", str(attack.run)]) == 0
        with cluster.connect(attack.run, timeout=30) as client:
            names = [m["id"] for m in Gateway(client, str(attack.model)).models()]
    assert names == ["base"]
    capsys.readouterr()


def test_health_answered_within_a_second_throughout(attack):
    """Runs last: every health check of the module, under every attack above, took < 1 s."""
    assert attack.watch.checks > 0
    attack.watch.assert_fine()
