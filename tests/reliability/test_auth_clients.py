"""Authentication from the clients' side: ``llamafleet up`` with a token and mutual TLS, the CLI
and the Python client against it, and the calls the services make to each other.

One cluster, started with ``llamafleet up`` (``LLAMAFLEET_TOKEN`` and ``--tls-*``, a tiny
model, certificates from ``tls_certs``), serves the module. A LoRA job's runner reads its
dataset from the data service, and a rollout worker fetches the job's adapter from training,
both over mutual TLS with the token; the same calls without the token, without a client
certificate or with one from another CA are refused. Every CLI command that dials a
service gets one line naming what to set, and a non-zero exit, when the token or TLS is wrong.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest
import redis
from llamafleet import cli, cluster
from llamafleet.client import Client, RpcError
from llamafleet.common.v1 import common_pb2
from llamafleet.credentials import Credentials, CredentialsError
from llamafleet.data.v1 import data_pb2
from llamafleet.data.v1 import data_service_pb2 as dapi
from llamafleet.reward.v1 import reward_service_pb2 as wapi
from llamafleet.rollout.v1 import rollout_pb2
from llamafleet.rollout.v1 import rollout_service_pb2 as rapi
from llamafleet.training.v1 import training_pb2 as tpb
from llamafleet.training.v1 import training_service_pb2 as tapi
from reliability_harness import report
from tls_certs import make_certs

from services.common.adapter_cache import AdapterCache
from services.common.errors import FailedPrecondition, Unavailable

TOKEN = "tok-3c9e71d0aa"
JOB = "auth-job"
ENV = ("LLAMAFLEET_TOKEN", "LLAMAFLEET_TLS_CA", "LLAMAFLEET_TLS_CERT", "LLAMAFLEET_TLS_KEY")


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A local cluster with a token and mutual TLS: (state, certs, tiny model folder)."""
    from services.training.tiny.model import build_tiny_model

    work = tmp_path_factory.mktemp("auth-clients")
    certs = make_certs(work / "certs")
    model = build_tiny_model(work / "tiny", seed=3)
    run = work / "run"
    with pytest.MonkeyPatch.context() as mp:
        for var in ENV:  # the cluster must not lean on the caller's environment
            mp.delenv(var, raising=False)
        mp.setenv("LLAMAFLEET_TOKEN", TOKEN)  # `up` takes the token only from the environment
        argv = ["up", "--run-dir", str(run), "--base-model", str(model), "--timeout", "120"]
        argv += ["--root", str(work)]
        argv += ["--tls-ca", str(certs["ca.pem"]), "--tls-cert", str(certs["server.pem"])]
        argv += ["--tls-key", str(certs["server.key"])]
        code = cli.main(argv)
    assert code == 0, "llamafleet up failed (it stops what it started)"
    state = cluster.ClusterState.load(run)
    try:
        assert state.token_required and state.tls_ca == str(certs["ca.pem"].resolve())
        assert TOKEN not in Path(run, cluster.STATE_FILE).read_text()
        yield state, certs, Path(model)
    finally:
        cluster.down(state.run_dir)


@pytest.fixture
def env(monkeypatch):
    """Set the client environment for one test: env(token=..., cert=..., key=..., ca=...)."""
    names = {"token": ENV[0], "ca": ENV[1], "cert": ENV[2], "key": ENV[3]}
    for var in ENV:
        monkeypatch.delenv(var, raising=False)

    def set_env(**values: str) -> None:
        for var in ENV:
            monkeypatch.delenv(var, raising=False)
        for key, value in values.items():
            monkeypatch.setenv(names[key], str(value))

    return set_env


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_every_cli_command_that_dials_needs_the_token_and_a_trusted_certificate(
    secured, env, capsys
):
    state, certs, _model = secured
    run = ["--run-dir", state.run_dir]
    commands = [["data", "list", *run], ["jobs", "ls", *run], ["status", "--json", *run]]
    tried = refused = 0

    env(token=TOKEN)  # the TLS files come from what `up` recorded
    for argv in commands:
        code, out, err = run_cli(capsys, *argv)
        assert code == 0, (argv, err)
        tried += 1
    report_json = json.loads(run_cli(capsys, "status", "--json", *run)[1])
    assert {s["health"] for s in report_json["services"].values()} == {"SERVING"}
    assert report_json["redis"] == "up" and report_json["redis_url"].startswith("rediss://:***@")

    for label, token in (("no token", None), ("wrong token", "not-" + TOKEN)):
        env(**({"token": token} if token else {}))
        for argv in commands[:2]:
            code, _out, err = run_cli(capsys, *argv)
            line = one_line(err)
            assert code == 2, (label, argv, line)
            assert "UNAUTHENTICATED" in line and "set LLAMAFLEET_TOKEN" in line, line
            assert TOKEN not in line
            tried, refused = tried + 1, refused + 1

    # A client certificate from another CA: the handshake fails, the hint names the TLS files.
    env(token=TOKEN, cert=certs["rogue.pem"], key=certs["rogue.key"])
    for argv in commands[:2]:
        code, _out, err = run_cli(capsys, *argv)
        line = one_line(err)
        assert code == 1 and "UNAVAILABLE" in line and "LLAMAFLEET_TLS_CA" in line, line
        tried, refused = tried + 1, refused + 1
    # Half a client certificate, or a CA file that is not there: one line, exit 2.
    for bad in ({"cert": certs["client.pem"]}, {"ca": "/nonexistent/ca.pem"}):
        env(token=TOKEN, **bad)
        code, _out, err = run_cli(capsys, "jobs", "ls", *run)
        line = one_line(err)
        assert code == 2 and "LLAMAFLEET_TLS_" in line, line
        tried, refused = tried + 1, refused + 1

    # `health` on one address: the CA and client certificate, by flag; without them, unreachable.
    env()
    training = state.services["training"].address
    tls = ["--tls-ca", certs["ca.pem"], "--tls-cert", certs["client.pem"]]
    tls += ["--tls-key", certs["client.key"]]
    assert run_cli(capsys, "health", "--address", training, *map(str, tls))[0] == 0
    assert run_cli(capsys, "health", "--address", training)[0] == 1
    tried, refused = tried + 2, refused + 1
    report("cli_auth", cli_calls=tried, refused=refused)


def test_the_python_client_reaches_each_service_only_with_the_token_and_certificates(secured, env):
    state, certs, _model = secured
    env()
    addresses = {name: state.services[name].address for name in cluster.SERVICES}
    calls = {
        "data": lambda c: c.data.ListDatasets(dapi.ListDatasetsRequest()),
        "training": lambda c: c.training.ListTrainingJobs(tapi.ListTrainingJobsRequest()),
        "rollout": lambda c: c.rollout.ListAdapters(rapi.ListAdaptersRequest()),
        "reward": lambda c: c.reward.ScoreRollouts(wapi.ScoreRolloutsRequest()),
    }
    mtls = {"tls_ca": str(certs["ca.pem"])}
    mtls |= {"tls_cert": str(certs["client.pem"]), "tls_key": str(certs["client.key"])}
    rogue = {**mtls, "tls_cert": str(certs["rogue.pem"]), "tls_key": str(certs["rogue.key"])}
    cases = {
        "token + mutual TLS": (Credentials(token=TOKEN, **mtls), None),
        "no token": (Credentials(**mtls), grpc.StatusCode.UNAUTHENTICATED),
        "wrong token": (Credentials(token="x" + TOKEN, **mtls), grpc.StatusCode.UNAUTHENTICATED),
        "plaintext": (Credentials(token=TOKEN), grpc.StatusCode.UNAVAILABLE),
        "no client certificate": (
            Credentials(token=TOKEN, tls_ca=mtls["tls_ca"]),
            grpc.StatusCode.UNAVAILABLE,
        ),
        "certificate from another CA": (
            Credentials(token=TOKEN, **rogue),
            grpc.StatusCode.UNAVAILABLE,
        ),
    }
    outcomes = {}
    for label, (credentials, expected) in cases.items():
        with Client(addresses, credentials=credentials, timeout=10, retries=0) as client:
            for name, call in calls.items():
                try:
                    call(client)
                    code = grpc.StatusCode.OK
                except RpcError as exc:
                    code = exc.code
                outcomes[label, name] = code
                if expected is None:  # past the guard: the service's own answer
                    assert code not in (
                        grpc.StatusCode.UNAUTHENTICATED,
                        grpc.StatusCode.UNAVAILABLE,
                    ), (label, name, code)
                else:
                    assert code == expected, (label, name, code)
    # cluster.connect takes the recorded TLS files and LLAMAFLEET_TOKEN from the environment.
    env(token=TOKEN)
    with cluster.connect(state.run_dir) as client:
        client.training.ListTrainingJobs(tapi.ListTrainingJobsRequest())
    refused = sum(1 for (label, _n), _c in outcomes.items() if cases[label][1] is not None)
    report("python_client_auth", calls=len(outcomes), refused=refused)


def _job_spec(model: Path, data_file: Path) -> tpb.TrainingJobSpec:
    source = data_pb2.DatasetSource(
        files=data_pb2.FileSource(paths=[str(data_file)]),
        format=data_pb2.FormatOptions(format=data_pb2.DATASET_FORMAT_ALPACA),
    )
    return tpb.TrainingJobSpec(
        job_id=JOB,
        base_model=str(model),
        stage=tpb.STAGE_SFT,
        compute_dtype=tpb.COMPUTE_DTYPE_FLOAT32,
        dataset=tpb.DatasetRef(
            spec=data_pb2.DatasetSpec(
                sources=[source], tokenization=data_pb2.TokenizationOptions(cutoff_len=64)
            )
        ),
        finetuning=tpb.FinetuningConfig(
            type=tpb.FINETUNING_TYPE_LORA,
            lora=tpb.LoraConfig(rank=4, target_modules=["q_proj", "v_proj"]),
        ),
        hyperparameters=tpb.Hyperparameters(
            learning_rate=1e-3, max_steps=2, logging_steps=1, per_device_batch_size=4
        ),
    )


@pytest.mark.slow  # the job's runner imports torch and trains two steps: ~20-40 s on 2 cores
def test_calls_between_services_carry_the_token_and_certificate(secured, env, tmp_path):
    """training's job -> data (PrepareDataset, StreamBatches) and rollout -> training
    (FetchAdapter) over mutual TLS with the token; without them training refuses the fetch."""
    state, certs, model = secured
    env(token=TOKEN)
    data_file = model.parent / "train.jsonl"  # under the cluster's --root
    rows = [{"instruction": f"Repeat: w{i:02d}", "output": f"w{i:02d}"} for i in range(16)]
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with cluster.connect(state.run_dir, timeout=60) as client:
        spec = _job_spec(model, data_file)
        client.training.CreateTrainingJob(tapi.CreateTrainingJobRequest(spec=spec))
        watch = tapi.WatchTrainingJobRequest(job_id=JOB)
        events = [r.event for r in client.training.WatchTrainingJob(watch, timeout=300)]
        runner_log = Path(state.run_dir, "jobs", JOB, "runner.log")
        final = events[-1].state_change
        assert final.state == tpb.JOB_STATE_SUCCEEDED, (final.message, runner_log.read_text())
        # The runner prepared its dataset on the data service (not from a local file).
        listed = client.data.ListDatasets(dapi.ListDatasetsRequest()).datasets
        assert f"{JOB}-train" in {d.id for d in listed}
        job = client.training.GetTrainingJob(tapi.GetTrainingJobRequest(job_id=JOB)).job
        version = job.adapter_versions[-1].version

        # The rollout worker fetches the adapter from training (its AdapterCache, over mTLS with
        # training_token) to generate with it.
        request = rapi.GenerateRequest(
            prompt_text="Repeat: w01",
            adapter=common_pb2.AdapterRef(id=JOB, version=version),
            sampling=rollout_pb2.SamplingParams(temperature=0.0, max_tokens=3),
        )
        replies = list(client.rollout.Generate(request, timeout=120))
        assert replies[-1].finished.adapter_version == version

    # The same fetch, the way a worker makes it, without the token or the client certificate.
    ref = common_pb2.AdapterRef(id=JOB, version=version)
    training = state.services["training"].address
    ca, cert, key = (str(certs[f]) for f in ("ca.pem", "client.pem", "client.key"))
    env(ca=ca, cert=cert, key=key)  # what `up` puts in each service's environment
    fetched = AdapterCache(tmp_path / "ok", training, auth_token=TOKEN).fetch(ref)
    assert fetched.sha256 == job.adapter_versions[-1].sha256
    with pytest.raises(FailedPrecondition) as err:
        AdapterCache(tmp_path / "no-token", training).fetch(ref)
    assert "training_token" in str(err.value) and err.value.reason == "TRAINING_UNAUTHENTICATED"
    env(ca=ca)  # TLS, no client certificate
    with pytest.raises(Unavailable):
        AdapterCache(tmp_path / "no-cert", training, auth_token=TOKEN, timeout_s=10).fetch(ref)
    env()  # plaintext
    with pytest.raises(Unavailable) as err:
        AdapterCache(tmp_path / "plain", training, auth_token=TOKEN, timeout_s=10).fetch(ref)
    assert "LLAMAFLEET_TLS_CA" in str(err.value)
    report("service_to_service_auth", job_steps=2, fetches=4, refused=3)


def test_add_worker_needs_the_clusters_token(secured, env, capsys):
    state, _certs, _model = secured
    run = ["--run-dir", state.run_dir]
    for token in (None, "not-" + TOKEN):
        env(**({"token": token} if token else {}))
        code, _out, err = run_cli(capsys, "add-worker", "reward", *run)
        line = one_line(err)
        assert code == 2 and "LLAMAFLEET_TOKEN" in line and "token" in line, line
    assert "reward-2" not in cluster.ClusterState.load(state.run_dir).services
    env(token=TOKEN)
    started = time.monotonic()
    code, out, err = run_cli(capsys, "add-worker", "reward", *run)
    assert code == 0, err
    health = cluster.status(state.run_dir)["services"]["reward-2"]["health"]
    assert health == "SERVING", (health, time.monotonic() - started)


def test_the_private_redis_wants_tls_a_certificate_and_its_password(secured):
    state, certs, _model = secured
    assert state.redis_url.startswith("rediss://:")
    assert redis.Redis.from_url(state.redis_url).ping()
    port = state.redis_port
    ca, cert, key = (certs[f] for f in ("ca.pem", "client.pem", "client.key"))
    tls = f"ssl_ca_certs={ca}&ssl_certfile={cert}&ssl_keyfile={key}"
    with pytest.raises(redis.AuthenticationError):  # TLS and a certificate, no password
        redis.Redis.from_url(f"rediss://127.0.0.1:{port}/0?{tls}").ping()
    password = redis.Redis.from_url(state.redis_url).get_connection_kwargs()["password"]
    for url in (
        f"redis://:{password}@127.0.0.1:{port}/0",  # plaintext to the TLS port
        f"rediss://:{password}@127.0.0.1:{port}/0?ssl_ca_certs={ca}",  # no client certificate
    ):
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(url, socket_timeout=5).ping()
    mode = Path(state.run_dir, cluster.STATE_FILE).stat().st_mode & 0o777
    assert mode == 0o600  # cluster.json holds that password


def test_up_refuses_half_a_tls_setup_before_starting_anything(tmp_path, env, capsys):
    env()
    certs = make_certs(tmp_path / "certs")
    run = tmp_path / "run"
    code, _out, err = run_cli(capsys, "up", "--run-dir", str(run), "--tls-ca", str(certs["ca.pem"]))
    line = one_line(err)
    assert code == 2 and "--tls-cert" in line and "--tls-key" in line, line
    argv = ["up", "--run-dir", str(run), "--tls-ca", str(tmp_path / "missing.pem")]
    argv += ["--tls-cert", str(certs["server.pem"]), "--tls-key", str(certs["server.key"])]
    code, _out, err = run_cli(capsys, *argv)
    assert code == 2 and "missing.pem" in one_line(err)
    assert not (run / cluster.STATE_FILE).exists()


def test_credentials_take_the_environment_over_what_up_recorded(tmp_path):
    recorded = {"tls_ca": "/run/ca.pem", "tls_cert": "/run/svc.pem", "tls_key": "/run/svc.key"}
    assert Credentials.from_env({}, **recorded) == Credentials("", **recorded)
    env = {"LLAMAFLEET_TOKEN": "t", "LLAMAFLEET_TLS_CA": "/mine/ca.pem", "LLAMAFLEET_TLS_KEY": ""}
    assert Credentials.from_env(env, **recorded) == Credentials(
        "t", "/mine/ca.pem", "/run/svc.pem", "/run/svc.key"
    )  # an empty variable counts as unset
    pair = {"LLAMAFLEET_TLS_CERT": "/mine/me.pem", "LLAMAFLEET_TLS_KEY": "/mine/me.key"}
    assert Credentials.from_env(pair, **recorded).tls_key == "/mine/me.key"
    with pytest.raises(CredentialsError, match="LLAMAFLEET_TLS_KEY"):  # never half of each
        Credentials.from_env({"LLAMAFLEET_TLS_CERT": "/mine/me.pem"}, **recorded)
    (tmp_path / "not.pem").write_text("hello")
    for ca, detail in ((tmp_path / "missing.pem", "cannot read"), (tmp_path / "not.pem", "PEM")):
        with pytest.raises(CredentialsError, match=detail) as err:
            Credentials(tls_ca=str(ca)).channel_credentials()
        assert "LLAMAFLEET_TLS_CA" in str(err.value)
    assert Credentials().channel_credentials() is None  # plaintext
