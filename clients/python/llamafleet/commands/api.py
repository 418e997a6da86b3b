"""``llamafleet api``: serve the OpenAI-compatible HTTP API in front of the local cluster."""

from __future__ import annotations

import argparse

from llamafleet.chat import Base
from llamafleet.client import Client
from llamafleet.cluster import DEFAULT_RUN_DIR, ClusterState, credentials_for
from llamafleet.commands import UserError, loopback


def cmd_api(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from llamafleet.openai_api import create_app
    except ImportError:
        raise UserError("the API needs its extra: pip install -e '.[api]'") from None
    state = ClusterState.load(args.run_dir)
    name, base_model = state.base(args.base_model)  # ClusterError (exit 2): none, or a bad one
    if not args.api_key and not loopback(args.host):
        raise UserError(f"refusing to serve on {args.host} without --api-key")
    creds = credentials_for(state)

    def client_of(base: str) -> Client:
        return Client(state.addresses_for(base), credentials=creds, timeout=args.timeout)

    others = [Base(n, p, client_of(n)) for n, p in state.bases.items() if n != name]
    with client_of(name) as client:
        app = create_app(
            client,
            base_model,
            api_key=args.api_key,
            tool_format=args.tool_format,
            template=args.template,
            bases=others,
        )
        try:
            uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        finally:
            for other in others:
                other.client.close()
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "api", help="OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models)"
    )
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default="", help="required as 'Authorization: Bearer <key>'")
    p.add_argument(
        "--base-model",
        default="",
        help="the base that the name 'base' means (a base name or folder; default: the "
        "cluster's first --base-model); every base of the cluster is served",
    )
    p.add_argument(
        "--template",
        default="",
        help="chat template to render conversations with (a data-service template name, e.g. "
        "qwen); its tool format reads tool calls; default: the tokenizer's own template",
    )
    p.add_argument(
        "--tool-format",
        default="",
        help="tool format the model writes calls in (qwen, llama3, default, ...): generated "
        "text is parsed into tool_calls with it; default: --template's; neither = requests with "
        "tools are refused",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per unary call")
    p.set_defaults(func=cmd_api)
