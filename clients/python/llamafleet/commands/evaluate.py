"""``llamafleet eval``: ``benchmark`` runs a few-shot multiple-choice benchmark in the MMLU layout
on the training service (``RunBenchmark``; LLaMA-Factory's ``eval`` options task, split, n_shot,
lang, save_dir); ``predict`` generates an eval split through the fleet and reports BLEU-4,
ROUGE-1/2/L, exact match and the mean of a reward function's and a reward model's scores
(``predict.py``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llamafleet import cluster
from llamafleet.client import Client
from llamafleet.cluster import DEFAULT_RUN_DIR, ClusterState, credentials_for
from llamafleet.commands import UserError
from llamafleet.eval_metrics import LANGS
from llamafleet.predict import adapter_ref, benchmark_dict
from llamafleet.training.v1 import training_service_pb2


def cmd_predict(args: argparse.Namespace) -> int:
    from llamafleet import predict

    state = ClusterState.load(args.run_dir)
    name, base_model = state.base(args.base_model)  # ClusterError (exit 2): none, or a bad one
    try:
        records = predict.read_records(Path(args.dataset))
    except (OSError, ValueError) as exc:
        raise UserError(f"--dataset: {exc}") from None
    client = Client(
        state.addresses_for(name), credentials=credentials_for(state), timeout=args.timeout
    )
    for flag, value in (("--reward-function", args.reward_function),
                        ("--reward-model", args.reward_model)):  # fmt: skip
        if value and not hasattr(client, "reward"):
            client.close()
            raise UserError(f"{flag}: the cluster in {args.run_dir} runs no reward service")
    try:
        results = predict.predict(
            client, base_model, args.model, records, Path(args.save_dir),
            fmt=args.format, max_tokens=args.max_tokens, temperature=args.temperature,
            reward_function=args.reward_function, reward_model=args.reward_model,
            lang=args.lang, strict_base=bool(args.base_model) and len(state.bases) > 1,
        )  # fmt: skip
    except (ValueError, ImportError) as exc:
        raise UserError(str(exc)) from None
    finally:
        client.close()
    print(json.dumps(results, indent=2))
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    state = ClusterState.load(args.run_dir)
    _, base_model = state.base(args.base_model)  # ClusterError (exit 2): none, or a bad one
    try:
        adapter = adapter_ref(args.model)
    except ValueError as exc:
        raise UserError(f"--model: {exc}") from None
    request = training_service_pb2.RunBenchmarkRequest(
        base_model=str(Path(base_model).resolve()),
        adapter=adapter,
        task_dir=str(Path(args.task_dir).resolve()),
        task=args.task,
        split=args.split,
        n_shot=args.n_shot,
        lang=args.lang,
        save_dir=str(Path(args.save_dir).resolve()) if args.save_dir else "",
        template=args.template,
    )
    with cluster.connect(args.run_dir, timeout=args.timeout) as client:
        reply = client.training.RunBenchmark(request, timeout=args.timeout)
    result = benchmark_dict(reply)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for name, accuracy in result["categories"].items():
        print(f"{name:>20}: {100 * accuracy:6.2f}")
    for s in result["subjects"]:
        print(f"{s['subject']:>20}: {100 * s['accuracy']:6.2f}  ({s['correct']}/{s['total']})")
    return 0


def register(sub) -> None:
    evaluate = sub.add_parser("eval", help="evaluate a model or adapter")
    commands = evaluate.add_subparsers(dest="eval_command", required=True)
    p = commands.add_parser(
        "benchmark",
        help="few-shot multiple choice in the MMLU layout, scored by each option's likelihood",
    )
    p.add_argument("--model", default="base", help="base, JOB (latest adapter) or JOB@VERSION")
    p.add_argument("--task-dir", required=True, help="folder holding <task>/ (MMLU layout)")
    p.add_argument("--task", required=True, help="benchmark folder name, e.g. mmlu")
    p.add_argument("--split", default="validation", choices=("validation", "test"))
    p.add_argument("--n-shot", type=int, default=5, help="dev examples before each question")
    p.add_argument("--lang", default="en", choices=("en", "zh"))
    p.add_argument("--save-dir", default="", help="write results.json and results.log here")
    p.add_argument("--template", default="", help="chat template (default: the tokenizer's)")
    p.add_argument(
        "--base-model",
        default="",
        help="base name or folder of the cluster (default: its first --base-model)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR)
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait")
    p.set_defaults(func=cmd_benchmark)

    p = commands.add_parser(
        "predict",
        help="generate an eval split through the rollout fleet: predictions.jsonl, BLEU-4, "
        "ROUGE-1/2/L, exact match, a reward function's and a reward model's mean",
    )
    p.add_argument("--model", default="base", help="base, JOB or JOB@VERSION")
    p.add_argument("--dataset", required=True, help="eval split: .jsonl or .json list")
    p.add_argument("--format", default="alpaca", help="alpaca, sharegpt, openai or prompt")
    p.add_argument("--save-dir", required=True, help="where predictions.jsonl and results go")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--reward-function", default="", help="a reward function's name to average")
    p.add_argument(
        "--reward-model", default="", help="a reward-modelling job's adapter JOB@VERSION to average"
    )
    p.add_argument("--lang", default="en", choices=LANGS, help="tokenization of the metrics")
    p.add_argument(
        "--base-model",
        default="",
        help="base name or folder of the cluster (default: its first --base-model)",
    )
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per unary call")
    p.set_defaults(func=cmd_predict)
