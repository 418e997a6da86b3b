"""The runner's allocator environment: jemalloc preloaded where installed, never forced."""

from __future__ import annotations

import subprocess
import sys
from unittest import mock

import pytest
from llamafleet.training.v1 import training_pb2 as tpb

from services.training.jobs import allocator
from services.training.jobs.allocator import JEMALLOC_CONF, allocator_env
from services.training.jobs.launch import runner_command


def test_jemalloc_preloaded_with_its_conf_when_installed():
    with mock.patch.object(allocator, "find_jemalloc", return_value="libjemalloc.so.2"):
        assert allocator_env({}) == {"LD_PRELOAD": "libjemalloc.so.2", "MALLOC_CONF": JEMALLOC_CONF}
        # another preload is kept (after jemalloc), an operator's MALLOC_CONF is respected
        env = allocator_env({"LD_PRELOAD": "/x/libfoo.so", "MALLOC_CONF": "narenas:1"})
        assert env == {"LD_PRELOAD": "libjemalloc.so.2 /x/libfoo.so", "MALLOC_CONF": "narenas:1"}


@pytest.mark.parametrize(
    "environ",
    [
        {"LLAMAFLEET_RUNNER_ALLOCATOR": "glibc"},
        {"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"},
        {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"},
    ],
)
def test_nothing_added_when_opted_out_or_an_allocator_is_preloaded(environ):
    with mock.patch.object(allocator, "find_jemalloc", return_value="libjemalloc.so.2"):
        assert allocator_env(environ) == {}


def test_glibc_when_jemalloc_is_missing_or_the_choice_is_unknown(caplog):
    with mock.patch.object(allocator, "find_jemalloc", return_value=None):
        assert allocator_env({}) == {}
    with mock.patch.object(allocator, "find_jemalloc", return_value="libjemalloc.so.2"):
        assert allocator_env({"LLAMAFLEET_RUNNER_ALLOCATOR": "tcmalloc"}) == {}
    assert "LLAMAFLEET_RUNNER_ALLOCATOR='tcmalloc'" in caplog.text


def test_runner_command_carries_it():
    with mock.patch.object(allocator, "find_jemalloc", return_value="libjemalloc.so.2"):
        _, env = runner_command(tpb.TrainingJobSpec(), "/jobs/j1", "localhost:1234")
    assert env["LD_PRELOAD"].startswith("libjemalloc.so.2")
    assert env["MALLOC_CONF"] == JEMALLOC_CONF


@pytest.mark.skipif(allocator.find_jemalloc() is None, reason="libjemalloc is not installed")
def test_a_process_started_with_it_runs_on_jemalloc():
    code = "print(any('jemalloc' in line for line in open('/proc/self/maps')))"
    env = {**allocator_env({}), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr


def test_deepspeed_launches_keep_glibc():
    spec = tpb.TrainingJobSpec()
    spec.distributed.world_size = 2
    spec.distributed.backend = tpb.DISTRIBUTED_BACKEND_DEEPSPEED
    with mock.patch.object(allocator, "find_jemalloc", return_value="libjemalloc.so.2"):
        _, env = runner_command(spec, "/jobs/j1", "localhost:1234")
        assert "LD_PRELOAD" not in env
        spec.distributed.backend = tpb.DISTRIBUTED_BACKEND_DDP
        _, env = runner_command(spec, "/jobs/j1", "localhost:1234")
        assert env["LD_PRELOAD"].startswith("libjemalloc.so.2")
