"""The command line that starts a job's training processes.

``runner_command(spec, job_dir, data_address, token)`` returns ``(argv, env)`` for the service to
run in a new process group (it signals the whole group to cancel):

- ``world_size <= 1``: ``python -m services.training.runner --job-dir DIR --data-address ADDR``;
- DDP: ``python -m torch.distributed.run --nproc_per_node N --master_port P -m
  services.training.runner ...`` (torchrun; gloo on CPUs, NCCL on GPUs);
- DeepSpeed: ``python -m deepspeed.launcher.runner --num_gpus N --master_port P --no_local_rank
  --module services.training.runner ...`` (the ``deepspeed`` launcher; ``DS_ACCELERATOR=cpu`` and
  gloo on machines without a GPU).

Multi-node training is launcher configuration, not code: DeepSpeed reads a hostfile
(``--hostfile``, ``--master_addr``), torchrun ``--nnodes``/``--node_rank``/``--master_addr``; the
runner only reads the ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` the launcher sets.

The token reaches the runner through ``LLAMAFLEET_TOKEN`` in ``env`` (not argv, which other users
of the machine can read). ``env`` holds only the variables to add to the service's environment, among them the allocator's (``allocator.allocator_env``: jemalloc
preloaded where the machine has it).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from llamafleet.training.v1 import training_pb2 as tpb

from services.training.jobs.allocator import allocator_env
from services.training.spec import devices

__all__ = ["RUNNER_MODULE", "free_port", "runner_command"]

RUNNER_MODULE = "services.training.runner"


def free_port() -> int:
    """A TCP port free on this machine right now (for the rendezvous of a local world)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def runner_command(
    spec: tpb.TrainingJobSpec, job_dir: str | Path, data_address: str, token: str = ""
) -> tuple[list[str], dict[str, str]]:
    """``(argv, env)`` that run ``spec``'s training in ``job_dir``."""
    runner_args = ["--job-dir", str(Path(job_dir).resolve()), "--data-address", data_address]
    env = {"LLAMAFLEET_TOKEN": token} if token else {}
    env["PYTHONUNBUFFERED"] = "1"
    world = spec.distributed.world_size
    if world <= 1 or spec.distributed.backend != tpb.DISTRIBUTED_BACKEND_DEEPSPEED:
        # jemalloc keeping freed pages, where installed. Not under DeepSpeed: one of five ZeRO-3
        # test runs with it aborted at exit ("terminate called without an active exception",
        # after its result was written), none of two without; too few runs to blame it, so the
        # DeepSpeed path keeps glibc until that is settled.
        env.update(allocator_env())
    if world <= 1:
        return [sys.executable, "-m", RUNNER_MODULE, *runner_args], env
    port = str(free_port())
    if spec.distributed.backend == tpb.DISTRIBUTED_BACKEND_DEEPSPEED:
        if not devices.probe().cuda:
            env["DS_ACCELERATOR"] = "cpu"
        argv = [
            sys.executable,
            "-m",
            "deepspeed.launcher.runner",
            "--num_gpus",
            str(world),
            "--master_port",
            port,
            "--no_local_rank",
            "--module",
            RUNNER_MODULE,
            *runner_args,
        ]
        return argv, env
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(world),
        "--master_port",
        port,
        "-m",
        RUNNER_MODULE,
        *runner_args,
    ]
    if not devices.probe().cuda:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // world))
    return argv, env
