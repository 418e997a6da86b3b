"""The ``llamafleet`` command line.

This module only dispatches: each command group lives in ``llamafleet/commands/`` (the local
cluster's ``up``/``down``/``status``/... in ``commands/cluster.py``). User errors (bad arguments, a
cluster that is not up, a missing extra) end with exit code 2 and one line on stderr; tracebacks
are for bugs only.

Every command that calls a service sends ``LLAMAFLEET_TOKEN`` as the bearer token and, for
services behind TLS, uses ``LLAMAFLEET_TLS_CA`` (and ``LLAMAFLEET_TLS_CERT``/``_KEY`` for mutual
TLS); commands on a local cluster use the TLS files ``up`` was given unless those are set.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from rich.console import Console

from llamafleet import cluster
from llamafleet.client import RpcError
from llamafleet.commands import UserError
from llamafleet.commands import api as api_commands
from llamafleet.commands import chat as chat_commands
from llamafleet.commands import cluster as cluster_commands
from llamafleet.commands import data as data_commands
from llamafleet.commands import deadletters as deadletter_commands
from llamafleet.commands import evaluate as eval_commands
from llamafleet.commands import reward as reward_commands
from llamafleet.commands import train as train_commands
from llamafleet.commands import web as web_commands
from llamafleet.credentials import (
    ENV_TLS_CA,
    ENV_TLS_CERT,
    ENV_TLS_KEY,
    ENV_TOKEN,
    CredentialsError,
)
from llamafleet.dead_letters import RequeueError
from llamafleet.redis_local import RedisNotInstalledError

# Command groups living in llamafleet/commands/: each adds its sub-commands in register().
COMMAND_MODULES: tuple = (
    cluster_commands,
    data_commands,
    train_commands,
    chat_commands,
    api_commands,
    web_commands,
    deadletter_commands,
    reward_commands,
    eval_commands,
)

# Status codes that mean the request was wrong (exit 2), as opposed to the cluster failing (1).
USER_ERROR_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED,
}

console = Console()
err_console = Console(stderr=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llamafleet", description="Fine-tune LLMs on a suite of gRPC services."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _hint(exc: RpcError) -> str:
    """What to set, for the errors that come from missing or wrong credentials."""
    if exc.code == grpc.StatusCode.UNAUTHENTICATED:
        return f" (set {ENV_TOKEN} to the services' auth_token)"
    message = exc.message.lower()
    if exc.code == grpc.StatusCode.UNAVAILABLE and ("socket closed" in message or "tls" in message):
        return (
            f" (if the service uses TLS: set {ENV_TLS_CA}, and {ENV_TLS_CERT}/{ENV_TLS_KEY} "
            "for mutual TLS, to files it trusts)"
        )
    return ""


def _one_line_error(command: str, exc: Exception, hint: str = "") -> None:
    """The error as exactly one line on stderr: its own newlines folded, never wrapped."""
    text = " ".join(str(exc).split()) + hint
    err_console.print(
        f"llamafleet {command}: {text}", markup=False, highlight=False, soft_wrap=True
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (
        UserError,
        cluster.ClusterError,
        RequeueError,
        RedisNotInstalledError,
        CredentialsError,
    ) as exc:
        _one_line_error(args.command, exc)
        return 2
    except RpcError as exc:
        _one_line_error(args.command, exc, _hint(exc))
        return 2 if exc.code in USER_ERROR_CODES else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
