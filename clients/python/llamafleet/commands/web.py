"""``llamafleet web``: the browser UI (Train, Jobs, Chat, Cluster) in front of the local cluster."""

from __future__ import annotations

import argparse
from pathlib import Path

from llamafleet.chat import Base
from llamafleet.client import Client
from llamafleet.cluster import DEFAULT_RUN_DIR, ClusterState, credentials_for
from llamafleet.commands import UserError, loopback


def cmd_web(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from llamafleet.web.app import create_app
    except ImportError:
        raise UserError("the web UI needs its extra: pip install -e '.[web]'") from None
    if not args.token and not loopback(args.host):
        raise UserError(f"refusing to serve on {args.host} without --token (a shared secret)")
    state = ClusterState.load(args.run_dir)
    creds = credentials_for(state)
    default = next(iter(state.bases), "")
    others = [  # the other bases: chat sends each adapter to its own base's rollout service
        Base(n, p, Client(state.addresses_for(n), credentials=creds, timeout=args.timeout))
        for n, p in state.bases.items()
        if n != default
    ]
    with Client(state.addresses_for(), credentials=creds, timeout=args.timeout) as client:
        dataset_dir = (
            str(Path(args.dataset_dir).expanduser().absolute()) if args.dataset_dir else ""
        )
        app = create_app(
            client,
            state.run_dir,
            state.base_model,
            token=args.token,
            dataset_dir=dataset_dir,
            bases=others,
        )
        shown = "localhost" if loopback(args.host) else args.host
        print(f"llamafleet web: http://{shown}:{args.port}/", flush=True)
        try:
            uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        finally:
            for other in others:
                other.client.close()
    return 0


def register(sub) -> None:
    p = sub.add_parser("web", help="browser UI: train, follow jobs, chat, cluster health")
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--token", default="", help="shared secret, required on a non-loopback --host")
    p.add_argument(
        "--dataset-dir",
        default="",
        help="folder of the dataset_info.json the Train form starts with "
        "(default: <run-dir>/datasets)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per unary call")
    p.set_defaults(func=cmd_web)
