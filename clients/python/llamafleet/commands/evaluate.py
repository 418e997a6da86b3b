"""``llamafleet eval predict``: generate an eval split through the fleet and report BLEU-4,
ROUGE-1/2/L, exact match and a reward function's mean (``predict.py``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llamafleet import cluster
from llamafleet.cluster import DEFAULT_RUN_DIR, ClusterState
from llamafleet.commands import UserError
from llamafleet.eval_metrics import LANGS


def cmd_predict(args: argparse.Namespace) -> int:
    from llamafleet import predict

    state = ClusterState.load(args.run_dir)
    base_model = args.base_model or state.base_model
    if not base_model:
        raise UserError("no base model: start the cluster with `llamafleet up --base-model DIR`")
    try:
        records = predict.read_records(Path(args.dataset))
    except (OSError, ValueError) as exc:
        raise UserError(f"--dataset: {exc}") from None
    client = cluster.connect(args.run_dir, timeout=args.timeout)
    if args.reward_function and not hasattr(client, "reward"):
        raise UserError(f"--reward-function: the cluster in {args.run_dir} runs no reward service")
    try:
        results = predict.predict(
            client, base_model, args.model, records, Path(args.save_dir),
            fmt=args.format, max_tokens=args.max_tokens, temperature=args.temperature,
            reward_function=args.reward_function, lang=args.lang,
        )  # fmt: skip
    except (ValueError, ImportError) as exc:
        raise UserError(str(exc)) from None
    finally:
        client.close()
    print(json.dumps(results, indent=2))
    return 0


def register(sub) -> None:
    evaluate = sub.add_parser("eval", help="evaluate a model or adapter")
    commands = evaluate.add_subparsers(dest="eval_command", required=True)
    p = commands.add_parser(
        "predict",
        help="generate an eval split through the rollout fleet: predictions.jsonl, BLEU-4, "
        "ROUGE-1/2/L, exact match, a reward function's mean",
    )
    p.add_argument("--model", default="base", help="base, JOB or JOB@VERSION")
    p.add_argument("--dataset", required=True, help="eval split: .jsonl or .json list")
    p.add_argument("--format", default="alpaca", help="alpaca, sharegpt, openai or prompt")
    p.add_argument("--save-dir", required=True, help="where predictions.jsonl and results go")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--reward-function", default="", help="a reward function's name to average")
    p.add_argument("--lang", default="en", choices=LANGS, help="tokenization of the metrics")
    p.add_argument("--base-model", default="", help="default: the cluster's --base-model")
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per unary call")
    p.set_defaults(func=cmd_predict)
