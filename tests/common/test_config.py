"""Configuration layers: defaults < YAML < env < key=value, and clear errors for bad keys."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass

import pytest

from services.common.config import ConfigError, ServerConfig, load_config


@dataclass(frozen=True)
class DemoConfig(ServerConfig):
    workers: int = 2
    ratio: float = 0.5
    verbose: bool = False
    name: str = "demo"


def test_precedence_defaults_yaml_env_args(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("workers: 3\nratio: 0.25\nname: from-yaml\nverbose: true\n")
    env = {"LLAMAFLEET_DEMO_WORKERS": "4", "LLAMAFLEET_DEMO_NAME": "from-env"}
    cfg = load_config(DemoConfig, "demo", ["--config", str(cfg_file), "workers=5"], env)
    assert cfg.workers == 5  # argument beats env beats yaml
    assert cfg.name == "from-env"  # env beats yaml
    assert cfg.ratio == 0.25  # yaml beats default
    assert cfg.verbose is True
    assert cfg.port == 0  # default kept
    with pytest.raises(FrozenInstanceError):
        cfg.workers = 1  # type: ignore[misc]


def test_unknown_key_names_the_nearest_in_every_layer(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'workrs'.*did you mean 'workers'"):
        load_config(DemoConfig, "demo", ["workrs=3"], {})
    with pytest.raises(ConfigError, match=r"LLAMAFLEET_DEMO_PROT.*did you mean 'port'"):
        load_config(DemoConfig, "demo", [], {"LLAMAFLEET_DEMO_PROT": "1"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_concurent_rpcs: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*did you mean 'max_concurrent_rpcs'"):
        load_config(DemoConfig, "demo", ["--config", str(bad)], {})


def test_other_services_env_is_ignored():
    cfg = load_config(DemoConfig, "demo", [], {"LLAMAFLEET_DATA_PORT": "99", "HOME": "/x"})
    assert cfg.port == 0


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("workers=three", "argument 'workers=three'"),
        ("ratio=abc", "ratio=abc"),
        ("verbose=maybe", "not a boolean"),
        ("workers=2.5", "not an integer"),
        ("port=70000", "not a TCP port"),
    ],
)
def test_bad_values_say_where(arg, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DemoConfig, "demo", [arg], {})


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(DemoConfig, "demo", ["--config", str(tmp_path / "nope.yaml")], {})
    broken = tmp_path / "broken.yaml"
    broken.write_text("workers: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(DemoConfig, "demo", ["--config", str(broken)], {})
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(DemoConfig, "demo", ["--config", str(listy)], {})


def test_non_loopback_bind_needs_a_token():
    with pytest.raises(ConfigError, match="refusing to bind '0.0.0.0'.*auth_token"):
        load_config(DemoConfig, "demo", ["host=0.0.0.0"], {})
    cfg = load_config(DemoConfig, "demo", ["host=0.0.0.0", "auth_token=s3cret"], {})
    assert cfg.host == "0.0.0.0"
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        assert load_config(DemoConfig, "demo", [f"host={host}"], {}).host == host


def test_tls_fields_must_come_together():
    with pytest.raises(ConfigError, match="tls_cert and tls_key"):
        load_config(DemoConfig, "demo", ["tls_cert=a.pem"], {})
    with pytest.raises(ConfigError, match="mutual TLS"):
        load_config(DemoConfig, "demo", ["tls_client_ca=ca.pem"], {})
