"""``llamafleet reward list | test``: the reward functions a cluster offers, and a preview of
them on one completion, so rewards are debugged before a long run.

    llamafleet reward list
    llamafleet reward test --function math_verify --args '{"extractor": "boxed"}' \\
        --prompt "What is 1/2 + 1/2?" --completion 'So \\boxed{1}' --reference 1
    llamafleet reward test --functions rewards.yaml --completion @answer.md --reference @tests.json

``--functions FILE`` takes the same list as a job's ``reward_functions`` (YAML: names with
weight, args and label). Text arguments starting with ``@`` are read from that file. A function
that fails prints its reason and exits 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from google.protobuf import json_format
from rich.console import Console
from rich.table import Table

from llamafleet import cluster
from llamafleet.client import Client
from llamafleet.cluster import DEFAULT_RUN_DIR
from llamafleet.commands import UserError
from llamafleet.common.v1 import common_pb2
from llamafleet.lf_keys import ConfigFileError, _reward_functions
from llamafleet.reward.v1 import reward_pb2
from llamafleet.reward.v1 import reward_service_pb2 as pb
from llamafleet.reward_functions import component, function_info

console = Console()


def _client(args: argparse.Namespace) -> Client:
    client = cluster.connect(args.run_dir, timeout=args.timeout)
    if not hasattr(client, "reward"):
        raise UserError(f"the cluster in {args.run_dir} runs no reward service")
    return client


def _text(flag: str, value: str | None) -> str:
    if value is None:
        return ""
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{flag} {value}: cannot read {path}: {exc}") from None
    return value


def cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        response = client.reward.ListRewardFunctions(pb.ListRewardFunctionsRequest())
    infos = [function_info(f) for f in response.functions]
    if args.json:
        print(json.dumps(infos, indent=2))
        return 0
    table = Table(title="reward functions")
    for col in ("name", "kind", "timeout", "available", "description"):
        table.add_column(col)
    for f in infos:
        ok = "[green]yes[/green]" if f["available"] else f"[red]no[/red]: {f['unavailable_reason']}"
        table.add_row(f["name"], f["kind"], f"{f['timeout_s']:g} s", ok, f["description"])
    console.print(table)
    return 0


def refs_from_args(args: argparse.Namespace) -> list[common_pb2.RewardFunctionRef]:
    refs: list[common_pb2.RewardFunctionRef] = []
    if args.functions_file:
        try:
            data = yaml.safe_load(Path(args.functions_file).read_text(encoding="utf-8"))
            if isinstance(data, dict) and "reward_functions" in data:
                data = data["reward_functions"]
            refs += _reward_functions(f"{args.functions_file}: reward_functions", data)
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"--functions {args.functions_file}: {exc}") from None
        except ConfigFileError as exc:
            raise UserError(str(exc)) from None
    for name in args.function or []:
        ref = common_pb2.RewardFunctionRef(name=name)
        if args.args:
            try:
                json_format.ParseDict(json.loads(args.args), ref.args)
            except (ValueError, json_format.ParseError) as exc:
                raise UserError(f"--args: not a JSON object: {exc}") from None
        refs.append(ref)
    if not refs:
        raise UserError("name a function with --function NAME (or a list with --functions FILE)")
    return refs


def cmd_test(args: argparse.Namespace) -> int:
    refs = refs_from_args(args)
    item = reward_pb2.ScoreItem(
        item_id="test",
        prompt_text=_text("--prompt", args.prompt),
        completion_text=_text("--completion", args.completion),
        reference_answer=_text("--reference", args.reference),
    )
    with _client(args) as client:
        response = client.reward.TestRewardFunction(
            pb.TestRewardFunctionRequest(functions=refs, item=item)
        )
    parts = [component(c) for c in response.components]
    if args.json:
        print(json.dumps({"score": response.score, "components": parts}, indent=2))
        return 0
    table = Table(title=f"reward {response.score:g}")
    for col in ("function", "weight", "score", "sub-scores", "detail"):
        table.add_column(col)
    for c in parts:
        subs = ", ".join(f"{k}={v:g}" for k, v in c["sub_scores"].items())
        table.add_row(c["label"], f"{c['weight']:g}", f"{c['score']:g}", subs, c["detail"])
    console.print(table)
    return 0


def register(sub) -> None:
    reward = sub.add_parser("reward", help="list and preview the cluster's reward functions")
    commands = reward.add_subparsers(dest="reward_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--run-dir", default=DEFAULT_RUN_DIR, help="the local cluster's run directory"
        )
        p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait")
        p.add_argument("--json", action="store_true", help="print JSON")

    p = commands.add_parser("list", help="the reward functions a job may name")
    common(p)
    p.set_defaults(func=cmd_list)

    p = commands.add_parser("test", help="score one completion with reward functions")
    p.add_argument("--function", action="append", metavar="NAME", help="function (repeatable)")
    p.add_argument("--args", help="JSON object of arguments for the --function(s)")
    p.add_argument(
        "--functions", dest="functions_file", metavar="FILE",
        help="YAML list of {name, weight, args, label}, as a job's reward_functions",
    )  # fmt: skip
    p.add_argument("--prompt", help="prompt text (or @FILE)")
    p.add_argument("--completion", required=True, help="completion text (or @FILE)")
    p.add_argument("--reference", help="reference answer / tests JSON (or @FILE)")
    common(p)
    p.set_defaults(func=cmd_test)
