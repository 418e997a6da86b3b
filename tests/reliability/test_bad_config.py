"""Bad service configuration: each case is refused by the config loader with a message that says
what and where, and by the service entry point with exit code 2 and one line, no traceback.

Split from test_bad_input.py (item 10 of the reliability battery); these need no running services.
"""

from __future__ import annotations

import pytest

from services.common.config import ConfigError, load_config
from services.common.server import run_service
from services.data.config import DataConfig
from services.reward.config import RewardConfig
from services.rollout.config import RolloutConfig
from services.training.config import TrainingConfig

# -- service configs ---------------------------------------------------------------------------

# (description, config class, service, argv, YAML file content or None, substring)
CONFIG_CASES = [
    ("unknown key with a near miss", DataConfig, "data", ["shard_row=5"], None,
     "did you mean 'shard_rows'"),
    ("int field given text", DataConfig, "data", ["shard_rows=lots"], None, "not an integer"),
    ("port out of range", TrainingConfig, "training", ["port=70000"], None, "port"),
    ("bool field given text", RolloutConfig, "rollout", ["worker=maybe"], None, "not a boolean"),
    ("unknown engine", RolloutConfig, "rollout", ["engine=tensorrt"], None, "unknown engine"),
    ("negative clip", RewardConfig, "reward", ["clip=-1"], None, "clip"),
    ("non-loopback host without a token", DataConfig, "data", ["host=0.0.0.0"], None,
     "without auth_token"),
    ("bad YAML file", DataConfig, "data", [], b"port: [1\n", "not valid YAML"),
    ("YAML not a mapping", DataConfig, "data", [], b"- port\n", "expected a mapping"),
    ("YAML unknown key", TrainingConfig, "training", [], b"jobs_dri: /x\n", "jobs_dir"),
    ("YAML wrong type (list for int)", DataConfig, "data", [], b"shard_rows: [1, 2]\n",
     "not an integer"),
    ("YAML not UTF-8", RewardConfig, "reward", [], b"scale: \xff\n", "not valid YAML"),
    ("argument without '='", DataConfig, "data", ["portless"], None, "expected key=value"),
    ("reward regex that does not compile", RewardConfig, "reward", ["regex_pattern=(unclosed"],
     None, "regex_pattern"),
]  # fmt: skip


def _noop_register(config):  # pragma: no cover - a config error returns before it is used
    raise AssertionError("run_service started a server despite a bad config")


@pytest.mark.parametrize(
    "description,cls,service,argv,content,needle", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES]
)
def test_service_config_bad_input(
    tmp_path, capsys, description, cls, service, argv, content, needle
):
    if content is not None:
        path = tmp_path / "config.yaml"
        path.write_bytes(content)
        argv = ["--config", str(path), *argv]
    with pytest.raises(ConfigError) as err:
        load_config(cls, service, argv, environ={})
    assert needle in str(err.value), (description, str(err.value))
    # The same through a service's entry point: exit 2, one line, no traceback.
    capsys.readouterr()
    assert run_service(service, cls, argv, _noop_register) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and needle in stderr and "Traceback" not in stderr, stderr
