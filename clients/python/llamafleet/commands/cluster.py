"""The local cluster's commands: ``up``, ``add-worker``, ``add-base``, ``down``, ``status``, ``health`` (a
container health check) and ``tiny-model`` (a model built locally, in a subprocess with the
training extra: the client never imports torch). The work is ``llamafleet.cluster``'s."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from importlib.util import find_spec

from rich.console import Console
from rich.table import Table

from llamafleet import cluster
from llamafleet.cluster import DEFAULT_RUN_DIR
from llamafleet.commands import UserError
from llamafleet.credentials import ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY, ENV_TOKEN, Credentials

console = Console()


def cmd_up(args: argparse.Namespace) -> int:
    with console.status("starting the local cluster..."):
        state = cluster.up(
            args.run_dir,
            redis_url=args.redis_url,
            timeout=args.timeout,
            base_models=args.base_model,
            rollout_workers=args.rollout_workers,
            reward_workers=args.reward_workers,
            token=os.environ.get(ENV_TOKEN, ""),
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            roots=args.root,
            read_token=os.environ.get("LLAMAFLEET_READ_TOKEN", ""),
        )
    console.print(
        f"[green]cluster up[/green] in {state.run_dir} (redis {cluster.redact_url(state.redis_url)})"
    )
    return cmd_status(args)


def cmd_add_worker(args: argparse.Namespace) -> int:
    with console.status(f"starting one more {args.kind} worker..."):
        svc = cluster.add_worker(
            args.run_dir,
            args.kind,
            timeout=args.timeout,
            token=os.environ.get(ENV_TOKEN, ""),
            read_token=os.environ.get("LLAMAFLEET_READ_TOKEN", ""),
            base=args.base,
        )
    console.print(f"[green]{svc.name}[/green] serving at {svc.address} (pid {svc.pid})")
    return 0


def cmd_add_base(args: argparse.Namespace) -> int:
    with console.status(f"starting the rollout and reward workers of {args.base_model}..."):
        name, started = cluster.add_base(
            args.run_dir,
            args.base_model,
            rollout_workers=args.rollout_workers,
            reward_workers=args.reward_workers,
            timeout=args.timeout,
            token=os.environ.get(ENV_TOKEN, ""),
            read_token=os.environ.get("LLAMAFLEET_READ_TOKEN", ""),
        )
    console.print(f"[green]base {name}[/green] served ({args.base_model})")
    for svc in started:
        console.print(f"  {svc.name} serving at {svc.address} (pid {svc.pid})")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    stopped = cluster.down(args.run_dir)
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Exit codes: ``--json`` prints the report and exits 0 whatever the cluster's health (it is
    in the report: ``healthy``, ``problems``); the table form exits 1 when a service process is
    dead or not SERVING or Redis does not answer, else 0. Both exit 2 when no cluster was
    started in the run directory (``ClusterError``, one line on stderr)."""
    report = cluster.status(args.run_dir, dead_letter_limit=getattr(args, "dead_letters", 10))
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2))
        return 0
    table = Table(title="services")
    for col in ("service", "base", "address", "pid", "health"):
        table.add_column(col)
    for name, svc in report["services"].items():
        colour = "green" if svc["health"] == "SERVING" else "red"
        pid = f"{svc['pid']}" + ("" if svc["alive"] else " (dead)")
        health = f"[{colour}]{svc['health']}[/{colour}]"
        table.add_row(name, svc.get("base", ""), svc["address"], pid, health)
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
    if report["healthy"]:
        console.print("healthy", style="green")
        return 0
    console.print("unhealthy:", style="red")
    for problem in report["problems"]:
        console.print(f"  {problem}", markup=False, highlight=False, soft_wrap=True)
    return 1


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
    cmd += ["--seed", str(args.seed), "--arch", args.arch]
    if args.force:
        cmd.append("--force")
    return subprocess.call(cmd)


def register(sub) -> None:
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
            "every service requires that bearer token (and LLAMAFLEET_READ_TOKEN, if set, is a "
            "second token that may only read); with --tls-ca/--tls-cert/--tls-key every "
            "service serves mutual TLS and the services call each other with them.",
        )
    )
    with_tls(p, "every service serves and presents to the others (valid for 127.0.0.1)")
    p.add_argument("--redis-url", help="use this Redis instead of starting one")
    p.add_argument(
        "--base-model",
        action="append",
        default=[],
        metavar="DIR",
        help="model folder the rollout and reward services serve; repeat it to serve several "
        "bases (one rollout and reward service each, named by the folder; the first is the "
        "default)",
    )
    p.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DIR",
        help="one more folder the services may read datasets and models from (and training "
        "write exports to); by default the working directory and the run directory (repeat it)",
    )
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
    p.add_argument(
        "--base", default="", help="base name (or folder) it serves; default: the default base"
    )
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for health")
    p.set_defaults(func=cmd_add_worker)

    p = with_run_dir(
        sub.add_parser(
            "add-base",
            help="serve one more base model in the running cluster (its own rollout and reward "
            "workers and queues; nothing restarts)",
            description="Start rollout and reward workers for the model folder DIR in the "
            "running cluster and record it as one of its bases: jobs whose base_model is DIR "
            "(by its folder name) are served by them, and the API and chat route to them. "
            "Refused for a base already served or whose folder name is taken.",
        )
    )
    p.add_argument("base_model", metavar="DIR", help="the base model's folder")
    for kind in ("rollout", "reward"):
        p.add_argument(
            f"--{kind}-workers",
            type=_positive,
            default=1,
            metavar="N",
            help=f"{kind} service processes for this base (default 1)",
        )
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for health")
    p.set_defaults(func=cmd_add_base)

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

    p = sub.add_parser("tiny-model", help="build a random-initialised model + tokenizer")
    p.add_argument("out_dir")
    p.add_argument("--size", default="tiny", help="tiny | small | medium")
    p.add_argument(
        "--arch",
        default="llama",
        help="llama (ChatML, the default) | llama3 | qwen2 | qwen3 | qwen3_moe | gemma3 | "
        "mistral | phi3",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite a non-empty OUT_DIR")
    p.set_defaults(func=cmd_tiny_model)
