"""The ``llamafleet`` command line.

User errors (bad arguments, a cluster that is not up, a missing extra) end with exit code 2 and
one line on stderr; tracebacks are for bugs only.

Every command that calls a service sends ``LLAMAFLEET_TOKEN`` as the bearer token and, for
services behind TLS, uses ``LLAMAFLEET_TLS_CA`` (and ``LLAMAFLEET_TLS_CERT``/``_KEY`` for mutual
TLS); commands on a local cluster use the TLS files ``up`` was given unless those are set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from importlib.util import find_spec

import grpc
from rich.console import Console
from rich.table import Table

from llamafleet import cluster
from llamafleet.client import (
    ENV_TLS_CA,
    ENV_TLS_CERT,
    ENV_TLS_KEY,
    ENV_TOKEN,
    Credentials,
    CredentialsError,
    RpcError,
)
from llamafleet.commands import UserError
from llamafleet.commands import api as api_commands
from llamafleet.commands import chat as chat_commands
from llamafleet.commands import data as data_commands
from llamafleet.commands import deadletters as deadletter_commands
from llamafleet.commands import reward as reward_commands
from llamafleet.commands import train as train_commands
from llamafleet.commands import web as web_commands
from llamafleet.dead_letters import RequeueError
from llamafleet.redis_local import RedisNotInstalledError

DEFAULT_RUN_DIR = os.environ.get("LLAMAFLEET_RUN_DIR", ".llamafleet")

# Command groups living in llamafleet/commands/: each adds its sub-commands in register().
COMMAND_MODULES: tuple = (
    data_commands,
    train_commands,
    chat_commands,
    api_commands,
    web_commands,
    deadletter_commands,
    reward_commands,
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


def cmd_up(args: argparse.Namespace) -> int:
    with console.status("starting the local cluster..."):
        state = cluster.up(
            args.run_dir,
            redis_url=args.redis_url,
            timeout=args.timeout,
            base_model=args.base_model,
            rollout_workers=args.rollout_workers,
            reward_workers=args.reward_workers,
            token=os.environ.get(ENV_TOKEN, ""),
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
    console.print(
        f"[green]cluster up[/green] in {state.run_dir} (redis {cluster.redact_url(state.redis_url)})"
    )
    return cmd_status(args)


def cmd_add_worker(args: argparse.Namespace) -> int:
    with console.status(f"starting one more {args.kind} worker..."):
        svc = cluster.add_worker(
            args.run_dir, args.kind, timeout=args.timeout, token=os.environ.get(ENV_TOKEN, "")
        )
    console.print(f"[green]{svc.name}[/green] serving at {svc.address} (pid {svc.pid})")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    stopped = cluster.down(args.run_dir)
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    report = cluster.status(args.run_dir, dead_letter_limit=getattr(args, "dead_letters", 10))
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2))
        return 0 if _all_serving(report) else 1
    table = Table(title="services")
    for col in ("service", "address", "pid", "health"):
        table.add_column(col)
    for name, svc in report["services"].items():
        colour = "green" if svc["health"] == "SERVING" else "red"
        pid = f"{svc['pid']}" + ("" if svc["alive"] else " (dead)")
        table.add_row(name, svc["address"], pid, f"[{colour}]{svc['health']}[/{colour}]")
    console.print(table)
    console.print(f"redis: {report['redis']} ({report['redis_url']})")
    queues = Table(title="queues")
    for col in ("stream", "length", "group", "consumers", "pending", "lag"):
        queues.add_column(col)
    for q in report["queues"]:
        lag = "?" if q["lag"] is None else str(q["lag"])
        queues.add_row(
            q["stream"], str(q["length"]), q["group"], str(q["consumers"]), str(q["pending"]), lag
        )
    if report["queues"]:
        console.print(queues)
    else:
        console.print("queues: none yet")
    _print_dead_letters(report["dead_letter_entries"], report["dead_letters"])
    return 0 if _all_serving(report) else 1


def _print_dead_letters(entries: list[dict], total: int) -> None:
    """One block per dead letter, as plain lines (a table folds the reasons past reading)."""
    head = f"dead letters: {total}"
    if entries:
        head += f" (the latest {len(entries)}, newest first; `llamafleet requeue ID` replays one):"
    console.print(head, markup=False, highlight=False, soft_wrap=True)
    for d in entries:
        deliveries = "?" if d["deliveries"] is None else str(d["deliveries"])
        console.print(
            f"  {d['entry_id']}  item {d['item_id'] or '?'}  from {d['stream'] or '?'} "
            f"(group {d['group'] or '?'}, {deliveries} deliveries)\n"
            f"      reason: {d['reason'] or '?'}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _all_serving(report: dict) -> bool:
    return all(s["health"] == "SERVING" for s in report["services"].values())


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the server at --address answers SERVING (container health checks use it)."""
    token = args.token or os.environ.get(ENV_TOKEN, "")
    credentials = Credentials(tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key)
    state = cluster.check_health(
        args.address, timeout=args.timeout, token=token, credentials=credentials
    )
    console.print(f"{args.address}: {state}")
    return 0 if state == "SERVING" else 1


def cmd_tiny_model(args: argparse.Namespace) -> int:
    # Building a model needs torch: it runs in the services' environment, as a subprocess, so
    # the client package itself never imports torch.
    if find_spec("torch") is None or find_spec("services") is None:
        raise UserError(
            "tiny-model needs the training extra: pip install -e '.[train]' (and torch==2.13.0)"
        )
    cmd = [sys.executable, "-m", "services.training.tiny.model", args.out_dir, "--size", args.size]
    cmd += ["--seed", str(args.seed)]
    if args.force:
        cmd.append("--force")
    return subprocess.call(cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llamafleet", description="Fine-tune LLMs on a suite of gRPC services."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_run_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--run-dir",
            default=DEFAULT_RUN_DIR,
            help="where the local cluster keeps its state and logs (env LLAMAFLEET_RUN_DIR)",
        )
        return p

    def with_tls(p: argparse.ArgumentParser, what: str) -> argparse.ArgumentParser:
        for flag, var, text in (
            ("--tls-ca", ENV_TLS_CA, "CA (PEM) the services' certificates chain to"),
            ("--tls-cert", ENV_TLS_CERT, f"certificate (PEM) {what}"),
            ("--tls-key", ENV_TLS_KEY, "its private key (PEM)"),
        ):
            p.add_argument(flag, default=os.environ.get(var, ""), help=f"{text} (env {var})")
        return p

    p = with_run_dir(
        sub.add_parser(
            "up",
            help="start Redis and the four services locally",
            description="Start Redis and the four services locally. With LLAMAFLEET_TOKEN set "
            "every service requires that bearer token; with --tls-ca/--tls-cert/--tls-key every "
            "service serves mutual TLS and the services call each other with them.",
        )
    )
    with_tls(p, "every service serves and presents to the others (valid for 127.0.0.1)")
    p.add_argument("--redis-url", help="use this Redis instead of starting one")
    p.add_argument("--base-model", help="model folder the rollout and reward services serve")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for health")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    for kind in ("rollout", "reward"):
        p.add_argument(
            f"--{kind}-workers",
            type=_positive,
            default=1,
            metavar="N",
            help=f"{kind} service processes sharing its work queue (default 1)",
        )
    p.set_defaults(func=cmd_up)

    p = with_run_dir(
        sub.add_parser(
            "add-worker", help="start one more rollout or reward worker in the running cluster"
        )
    )
    p.add_argument("kind", choices=("rollout", "reward"))
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for health")
    p.set_defaults(func=cmd_add_worker)

    p = with_run_dir(sub.add_parser("down", help="stop the local cluster"))
    p.set_defaults(func=cmd_down)

    p = with_run_dir(sub.add_parser("status", help="health of each service and queue"))
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument(
        "--dead-letters",
        type=_non_negative,
        default=10,
        metavar="N",
        help="show the latest N dead letters with their reasons (default 10; 0: count only)",
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("health", help="check one service's gRPC health (exit 0 if SERVING)")
    p.add_argument("--address", required=True, help="host:port")
    p.add_argument("--token", default="", help="bearer token (or env LLAMAFLEET_TOKEN)")
    with_tls(p, "to present, for mutual TLS")
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("tiny-model", help="build a random-initialised Llama + tokenizer")
    p.add_argument("out_dir")
    p.add_argument("--size", default="tiny", help="tiny | small | medium")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite a non-empty OUT_DIR")
    p.set_defaults(func=cmd_tiny_model)

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
