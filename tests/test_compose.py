"""docker-compose files: valid against the Compose specification, and the same topology as
`llamafleet up`. The containers themselves are started by scripts/compose_smoke.sh (a Docker
daemon, the images, the demo's SFT and PPO jobs through them); these checks need no Docker.

The schema is the Compose specification's JSON schema as shipped in the docker-compose 1.29.2
wheel; scripts/setup.sh extracts it to .venv/share/compose-spec/compose_spec.json.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from llamafleet import cluster

from services.common.config import ConfigError, load_config
from services.data.config import DataConfig
from services.reward.config import RewardConfig
from services.rollout.config import RolloutConfig
from services.training.config import TrainingConfig

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose"
SCHEMA = Path(sys.prefix) / "share" / "compose-spec" / "compose_spec.json"
CONFIGS = {
    "data": DataConfig,
    "training": TrainingConfig,
    "rollout": RolloutConfig,
    "reward": RewardConfig,
}


def _load(name: str) -> dict:
    return yaml.safe_load((COMPOSE / name).read_text())


@pytest.fixture(scope="module")
def schema() -> dict:
    if not SCHEMA.exists():
        pytest.fail(f"{SCHEMA} is missing: run scripts/setup.sh (it extracts the schema)")
    import json

    return json.loads(SCHEMA.read_text())


@pytest.mark.parametrize("name", ["docker-compose.yaml", "docker-compose.gpu.yaml"])
def test_files_follow_the_compose_specification(schema, name):
    jsonschema.Draft201909Validator(schema).validate(_load(name))


def test_the_schema_check_catches_mistakes(schema):
    broken = _load("docker-compose.yaml")
    broken["services"]["data"]["healthcheck"]["retries"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft201909Validator(schema).validate(broken)


def test_same_services_as_the_local_cluster():
    services = _load("docker-compose.yaml")["services"]
    assert {n for n, s in services.items() if "profiles" not in s} == {"redis", *cluster.SERVICES}
    for name in cluster.SERVICES:
        svc = services[name]
        assert svc["build"]["target"] == name
        env = svc["environment"]
        assert env[f"LLAMAFLEET_{name.upper()}_HOST"] == "0.0.0.0"
        # a non-loopback bind needs a token: the service refuses to start without one
        assert "LLAMAFLEET_TOKEN" in env[f"LLAMAFLEET_{name.upper()}_AUTH_TOKEN"]
        redis_key = f"LLAMAFLEET_{name.upper()}_REDIS_URL"
        assert (redis_key in env) == (name in cluster.USES_REDIS)
        assert "llamafleet" in svc["healthcheck"]["test"] and "health" in svc["healthcheck"]["test"]
    assert services["training"]["environment"]["LLAMAFLEET_TRAINING_DATA_ADDRESS"] == "data:50051"
    for name in ("rollout", "reward"):  # workers fetch adapter versions from training
        env = services[name]["environment"]
        assert env[f"LLAMAFLEET_{name.upper()}_TRAINING_ADDRESS"] == "training:50052"
        assert "LLAMAFLEET_TOKEN" in env[f"LLAMAFLEET_{name.upper()}_TRAINING_TOKEN"]


def test_every_setting_is_a_real_config_field_and_loads():
    """Each LLAMAFLEET_<SERVICE>_<FIELD> in the files loads through the service's own config."""
    services = _load("docker-compose.yaml")["services"]
    shared = dict(
        line.split("=", 1)
        for line in (COMPOSE / "llamafleet.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for name, config_cls in CONFIGS.items():
        env = {**shared, **services[name]["environment"]}
        env = {k: re.sub(r"\$\{LLAMAFLEET_TOKEN[^}]*\}", "tok", str(v)) for k, v in env.items()}
        env = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v) for k, v in env.items()}
        try:
            config = load_config(config_cls, name, [], env)
        except ConfigError as exc:
            pytest.fail(f"compose settings of {name} do not load: {exc}")
        assert config.host == "0.0.0.0" and config.auth_token == "tok"
        if name in ("rollout", "reward"):
            assert config.training_token == "tok"


def test_scaled_workers_publish_no_fixed_host_port():
    services = _load("docker-compose.yaml")["services"]
    for name in ("rollout", "reward"):
        assert "ports" not in services[name], f"{name} would collide under --scale"


def test_gpu_override_reserves_gpus_for_training_and_rollout():
    gpu = _load("docker-compose.gpu.yaml")["services"]
    assert set(gpu) == {"training", "rollout"}
    for svc in gpu.values():
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]


def test_redis_is_configured_for_queues():
    command = " ".join(_load("docker-compose.yaml")["services"]["redis"]["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command


def test_dockerfile_has_a_target_per_service():
    text = (COMPOSE / "Dockerfile").read_text()
    for name in cluster.SERVICES:
        assert re.search(rf"^FROM base AS {name}$", text, re.M)
        assert f'"services.{name}"' in text


def _dockerfile_targets() -> dict[str, str]:
    """Target name -> its lines, from compose/Dockerfile."""
    targets, name = {}, None
    for line in (COMPOSE / "Dockerfile").read_text().splitlines():
        if m := re.match(r"FROM \S+ AS (\w+)$", line):
            name = m.group(1)
            targets[name] = ""
        elif name:
            targets[name] += line + "\n"
    return targets


def test_the_public_images_stay_the_defaults():
    text = (COMPOSE / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\} AS base$", text, re.M)
    services = _load("docker-compose.yaml")["services"]
    assert services["redis"]["image"] == "${LLAMAFLEET_REDIS_IMAGE:-redis:7}"
    for name in cluster.SERVICES:
        args = services[name]["build"]["args"]
        assert args["BASE_IMAGE"] == "${LLAMAFLEET_BASE_IMAGE:-python:3.11-slim}"


def test_state_lives_in_the_volumes_and_the_services_are_not_root():
    """Each service's state folder is on its volume (data, training) or under the folder the
    image gives its user (the workers' adapter caches); the image and the compose file name the
    same folders, so `docker run` of an image keeps its state in the same place."""
    services = _load("docker-compose.yaml")["services"]
    targets = _dockerfile_targets()
    state = {"data": "datasets_dir", "training": "jobs_dir", "rollout": "adapter_cache_dir",
             "reward": "adapter_cache_dir"}  # fmt: skip
    base = targets["base"]
    assert "useradd --create-home --uid 10001 llamafleet" in base
    assert re.search(r"chown llamafleet:llamafleet /var/lib/llamafleet /models", base)
    for name, key in state.items():
        env_key = f"LLAMAFLEET_{name.upper()}_{key.upper()}"
        folder = services[name]["environment"][env_key]
        assert folder.startswith("/var/lib/llamafleet/"), (name, folder)
        assert f"ENV {env_key}={folder}" in targets[name]  # the image says the same
        volumes = {v.split(":")[1]: v.split(":")[0] for v in services[name].get("volumes", [])}
        if name in ("data", "training"):  # state that must outlive the container
            assert volumes.get("/var/lib/llamafleet") in ("datasets", "jobs"), name
        users = re.findall(r"^USER (\S+)$", base + targets[name], re.M)
        assert users[-1] == "llamafleet", name


def test_the_second_base_profile_adds_one_rollout_and_reward_service_on_their_own_queues():
    """Profile second-base: the same services as rollout/reward on LLAMAFLEET_BASE_MODEL_2, and
    every routing service told the default base, so the queues split by base."""
    services = _load("docker-compose.yaml")["services"]
    extra = {n: s for n, s in services.items() if "profiles" in s}
    assert set(extra) == {"rollout-2nd-base", "reward-2nd-base"}
    given = {
        "LLAMAFLEET_TOKEN": "tok",
        "LLAMAFLEET_BASE_MODEL": "/models/Qwen2.5-0.5B",
        "LLAMAFLEET_BASE_MODEL_2": "/models/llama-3.2-1b",
        "LLAMAFLEET_DEFAULT_BASE": "qwen2.5-0.5b",
    }

    def config(service: str, kind: str):
        env = {}
        for key, value in services[service]["environment"].items():
            value = re.sub(r"\$\{([A-Z_0-9]+)[^}]*\}", lambda m: given.get(m[1], ""), str(value))
            env[key] = value
        return load_config(CONFIGS[kind], kind, [], env)

    for kind in ("rollout", "reward"):
        second = services[f"{kind}-2nd-base"]
        assert second["profiles"] == ["second-base"] and second["build"]["target"] == kind
        assert second["healthcheck"] == services[kind]["healthcheck"] and "ports" not in second
        default, other = config(kind, kind), config(f"{kind}-2nd-base", kind)
        assert default.results_stream() == "llamafleet:rollout:results"
        assert other.results_stream() == "llamafleet:rollout:results:llama-3.2-1b"
    assert config("rollout-2nd-base", "rollout").tasks_stream() == (
        "llamafleet:rollout:tasks:llama-3.2-1b"
    )
    assert config("training", "training").default_base == "qwen2.5-0.5b"
    given.pop("LLAMAFLEET_DEFAULT_BASE")  # one base: the single-base queues, as before
    assert config("rollout-2nd-base", "rollout").tasks_stream() == "llamafleet:rollout:tasks"
