"""The local cluster: ``llamafleet up`` / ``status`` / ``down`` on one machine, as processes.

``up`` starts a private ``redis-server`` (unless a Redis URL is given), then the four services
as ``python -m services.<name>`` processes bound to loopback on free ports, waits until each
answers health SERVING, and records everything in ``<run_dir>/cluster.json``; the other commands
read that file. Logs go to ``<run_dir>/logs/``.

With a token and/or TLS files, every service requires them and every call between services
carries them: each service gets ``auth_token`` (and the workers ``training_token``) and
``tls_cert``/``tls_key``/``tls_client_ca`` (mutual TLS), and its outgoing calls (a training job
reading from data, workers fetching adapters from training) take the CA and the same certificate
from ``LLAMAFLEET_TLS_CA``/``_CERT``/``_KEY`` in its environment. The private Redis then gets a
random password, and with TLS listens only on a TLS port that wants the same certificates. The
token is never written to disk (later commands read ``LLAMAFLEET_TOKEN``); the TLS file paths
are recorded, and ``cluster.json``, which may hold the Redis password, is readable by its owner
only.

What requests may touch (DESIGN.md section 6, trust model): the services read request paths
only under their roots, which ``up`` sets to the working directory, the run directory and any
``roots`` given (``--root DIR``), plus the base model's folder for models; the run directory's
own secrets (``cluster.json`` with the Redis password, Redis' files, the logs) and the TLS key
are denied paths that no request may read even though they lie under a root.

Several base models (``base_models``): one rollout and one reward process (times
``rollout_workers``/``reward_workers``) per base, each serving that base; the first base is the
default (its processes are ``rollout``, ``reward``, ``rollout-2``...; its queues keep the
single-base names), the others' processes are ``rollout@<name>``, ``reward@<name>``... with
their own queues (``llamafleet.bases``). Training, rollout and reward are always told the
default base (with one base too: nothing is named differently, its queues keep the single-base
names), so each PPO job's tasks go to the workers of its own base, and ``add_base``
(``llamafleet add-base DIR``) can start the workers of one more base in a running cluster without
restarting anything. ``cluster.json`` records the bases (``bases``: name -> folder) and each
process's address; ``addresses_for`` gives a client the services of one base.

This module starts services as processes and talks to them over gRPC and Redis; it never imports
a service (the clients/services boundary is checked by import-linter).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llamafleet import redis_urls
from llamafleet.bases import BASE_ALIAS, base_name
from llamafleet.client import Client, RpcError
from llamafleet.credentials import (
    ENV_TLS_CA,
    ENV_TLS_CERT,
    ENV_TLS_KEY,
    ENV_TOKEN,
    Credentials,
    CredentialsError,
    redact_url,
)
from llamafleet.dead_letters import DEADLETTER_STREAM, STREAM_PREFIX, dead_letters
from llamafleet.redis_local import LocalRedis, RedisTls, free_port
from llamafleet.training.v1 import training_service_pb2

DEFAULT_RUN_DIR = os.environ.get("LLAMAFLEET_RUN_DIR", ".llamafleet")
SERVICES = ("data", "training", "rollout", "reward")
USES_REDIS = {"training", "rollout", "reward"}
STATE_FILE = "cluster.json"


class ClusterError(RuntimeError):
    """Something the user can fix: the message says what and how."""


@dataclass
class ServiceProcess:
    name: str
    pid: int
    address: str


@dataclass
class ClusterState:
    run_dir: str
    redis_url: str
    redis_pid: int | None = None  # set when `up` started the Redis itself
    redis_port: int | None = None
    base_model: str = ""  # what the rollout and reward services serve ("" = none): the default
    bases: dict[str, str] = field(default_factory=dict)  # base name -> folder; first = default
    # the services were told the default base (`up` of this version): add_base may route by base
    routes_by_base: bool = False
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    settings: dict[str, dict[str, str]] = field(default_factory=dict)  # extra, per service
    token_required: bool = False  # the services want LLAMAFLEET_TOKEN (never stored)
    tls_ca: str = ""  # mutual TLS: the CA, and the certificate every service serves and
    tls_cert: str = ""  # presents to the others (absolute paths)
    tls_key: str = ""
    roots: list[str] = field(default_factory=list)  # request paths: under these only (absolute)
    read_token: str = field(default="", repr=False)  # in memory while starting; never saved

    def save(self) -> None:
        path = Path(self.run_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # may hold a password
        saved = asdict(self)
        del saved["read_token"]  # tokens are never written to disk
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(saved, indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> ClusterState:
        path = Path(run_dir) / STATE_FILE
        if not path.exists():
            raise ClusterError(f"no cluster in {run_dir} (no {STATE_FILE}); run `llamafleet up`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            services = {k: ServiceProcess(**v) for k, v in data.pop("services", {}).items()}
            state = cls(services=services, **data)
        except (UnicodeDecodeError, ValueError, TypeError, AttributeError) as exc:
            raise ClusterError(
                f"{path} is unreadable ({type(exc).__name__}); run `llamafleet down` and "
                "`llamafleet up` to recreate it"
            ) from None
        if state.base_model and not state.bases:  # written before there were several bases
            state.bases = {base_name(state.base_model): state.base_model}
        return state

    @property
    def default_base(self) -> str:
        """The default base's name (the first base; "" without a base model). Its processes and
        queues keep the single-base names, so a one-base cluster names nothing differently."""
        return next(iter(self.bases), "")

    def base(self, pick: str = "") -> tuple[str, str]:
        """``(name, folder)`` of the base ``pick`` names (a base name, ``base``, or a folder;
        empty: the default base). ClusterError, listing the bases, when none matches."""
        if not self.bases:
            raise ClusterError(
                "no base model: start the cluster with `llamafleet up --base-model DIR`"
            )
        if not pick or pick == BASE_ALIAS:
            return next(iter(self.bases.items()))
        if pick in self.bases:
            return pick, self.bases[pick]
        folder = str(Path(pick).resolve())
        for name, path in self.bases.items():
            if path == folder:
                return name, path
        raise ClusterError(
            f"base model {pick!r} is not served by this cluster; its bases: "
            + ", ".join(f"{n} ({p})" for n, p in self.bases.items())
        )

    def base_of(self, process: str) -> str:
        """The name of the base a rollout/reward process serves (``rollout@b`` -> ``b``)."""
        _, _, base = process.partition("@")
        return base or next(iter(self.bases), "")

    def addresses_for(self, base: str = "") -> dict[str, str]:
        """Service addresses for a client of base ``base`` (a name; empty: the default):
        ``rollout`` and ``reward`` are that base's first processes."""
        out = {n: s.address for n, s in self.services.items() if "@" not in n}
        if not self.bases and not base:
            return out
        name, _ = self.base(base)
        if name != next(iter(self.bases)):
            for kind in ("rollout", "reward"):
                svc = self.services.get(worker_name(kind, 1, name, self.default_base))
                if svc is not None:
                    out[kind] = svc.address
        return out


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this process counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def credentials_for(state: ClusterState) -> Credentials:
    """What a client of this cluster presents: ``LLAMAFLEET_TOKEN``, and the TLS files ``up``
    recorded (``LLAMAFLEET_TLS_*`` in the environment override them)."""
    return Credentials.from_env(tls_ca=state.tls_ca, tls_cert=state.tls_cert, tls_key=state.tls_key)


def connect(run_dir: str | Path = DEFAULT_RUN_DIR, **kw) -> Client:
    """A ``Client`` of the local cluster that ``up`` recorded in ``run_dir``, with the TLS files
    it was started with (the environment overrides them) unless ``credentials`` are given."""
    state = ClusterState.load(run_dir)
    kw.setdefault("credentials", credentials_for(state))
    return Client({name: svc.address for name, svc in state.services.items()}, **kw)


def check_health(
    address: str, timeout: float = 2.0, token: str = "", credentials: Credentials | None = None
) -> str:
    """The overall health status name of the server at ``address`` ('UNREACHABLE' on failure).

    Health needs no token, but a TLS service needs ``credentials``' CA (and, with mutual TLS,
    their certificate); without them the answer is UNREACHABLE."""
    credentials = credentials or Credentials()
    with credentials.channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        metadata = [("authorization", f"Bearer {token}")] if token else None
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout, metadata=metadata)
        except grpc.RpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def up(
    run_dir: str | os.PathLike,
    redis_url: str | None = None,
    timeout: float = 60.0,
    python: str = sys.executable,
    base_model: str | None = None,
    base_models: list[str] | None = None,
    rollout_workers: int = 1,
    reward_workers: int = 1,
    settings: dict[str, dict[str, str]] | None = None,
    token: str = "",
    tls_ca: str = "",
    tls_cert: str = "",
    tls_key: str = "",
    roots: list[str] | None = None,
    read_token: str = "",
) -> ClusterState:
    """Start Redis (if needed) and the four services; return once all are SERVING.

    ``base_model`` (a local Hugging Face folder) is the model the rollout and reward services
    serve; without one they start but answer generation and model scoring with
    FAILED_PRECONDITION. ``base_models``: several base folders (``base_model``, if given too,
    comes first); each gets its own rollout and reward processes and queues, the first is the
    default (module docstring). ``rollout_workers`` / ``reward_workers`` processes of those two services
    share the work queues (each also serves gRPC on its own port; the first of each kind is named
    ``rollout`` / ``reward``, the others ``rollout-2`` ...). ``settings`` adds service settings
    (``{"rollout": {"worker_lease_ms": "2000"}}``), passed like the others by environment.

    ``token`` (the services' ``auth_token``) and ``tls_ca``/``tls_cert``/``tls_key`` (mutual TLS:
    all three; the certificate must be valid for 127.0.0.1, and for clients too if it names key
    usages) secure every service and every call between them, and the private Redis.

    ``roots``: folders, beyond the working directory and ``run_dir``, that requests may name
    paths in (datasets, tokenizers, models, exports). ``read_token`` (with ``token``): a second
    token that may call only the RPCs that read (list, get, watch, preview, generate, ...).
    """
    if read_token and not token:
        raise ClusterError("a read-only token needs the admin token too (LLAMAFLEET_TOKEN)")
    if rollout_workers < 1 or reward_workers < 1:
        raise ClusterError("rollout_workers and reward_workers must be at least 1")
    tls = _check_tls_files(tls_ca, tls_cert, tls_key)
    bases = _bases([base_model] if base_model else [], base_models or [])
    run = Path(run_dir).resolve()
    if (run / STATE_FILE).exists():
        old = ClusterState.load(run)
        if any(pid_alive(s.pid) for s in old.services.values()):
            raise ClusterError(f"a cluster is already running in {run}; `llamafleet down` first")
    logs = run / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    state = ClusterState(
        run_dir=str(run),
        redis_url=redis_url or "",
        base_model=next(iter(bases.values()), ""),
        bases=bases,
        routes_by_base=bool(bases),
        settings={k: dict(v) for k, v in (settings or {}).items()},
        token_required=bool(token),
        roots=_roots(run, roots or []),
        **tls,
    )
    if not redis_url:
        # Secured services get a secured queue: without a password any local user could add
        # work items; with TLS the plaintext port is closed and clients need the certificate.
        local = LocalRedis(
            run / "redis",
            free_port(),
            password=secrets.token_urlsafe(18) if (token or tls) else None,
            tls=RedisTls(state.tls_cert, state.tls_key, state.tls_ca) if tls else None,
        ).start()
        state.redis_url, state.redis_pid, state.redis_port = (
            local.url,
            local.process.pid,
            local.port,
        )
    else:
        _ping_redis(redis_url)
    state.save()

    state.read_token = read_token  # for _service_env only: never saved (see ClusterState)
    try:
        deadline = time.monotonic() + timeout
        # data, then training (it needs data's address), then the workers (they need training's).
        default, workers = state.default_base, []
        for base in state.bases or {"": ""}:
            for kind, count in (("rollout", rollout_workers), ("reward", reward_workers)):
                workers += [worker_name(kind, i, base, default) for i in range(1, count + 1)]
        for group in (("data",), ("training",), tuple(workers)):
            for name in group:
                _start_service(state, name, run, python, _service_env(state, name, token))
            for name in group:
                svc = state.services[name]
                svc.address = _wait_serving(state, name, svc.pid, run, deadline)
            state.save()
    except BaseException:
        down(run)
        raise
    return state


def _bases(first: list[str], more: list[str]) -> dict[str, str]:
    """Base name -> absolute folder for each of ``first + more``, in order; names must differ."""
    bases: dict[str, str] = {}
    for raw in [*first, *more]:
        folder = str(Path(raw).expanduser().resolve())
        if folder in bases.values():
            continue
        try:
            name = base_name(folder)
        except ValueError as exc:
            raise ClusterError(f"--base-model {raw}: {exc}") from None
        if name in bases or (name == BASE_ALIAS and bases):
            raise ClusterError(
                f"--base-model {raw}: its base name {name!r} (the folder's name) is taken by "
                f"{bases.get(name, 'the default base')}; rename one folder (model names and "
                "queues are named after it)"
            )
        bases[name] = folder
    return bases


def _roots(run: Path, extra: list[str]) -> list[str]:
    """The working directory, the run directory and ``extra`` (each must be a folder)."""
    found = []
    for raw in [os.getcwd(), str(run), *extra]:
        path = Path(raw).expanduser().resolve()
        if not path.is_dir():
            raise ClusterError(f"--root {raw}: not a folder")
        if str(path) not in found:
            found.append(str(path))
    return found


def denied_paths(state: ClusterState) -> list[str]:
    """Paths under the roots that no request may read: the run directory's secrets (the state
    file with the Redis password, Redis' own files, the service logs) and the TLS key."""
    run = Path(state.run_dir)
    denied = [run / STATE_FILE, run / "redis", run / "logs"]
    if state.tls_key:
        denied.append(Path(state.tls_key))
    return [str(p) for p in denied]


def _check_tls_files(ca: str, cert: str, key: str) -> dict[str, str]:
    """The TLS files of a cluster as absolute paths ({} without TLS); all three or none."""
    given = {"tls_ca": ca, "tls_cert": cert, "tls_key": key}
    if not any(given.values()):
        return {}
    missing = [k.replace("_", "-") for k, v in given.items() if not v]
    if missing:
        raise ClusterError(
            "mutual TLS needs --tls-ca, --tls-cert and --tls-key together (the CA, and the "
            f"certificate and key every service serves and presents); missing: --{', --'.join(missing)}"
        )
    paths = {k: str(Path(v).resolve()) for k, v in given.items()}
    try:
        Credentials(**paths).channel_credentials()  # readable, PEM
    except CredentialsError as exc:
        raise ClusterError(str(exc)) from None
    return paths


def worker_name(kind: str, index: int, base: str = "", default_base: str = "") -> str:
    """``rollout``, ``rollout-2``, ...: the cluster's name of the ``index``-th process of a kind
    (of the default base); ``rollout@b``, ``rollout-2@b``, ... for another base ``b``."""
    name = kind if index == 1 else f"{kind}-{index}"
    return f"{name}@{base}" if base and default_base and base != default_base else name


def kind_of(name: str) -> str:
    """The service a cluster process runs (``rollout-2@b`` -> ``rollout``)."""
    return name.partition("@")[0].split("-", 1)[0]


def add_worker(
    run_dir: str | os.PathLike,
    kind: str,
    timeout: float = 60.0,
    python: str = sys.executable,
    token: str = "",
    read_token: str = "",
    base: str = "",
) -> ServiceProcess:
    """Start one more ``rollout`` or ``reward`` process in a running cluster, for the base named
    ``base`` (empty: the default); it joins the work queue's consumer group of that base and
    takes work without anything being restarted. A cluster started
    with a token needs it again (``token``): it is checked against training first; a read-only
    token, if the cluster has one, is passed again as ``read_token`` (it is never stored)."""
    if kind not in ("rollout", "reward"):
        raise ClusterError(f"only rollout and reward workers scale out, not {kind!r}")
    run = Path(run_dir).resolve()
    state = ClusterState.load(run)
    if state.token_required:
        _check_token(state, token)
        state.read_token = read_token
    else:
        token = ""  # like its siblings: no auth_token
    if state.bases:
        base, _ = state.base(base)
    elif base:
        raise ClusterError("this cluster serves no base model; start it with --base-model")

    def name_of(index: int) -> str:
        return worker_name(kind, index, base, state.default_base)

    index = 1
    while name_of(index) in state.services and pid_alive(state.services[name_of(index)].pid):
        index += 1
    name = name_of(index)
    _start_service(state, name, run, python, _service_env(state, name, token))
    svc = state.services[name]
    svc.address = _wait_serving(state, name, svc.pid, run, time.monotonic() + timeout)
    state.save()
    return svc


def add_base(
    run_dir: str | os.PathLike,
    base_model: str,
    rollout_workers: int = 1,
    reward_workers: int = 1,
    timeout: float = 60.0,
    python: str = sys.executable,
    token: str = "",
    read_token: str = "",
) -> tuple[str, list[ServiceProcess]]:
    """Serve one more base model in a running cluster: start ``rollout_workers`` rollout and
    ``reward_workers`` reward processes for the folder ``base_model`` (``rollout@<name>``,
    ``reward@<name>``... on its own queues) and record it in ``cluster.json``'s ``bases``; from
    then on jobs whose ``spec.base_model`` is that folder (by base name) have their tasks served
    by those workers, and the API and chat route its model name to them. Nothing is restarted.

    Refused (ClusterError) when no cluster is running in ``run_dir``, when it serves no base
    model, when the folder is already served or its base name is taken (or is ``base``), and
    when the folder is outside the folders requests may read (``roots``: training and data were
    started with those and read the job's base model there). Returns the base name and the
    started processes; if one fails to start, those started are stopped and nothing is recorded.
    """
    if rollout_workers < 1 or reward_workers < 1:
        raise ClusterError("rollout_workers and reward_workers must be at least 1")
    run = Path(run_dir).resolve()
    state = ClusterState.load(run)
    if not any(pid_alive(s.pid) for s in state.services.values()):
        raise ClusterError(f"no cluster is running in {run}; start one with `llamafleet up`")
    if not state.bases:
        raise ClusterError(
            "this cluster serves no base model: start it with `llamafleet up --base-model DIR` "
            "(the first base is the default)"
        )
    if not state.routes_by_base:
        raise ClusterError(
            "this cluster was started by an older llamafleet whose training service does not "
            "route jobs by base: `llamafleet down` and `llamafleet up` it again first"
        )
    folder = Path(base_model).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise ClusterError(
            f"add-base {base_model}: not a model folder (no config.json in {folder})"
        )
    try:
        name = base_name(str(folder))
    except ValueError as exc:
        raise ClusterError(f"add-base {base_model}: {exc}") from None
    for served_name, served in state.bases.items():
        if served == str(folder):
            raise ClusterError(
                f"add-base {base_model}: {folder} is already served by this cluster (base "
                f"{served_name!r}); `llamafleet add-worker rollout --base {served_name}` adds "
                "workers to it"
            )
    if name in state.bases or name == BASE_ALIAS:
        taken = state.bases.get(name, "the default base's alias")
        raise ClusterError(
            f"add-base {base_model}: its base name {name!r} (the folder's name) is taken by "
            f"{taken}; copy or export the model to a folder of another name (model names and "
            "queues are named after it)"
        )
    if not any(folder.is_relative_to(root) for root in state.roots):
        raise ClusterError(
            f"add-base {base_model}: {folder} is outside the folders this cluster's training and "
            f"data services may read ({', '.join(state.roots)}); put the model under one of them, "
            "or start the cluster with `--root` covering it"
        )
    if state.token_required:
        _check_token(state, token)
        state.read_token = read_token
    else:
        token = ""  # like its siblings: no auth_token
    state.bases[name] = str(folder)
    names = [
        worker_name(kind, i, name, state.default_base)
        for kind, count in (("rollout", rollout_workers), ("reward", reward_workers))
        for i in range(1, count + 1)
    ]
    started: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        for process in names:
            _start_service(state, process, run, python, _service_env(state, process, token))
            started.append(process)
        for process in names:
            svc = state.services[process]
            svc.address = _wait_serving(state, process, svc.pid, run, deadline)
    except BaseException:
        _stop([state.services[n] for n in started])
        for process in started:
            del state.services[process]
        del state.bases[name]
        state.save()
        raise
    state.save()
    return name, [state.services[n] for n in names]


def _check_token(state: ClusterState, token: str) -> None:
    """A cluster started with a token: ``token`` must be it (one call to training)."""
    if not token:
        raise ClusterError(
            f"this cluster was started with a token: set {ENV_TOKEN} to it (a worker without it "
            "would serve unauthenticated and could not fetch adapters)"
        )
    training = state.services.get("training")
    if training is None or not training.address:
        raise ClusterError("this cluster has no training service to check the token with")
    creds = credentials_for(state)
    with Client({"training": training.address}, credentials=creds, token=token, timeout=10) as c:
        try:
            c.training.ListTrainingJobs(training_service_pb2.ListTrainingJobsRequest(page_size=1))
        except RpcError as exc:
            if exc.code == grpc.StatusCode.UNAUTHENTICATED:
                raise ClusterError(
                    f"{ENV_TOKEN} is not the token this cluster was started with (training "
                    "answered UNAUTHENTICATED)"
                ) from None
            raise


def _service_env(state: ClusterState, name: str, token: str = "") -> dict[str, str]:
    """Settings of one service in the local cluster, passed as LLAMAFLEET_<SERVICE>_<FIELD>.

    Everything stateful lives under the run directory; secrets (the token, and the Redis URL
    that may carry a password) go by environment, never on a command line where `ps` would
    show them. ``LLAMAFLEET_TOKEN``/``LLAMAFLEET_TLS_*`` are set (empty without auth/TLS, so
    the caller's own do not leak in) for the calls the service and its jobs make to the others.
    """
    run = Path(state.run_dir)
    name, process = kind_of(name), name
    settings: dict[str, str] = {}
    if name in USES_REDIS:
        settings["redis_url"] = state.redis_url
    roots = os.pathsep.join(state.roots)
    models = os.pathsep.join([*state.roots, *state.bases.values()])
    denied = os.pathsep.join(denied_paths(state))
    if name == "data":
        settings["datasets_dir"] = str(run / "datasets")
        settings["dataset_roots"], settings["model_roots"] = roots, models
        settings["denied_paths"] = denied
    if name == "training":
        settings["data_address"] = state.services["data"].address
        settings["jobs_dir"] = str(run / "jobs")
        settings["model_roots"], settings["export_roots"] = models, roots
        settings["denied_paths"] = denied
    if name in ("training", "rollout", "reward") and state.default_base:
        settings["default_base"] = state.default_base  # which queues keep single-base names
    if name in ("rollout", "reward"):
        settings["training_address"] = state.services["training"].address
        settings["adapter_cache_dir"] = str(run / f"{process}-adapters")
        if state.bases:
            settings["base_model"] = state.bases[state.base_of(process)]
    if token:
        settings["auth_token"] = token
        if state.read_token:
            settings["read_token"] = state.read_token
        if name in ("rollout", "reward"):
            settings["training_token"] = token  # FetchAdapter
    if state.tls_cert:
        settings["tls_cert"], settings["tls_key"] = state.tls_cert, state.tls_key
        settings["tls_client_ca"] = state.tls_ca
    settings.update(state.settings.get(name, {}))
    env = {f"LLAMAFLEET_{name.upper()}_{key.upper()}": value for key, value in settings.items()}
    env[ENV_TOKEN] = token
    env[ENV_TLS_CA], env[ENV_TLS_CERT], env[ENV_TLS_KEY] = (
        state.tls_ca,
        state.tls_cert,
        state.tls_key,
    )
    if name in ("rollout", "reward") and "OMP_NUM_THREADS" not in os.environ:
        # Workers and the training job all run torch on the same cores: OpenMP threads beyond
        # them spin against each other and make every process many times slower (a PPO step's
        # 32 rollouts of a tiny model took 2-18 s instead of under one). A quarter of the cores
        # each; set OMP_NUM_THREADS to choose otherwise.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // 4))
    return env


def _start_service(
    state: ClusterState, name: str, run: Path, python: str, env: dict[str, str]
) -> None:
    addr_file = run / f"{name}.addr"
    addr_file.unlink(missing_ok=True)
    logs = run / "logs"
    args = [
        python, "-m", f"services.{kind_of(name)}",
        "host=127.0.0.1", "port=0",
        f"address_file={addr_file}",
        f"log_file={logs / f'{name}.log'}",
    ]  # fmt: skip
    with open(logs / f"{name}.out", "ab") as out:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **env},
        )
    state.services[name] = ServiceProcess(name, proc.pid, "")
    state.save()


def _wait_serving(state: ClusterState, name: str, pid: int, run: Path, deadline: float) -> str:
    addr_file = run / f"{name}.addr"
    # The cluster's own files, whatever LLAMAFLEET_TLS_* the caller has set for other clusters.
    creds = Credentials(tls_ca=state.tls_ca, tls_cert=state.tls_cert, tls_key=state.tls_key)
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise ClusterError(
                f"service {name} exited during start-up; see {run / 'logs' / (name + '.out')}:\n"
                + _tail(run / "logs" / f"{name}.out")
            )
        if addr_file.exists():
            address = addr_file.read_text().strip()
            if check_health(address, timeout=1.0, credentials=creds) == "SERVING":
                return address
        time.sleep(0.1)
    raise ClusterError(f"service {name} did not become healthy in time; see {run / 'logs'}")


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _redis_client(url: str, timeout: float) -> redis.Redis:
    """A client for ``url`` (one server or a Sentinel URL, :mod:`llamafleet.redis_urls`); a URL
    that cannot work is a ClusterError, not a traceback."""
    try:
        return redis_urls.client(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    except ValueError as exc:
        raise ClusterError(f"Redis URL {redact_url(url)}: {exc}") from None


def _ping_redis(url: str) -> None:
    try:
        _redis_client(url, 2).ping()
    except redis.RedisError as exc:
        raise ClusterError(f"cannot reach Redis at {redact_url(url)}: {exc}") from None


def down(run_dir: str | os.PathLike, timeout: float = 20.0) -> list[str]:
    """Stop the services (SIGTERM: they drain gracefully), then the Redis `up` started."""
    state = ClusterState.load(run_dir)
    deadline = time.monotonic() + timeout
    stopped = _stop(list(state.services.values()), timeout)
    if state.redis_pid and pid_alive(state.redis_pid):
        os.kill(state.redis_pid, signal.SIGTERM)  # redis fsyncs its AOF on SIGTERM
        while pid_alive(state.redis_pid) and time.monotonic() < deadline + 10:
            _reap(state.redis_pid)
            time.sleep(0.05)
        stopped.append("redis")
    (Path(run_dir) / STATE_FILE).unlink(missing_ok=True)
    return stopped


def _stop(services: list[ServiceProcess], timeout: float = 20.0) -> list[str]:
    """SIGTERM the live ``services`` (they drain gracefully), SIGKILL those still alive after
    ``timeout`` seconds; their names."""
    procs = [s for s in services if pid_alive(s.pid)]
    for svc in procs:
        os.kill(svc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for svc in procs:
        while pid_alive(svc.pid) and time.monotonic() < deadline:
            _reap(svc.pid)
            time.sleep(0.05)
        if pid_alive(svc.pid):
            os.kill(svc.pid, signal.SIGKILL)
        _reap(svc.pid)
    return [svc.name for svc in procs]


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@dataclass
class QueueStatus:
    stream: str
    length: int
    group: str
    consumers: int
    pending: int
    lag: int | None


def status(run_dir: str | os.PathLike, dead_letter_limit: int = 10) -> dict:
    """Health of each service, Redis reachability, every llamafleet stream's groups, and the
    dead-letter count with the latest ``dead_letter_limit`` entries (newest first); ``healthy``
    says whether every service process is alive and SERVING and Redis answers, and ``problems``
    lists what is not (one line each). ``ClusterError`` when no cluster was started there."""
    state = ClusterState.load(run_dir)
    creds = Credentials(tls_ca=state.tls_ca, tls_cert=state.tls_cert, tls_key=state.tls_key)
    services = {
        name: {
            "pid": svc.pid,
            "alive": pid_alive(svc.pid),
            "address": svc.address,
            "health": check_health(svc.address, credentials=creds) if svc.address else "UNKNOWN",
            "base": state.base_of(name) if kind_of(name) in ("rollout", "reward") else "",
        }
        for name, svc in state.services.items()
    }
    result = {
        "redis_url": redact_url(state.redis_url),
        "bases": dict(state.bases),
        "services": services,
        "queues": [],
        "dead_letters": 0,
        "dead_letter_entries": [],
    }
    try:
        r = _redis_client(state.redis_url, 2)
        r.ping()
        result["redis"] = "up"
        result["queues"] = [asdict(q) for q in queue_status(r)]
        result["dead_letters"] = r.xlen(DEADLETTER_STREAM)
        result["dead_letter_entries"] = [asdict(d) for d in dead_letters(r, dead_letter_limit)]
    except (redis.RedisError, ClusterError) as exc:
        result["redis"] = f"unreachable: {exc}"
    problems = health_problems(result)
    return {"healthy": not problems, "problems": problems, **result}


def health_problems(report: dict) -> list[str]:
    """What is unhealthy in a ``status`` report: dead service processes, services not SERVING,
    an unreachable Redis."""
    problems = []
    for name, svc in report["services"].items():
        if not svc["alive"]:
            problems.append(f"{name}: process {svc['pid']} is not running")
        if svc["health"] != "SERVING":
            problems.append(f"{name}: health {svc['health']}")
    if report["redis"] != "up":
        problems.append(f"redis: {report['redis']}")
    return problems


def queue_status(r: redis.Redis) -> list[QueueStatus]:
    rows = []
    for key in sorted(r.scan_iter(match=f"{STREAM_PREFIX}*", _type="STREAM")):
        stream = key.decode() if isinstance(key, bytes) else key
        length = r.xlen(stream)
        groups = r.xinfo_groups(stream)
        if not groups:
            rows.append(QueueStatus(stream, length, "-", 0, 0, None))
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            rows.append(
                QueueStatus(stream, length, name, g["consumers"], g["pending"], g.get("lag"))
            )
    return rows


def redis_for(run_dir: str | os.PathLike, redis_url: str | None = None) -> redis.Redis:
    """A client for the cluster's Redis (``redis_url`` overrides the one ``up`` recorded)."""
    url = redis_url or ClusterState.load(run_dir).redis_url
    r = _redis_client(url, 5)
    try:
        r.ping()
    except redis.RedisError as exc:
        raise ClusterError(f"cannot reach Redis at {redact_url(url)}: {exc}") from None
    return r
