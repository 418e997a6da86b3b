"""``llamafleet data preview | prepare | get | list``: the data service from the command line.

Every command talks to the data service of the cluster in ``--run-dir`` through ``Client``; file
paths are made absolute here and read by the service (the local cluster shares this machine's
files). ``--json`` prints machine-readable output: ``input_ids`` and ``labels`` (-100 where no
loss is taken) for previews, the dataset and its stats for ``prepare``/``get``/``list``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from google.protobuf import json_format
from rich.console import Console
from rich.table import Table
from rich.text import Text

from llamafleet import cluster
from llamafleet.client import Client
from llamafleet.commands import UserError
from llamafleet.data.v1 import data_pb2 as d
from llamafleet.data.v1 import data_service_pb2 as pb

console = Console()

FORMATS = {
    "alpaca": d.DATASET_FORMAT_ALPACA,
    "sharegpt": d.DATASET_FORMAT_SHAREGPT,
    "openai": d.DATASET_FORMAT_OPENAI,
    "preference_alpaca": d.DATASET_FORMAT_PREFERENCE_ALPACA,
    "preference_sharegpt": d.DATASET_FORMAT_PREFERENCE_SHAREGPT,
    "text": d.DATASET_FORMAT_TEXT,
    "prompt": d.DATASET_FORMAT_PROMPT,
}
KINDS = {
    "pretrain": d.EXAMPLE_KIND_PRETRAIN,
    "sft": d.EXAMPLE_KIND_SFT,
    "preference": d.EXAMPLE_KIND_PREFERENCE,
    "prompt": d.EXAMPLE_KIND_PROMPT,
    "feedback": d.EXAMPLE_KIND_FEEDBACK,
}
KIND_NAMES = {v: k for k, v in KINDS.items()}
POLICIES = {"skip": d.BAD_ROW_POLICY_SKIP, "fail": d.BAD_ROW_POLICY_FAIL}


def _client(args: argparse.Namespace) -> Client:
    return cluster.connect(args.run_dir, timeout=args.timeout)


def _tokenization(args: argparse.Namespace) -> d.TokenizationOptions:
    tok = d.TokenizationOptions(
        tokenizer_path=os.path.abspath(args.tokenizer),
        cutoff_len=args.cutoff_len,
        train_on_prompt=args.train_on_prompt,
        mask_history=args.mask_history,
    )
    tok.template.name = args.template
    tok.template.tool_format = args.tool_format
    if args.default_system is not None:
        tok.template.default_system = args.default_system
    return tok


def _format(args: argparse.Namespace) -> d.FormatOptions:
    return d.FormatOptions(format=FORMATS[args.format]) if args.format else d.FormatOptions()


def _record(args: argparse.Namespace) -> str:
    """The record as the JSON text the user wrote (checked to be one object): sent as
    ``record_json``, so the preview keeps its key order and integers as a dataset file does."""
    raw = args.record
    if raw.startswith("@"):
        path = Path(raw[1:])
        if not path.is_file():
            raise UserError(f"--record {raw}: no such file")
        try:
            raw = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(
                f"--record {args.record}: not valid UTF-8 ({exc.reason} at byte {exc.start})"
            ) from None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"--record is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UserError("--record must be one JSON object")
    return raw


def cmd_preview(args: argparse.Namespace) -> int:
    request = pb.PreviewExampleRequest(
        record_json=_record(args),
        format=_format(args),
        kind=KINDS.get(args.kind, d.EXAMPLE_KIND_UNSPECIFIED),
        tokenization=_tokenization(args),
    )
    with _client(args) as client:
        response = client.data.PreviewExample(request)
    sequences = [
        {
            "name": s.name,
            "text": s.text,
            "input_ids": list(s.input_ids),
            "labels": list(s.labels),
            "trained_spans": [[span.start, span.end] for span in s.trained_spans],
            "trained_texts": list(s.trained_texts),
            "truncated": s.truncated,
        }
        for s in response.sequences
    ]
    if args.json:
        out = {"kind": KIND_NAMES.get(response.kind, ""), "sequences": sequences}
        if response.reference_answer:
            out["reference_answer"] = response.reference_answer
        print(json.dumps(out, ensure_ascii=False))
        return 0
    for s in response.sequences:
        title = f"[bold]{s.name or KIND_NAMES.get(response.kind, '')}[/bold]"
        console.print(
            f"{title}: {len(s.input_ids)} tokens" + (" (truncated)" if s.truncated else "")
        )
        console.print(
            Text("trained: ", style="dim") + Text(" | ".join(s.trained_texts), style="green")
        )
        console.print(Text(s.text))
    return 0


def _stats(stats: d.DatasetStats) -> dict:
    return {
        "source_rows": stats.source_rows,
        "examples": stats.examples,
        "rows": stats.rows,
        "tokens": stats.tokens,
        "trained_tokens": stats.trained_tokens,
        "padding_fraction": stats.padding_fraction,
        "truncated_examples": stats.truncated_examples,
        "dropped_rows": dict(stats.dropped_rows),
        "estimated": stats.estimated,
    }


def _dataset(ds: d.Dataset) -> dict:
    return {
        "dataset_id": ds.id,
        "fingerprint": ds.fingerprint,
        "kind": KIND_NAMES.get(ds.kind, ""),
        "create_time": ds.create_time.ToJsonString(),
        "stats": _stats(ds.stats),
        "splits": [
            {
                "split": d.Split.Name(s.split).removeprefix("SPLIT_").lower(),
                "stats": _stats(s.stats),
                "shard_paths": list(s.shard_paths),
            }
            for s in ds.splits
        ],
        "spec": json_format.MessageToDict(ds.spec, preserving_proto_field_name=True),
    }


def _print_dataset(ds: d.Dataset) -> None:
    table = Table(title=f"dataset {ds.id} ({KIND_NAMES.get(ds.kind, '')})")
    table.add_column("stat")
    table.add_column("value", justify="right")
    for key, value in _stats(ds.stats).items():
        if key == "dropped_rows":
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
        elif key == "padding_fraction":
            value = f"{value:.2%}"
        table.add_row(key, str(value))
    console.print(table)


def cmd_prepare(args: argparse.Namespace) -> int:
    source = d.DatasetSource(format=_format(args))
    if args.registry:
        source.registry.name = args.registry
        if args.dataset_dir:
            source.registry.dataset_dir = os.path.abspath(args.dataset_dir)
    elif args.files:
        source.files.paths.extend(os.path.abspath(p) for p in args.files)
    else:
        raise UserError("name the data: --file PATH (repeatable) or --registry NAME")
    if args.max_samples is not None:
        source.max_samples = args.max_samples
    spec = d.DatasetSpec(
        sources=[source],
        kind=KINDS.get(args.kind, d.EXAMPLE_KIND_UNSPECIFIED),
        tokenization=_tokenization(args),
        packing=args.packing,
        streaming=args.streaming,
        seed=args.seed,
        bad_row_policy=POLICIES[args.bad_rows],
        eval_fraction=args.eval_fraction,
    )
    request = pb.PrepareDatasetRequest(dataset_id=args.dataset_id, spec=spec)
    with _client(args) as client:
        response = client.data.PrepareDataset(request, timeout=args.timeout)
    if args.json:
        print(json.dumps(_dataset(response.dataset), ensure_ascii=False))
    else:
        _print_dataset(response.dataset)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        ds = client.data.GetDataset(pb.GetDatasetRequest(dataset_id=args.dataset_id)).dataset
    if args.json:
        print(json.dumps(_dataset(ds), ensure_ascii=False))
    else:
        _print_dataset(ds)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        response = client.data.ListDatasets(pb.ListDatasetsRequest(page_size=args.page_size))
    if args.json:
        print(json.dumps([_dataset(ds) for ds in response.datasets], ensure_ascii=False))
        return 0
    table = Table(title="datasets")
    for col in ("id", "kind", "examples", "rows", "tokens", "padding"):
        table.add_column(col)
    for ds in response.datasets:
        s = ds.stats
        table.add_row(
            ds.id, KIND_NAMES.get(ds.kind, ""), str(s.examples), str(s.rows), str(s.tokens),
            f"{s.padding_fraction:.2%}",
        )  # fmt: skip
    console.print(table)
    return 0


def _common(p: argparse.ArgumentParser, run_dir: str) -> None:
    p.add_argument("--run-dir", default=run_dir, help="the local cluster's run directory")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the service")
    p.add_argument("--json", action="store_true", help="print JSON")


def _encoding(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=sorted(FORMATS), help="record shape")
    p.add_argument("--kind", choices=sorted(KINDS), help="example kind (default: from the format)")
    p.add_argument("--tokenizer", required=True, help="local Hugging Face model/tokenizer folder")
    p.add_argument("--template", default="", help="named template; empty = the tokenizer's own")
    p.add_argument("--tool-format", default="", help="function-calling format")
    p.add_argument("--default-system", default=None, help="replaces the template's system prompt")
    p.add_argument("--cutoff-len", type=int, default=0, help="max tokens per example (0 = 2048)")
    p.add_argument("--train-on-prompt", action="store_true")
    p.add_argument("--mask-history", action="store_true", help="train the last turn only")


def register(sub) -> None:
    run_dir = os.environ.get("LLAMAFLEET_RUN_DIR", ".llamafleet")
    data = sub.add_parser("data", help="preview and prepare datasets")
    commands = data.add_subparsers(dest="data_command", required=True)

    p = commands.add_parser("preview", help="render one record with its trained spans")
    p.add_argument("--record", required=True, help="one JSON record, or @FILE holding one")
    _encoding(p)
    _common(p, run_dir)
    p.set_defaults(func=cmd_preview)

    p = commands.add_parser("prepare", help="tokenize, mask and pack a dataset")
    p.add_argument("--file", dest="files", action="append", help="data file or folder")
    p.add_argument("--registry", help="entry name in dataset_info.json")
    p.add_argument("--dataset-dir", help="folder of dataset_info.json (default: the service's)")
    p.add_argument("--dataset-id", default="", help="id to give it (default: from the spec)")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--packing", action="store_true")
    p.add_argument("--streaming", action="store_true", help="do not materialise; stream")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-fraction", type=float, default=0.0)
    p.add_argument("--bad-rows", choices=sorted(POLICIES), default="skip")
    _encoding(p)
    _common(p, run_dir)
    p.set_defaults(func=cmd_prepare)

    p = commands.add_parser("get", help="one prepared dataset")
    p.add_argument("dataset_id")
    _common(p, run_dir)
    p.set_defaults(func=cmd_get)

    p = commands.add_parser("list", help="prepared datasets, newest first")
    p.add_argument("--page-size", type=int, default=50)
    _common(p, run_dir)
    p.set_defaults(func=cmd_list)
