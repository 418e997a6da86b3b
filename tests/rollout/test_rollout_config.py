"""RolloutConfig: the four layers reach the rollout fields, and bad values name the field."""

from __future__ import annotations

import pytest

from services.common.config import ConfigError, load_config
from services.rollout.config import RolloutConfig
from services.rollout.engines import make_engine


def test_fields_from_env_and_arguments():
    config = load_config(
        RolloutConfig,
        "rollout",
        ["engine=vllm", "max_resident_adapters=3", "worker=false", "worker_max_inflight=32"],
        environ={
            "LLAMAFLEET_ROLLOUT_BASE_MODEL": "/models/tiny",
            "LLAMAFLEET_ROLLOUT_DTYPE": "bfloat16",
        },
    )
    assert (config.base_model, config.engine, config.dtype) == ("/models/tiny", "vllm", "bfloat16")
    assert config.max_resident_adapters == 3 and config.worker is False
    assert config.worker_max_inflight == 32 and RolloutConfig().worker_max_inflight == 16


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["engine=trt"], "engine: unknown engine 'trt'; choose one of: hf, vllm"),
        (["dtype=fp8"], "dtype: unknown dtype 'fp8'"),
        (["max_resident_adapters=0"], "max_resident_adapters"),
        (["worker_max_inflight=0"], "worker_max_inflight: must be at least 1"),
        (["max_tokens_limit=10"], "default_max_tokens"),
        (["base_modle=/x"], "did you mean 'base_model'"),
    ],
)
def test_bad_values_name_the_field(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(RolloutConfig, "rollout", argv, environ={})


def test_unknown_engine_in_make_engine_lists_choices():
    with pytest.raises(ValueError, match="choose one of: hf, vllm"):
        make_engine("trt", "/nowhere")


def test_vllm_engine_without_vllm_says_what_to_install(tmp_path):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="setup_vllm.sh"):
        make_engine("vllm", str(tmp_path))


def test_the_worker_queues_are_those_of_its_base():
    """Named by the base folder; the default base (or a one-base cluster) keeps the old names."""
    one = load_config(RolloutConfig, "rollout", ["base_model=/m/Tiny_B"], environ={})
    assert one.base() == "tiny_b" and one.tasks_stream() == "llamafleet:rollout:tasks"
    argv = ["base_model=/m/Tiny_B/", "default_base=tiny-a"]
    other = load_config(RolloutConfig, "rollout", argv, environ={})
    assert other.tasks_stream() == "llamafleet:rollout:tasks:tiny_b"
    assert other.results_stream() == "llamafleet:rollout:results:tiny_b"
    argv = ["base_model=/m/tiny-a", "default_base=tiny-a"]
    default = load_config(RolloutConfig, "rollout", argv, environ={})
    assert default.tasks_stream() == "llamafleet:rollout:tasks"
    with pytest.raises(ConfigError, match="default_base: 'Tiny A' is not a base name"):
        load_config(RolloutConfig, "rollout", ["default_base=Tiny A"], environ={})
