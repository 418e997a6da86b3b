"""``llamafleet train``, ``llamafleet jobs ls|get|cancel|logs`` and ``llamafleet export``.

``train CONFIG.yaml`` submits a job (a LLaMA-Factory flat YAML or a native TrainingJobSpec YAML,
see ``lf_config``) and follows it with a progress bar (step, loss, tokens/s, ETA); Ctrl-C detaches
and leaves the job running. Following survives a training-service restart: the watch reconnects
after the last event it saw. Everything goes through ``llamafleet.client.Client``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime
from pathlib import Path

import grpc
from google.protobuf import json_format
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from llamafleet import cluster
from llamafleet.client import Client, RpcError
from llamafleet.commands import UserError
from llamafleet.lf_config import FLAT_KEYS, ConfigFileError, load_job_spec
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api

TERMINAL = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}
WATCH_TIMEOUT_S = 3600.0  # one watch call; following reconnects after it
RECONNECT_S = 60.0  # how long following waits for a restarting service

console = Console()
err_console = Console(stderr=True)


def connect(args: argparse.Namespace) -> Client:
    token = os.environ.get("LLAMAFLEET_TOKEN", "")
    if args.address:
        return Client({"training": args.address}, token=token)
    return cluster.connect(args.run_dir, token=token)


def state_name(state: int) -> str:
    return pb.JobState.Name(state).removeprefix("JOB_STATE_")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def describe_event(event: pb.TrainingEvent) -> str:
    """One line per event, as ``jobs logs`` prints it."""
    kind = event.WhichOneof("event")
    when = event.time.ToDatetime().strftime("%H:%M:%S")
    head = f"{event.sequence:>5} {when}"
    if kind == "state_change":
        change = event.state_change
        text = f"{head} state {state_name(change.state)}"
        return text + (f": {change.message}" if change.message else "")
    if kind == "metrics":
        m = event.metrics
        parts = [f"step {m.step}", f"epoch {m.epoch:.2f}"]
        if m.HasField("loss"):
            parts.append(f"loss {m.loss:.4f}")
        parts.append(f"lr {m.learning_rate:.2e}")
        if m.HasField("grad_norm"):
            parts.append(f"grad_norm {m.grad_norm:.3f}")
        parts.append(f"{m.tokens_per_second:.0f} tok/s")
        if m.HasField("eval_loss"):
            parts.append(f"eval_loss {m.eval_loss:.4f}")
        if m.eta.seconds:
            parts.append(f"eta {_duration(m.eta.seconds)}")
        parts += [f"{k} {v:.4g}" for k, v in sorted(m.extra.items())]
        return f"{head} " + "  ".join(parts)
    if kind == "log":
        level = pb.LogLevel.Name(event.log.level).removeprefix("LOG_LEVEL_")
        return f"{head} {level} [rank {event.log.rank}] {event.log.logger}: {event.log.message}"
    if kind == "checkpoint_saved":
        return (
            f"{head} checkpoint step {event.checkpoint_saved.step}: {event.checkpoint_saved.path}"
        )
    if kind == "adapter_published":
        a = event.adapter_published
        return f"{head} adapter v{a.version} published (step {a.step})"
    return f"{head} (unknown event)"


def watch(client: Client, job_id: str, after: int = 0, until: int | None = None):
    """Yield events after ``after``, reconnecting past service restarts; stop at ``until``."""
    gave_up_at = None
    while True:
        request = api.WatchTrainingJobRequest(job_id=job_id, after_sequence=after)
        try:
            for response in client.training.WatchTrainingJob(request, timeout=WATCH_TIMEOUT_S):
                gave_up_at = None
                after = response.event.sequence
                yield response.event
                if until is not None and after >= until:
                    return
            return
        except RpcError as exc:
            if exc.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            gave_up_at = gave_up_at or time.monotonic() + RECONNECT_S
            if time.monotonic() > gave_up_at:
                raise
            time.sleep(1.0)


def follow(client: Client, job: pb.TrainingJob) -> int:
    """Show progress until the job ends; returns its final state."""
    total, final = job.total_steps or None, job.state
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  {task.fields[tps]} tok/s  ETA {task.fields[eta]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(job.id, total=total, loss="-", tps="-", eta="-")
        for event in watch(client, job.id):
            kind = event.WhichOneof("event")
            if kind == "metrics" and not event.metrics.HasField("loss"):
                kind = "eval"  # an evaluation-only record: printed, not a progress update
            if kind == "metrics":
                m = event.metrics
                total = int(m.extra.get("total_steps", 0)) or total
                progress.update(
                    bar,
                    completed=m.step,
                    total=total,
                    loss=f"{m.loss:.4f}" if m.HasField("loss") else "-",
                    tps=f"{m.tokens_per_second:.0f}",
                    eta=_duration(m.eta.seconds) if m.eta.seconds else "-",
                )
                continue
            if kind == "checkpoint_saved" and total is None:  # the plan is known by now
                total = _get(client, job.id).total_steps or None
                progress.update(bar, total=total)
            if kind == "state_change":
                final = event.state_change.state
            progress.console.print(describe_event(event), markup=False, highlight=False)
    return final


def _get(client: Client, job_id: str) -> pb.TrainingJob:
    return client.training.GetTrainingJob(api.GetTrainingJobRequest(job_id=job_id)).job


def _finish_line(job_id: str, state: int) -> int:
    colour = {pb.JOB_STATE_SUCCEEDED: "green", pb.JOB_STATE_CANCELLED: "yellow"}.get(state, "red")
    console.print(f"job {job_id}: [{colour}]{state_name(state)}[/{colour}]")
    return 0 if state == pb.JOB_STATE_SUCCEEDED else 1


def cmd_train(args: argparse.Namespace) -> int:
    try:
        spec, notes = load_job_spec(args.config)
    except ConfigFileError as exc:
        raise UserError(str(exc)) from None
    for note in notes:
        err_console.print(f"note: {note}", markup=False, highlight=False)
    if args.job_id:
        spec.job_id = args.job_id
    if args.resume:
        spec.resume = True
    with connect(args) as client:
        job = client.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec)).job
        console.print(f"job {job.id}: {state_name(job.state)}")
        if args.detach:
            return 0
        try:
            final = follow(client, job)
        except KeyboardInterrupt:
            err_console.print(
                f"detached; job {job.id} keeps running (`llamafleet jobs logs {job.id} -f` to "
                f"follow again, `llamafleet jobs cancel {job.id}` to stop it)"
            )
            return 130
        if final == pb.JOB_STATE_FAILED:
            err_console.print(_get(client, job.id).failure_message, markup=False, highlight=False)
        return _finish_line(job.id, final)


def cmd_ls(args: argparse.Namespace) -> int:
    states = [pb.JobState.Value(f"JOB_STATE_{s.upper()}") for s in args.state or []]
    with connect(args) as client:
        jobs, token = [], ""
        while len(jobs) < args.limit:
            page = client.training.ListTrainingJobs(
                api.ListTrainingJobsRequest(states=states, page_size=100, page_token=token)
            )
            jobs += page.jobs
            token = page.next_page_token
            if not token:
                break
    jobs = jobs[: args.limit]
    if args.json:
        print(json.dumps([json_format.MessageToDict(j) for j in jobs], indent=2))
        return 0
    table = Table()
    for column in ("job", "state", "stage", "step", "loss", "created"):
        table.add_column(column)
    for job in jobs:
        step = f"{job.latest_step}/{job.total_steps}" if job.total_steps else str(job.latest_step)
        loss = job.latest_metrics.loss if job.latest_metrics.HasField("loss") else None
        table.add_row(
            job.id,
            state_name(job.state),
            pb.Stage.Name(job.spec.stage).removeprefix("STAGE_").lower(),
            step,
            "-" if loss is None else f"{loss:.4f}",
            _local(job.create_time),
        )
    console.print(table)
    return 0


def _local(ts) -> str:
    if not ts.seconds:
        return "-"
    return datetime.fromtimestamp(ts.seconds).strftime("%Y-%m-%d %H:%M:%S")


def cmd_get(args: argparse.Namespace) -> int:
    with connect(args) as client:
        job = _get(client, args.job_id)
    if args.json:
        print(json_format.MessageToJson(job))
        return 0
    rows = [
        ("job", job.id),
        ("state", state_name(job.state)),
        ("stage", pb.Stage.Name(job.spec.stage).removeprefix("STAGE_").lower()),
        ("finetuning", pb.FinetuningType.Name(job.spec.finetuning.type).split("_")[-1].lower()),
        ("base model", job.spec.base_model),
        (
            "created / started / ended",
            " / ".join(_local(t) for t in (job.create_time, job.start_time, job.end_time)),
        ),  # fmt: skip
        ("step", f"{job.latest_step}" + (f"/{job.total_steps}" if job.total_steps else "")),
    ]
    if job.latest_metrics.HasField("loss"):
        rows.append(("loss", f"{job.latest_metrics.loss:.4f}"))
    if job.failure_message:
        rows.append(("failure", job.failure_message))
    for ckpt in job.checkpoints:
        rows.append(("checkpoint", f"step {ckpt.step}: {ckpt.path}"))
    for v in job.adapter_versions:
        rows.append(("adapter", f"{job.adapter_id}@{v.version} step {v.step} "
                     f"sha256 {v.sha256[:12]} {v.size_bytes / 1e6:.1f} MB"))  # fmt: skip
    for key, value in rows:
        console.print(f"{key + ':':<28}{value}", markup=False, highlight=False)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with connect(args) as client:
        reply = client.training.CancelTrainingJob(api.CancelTrainingJobRequest(job_id=args.job_id))
        job = reply.job
        if job.state in TERMINAL:
            console.print(f"job {job.id} had already ended: {state_name(job.state)}")
            return 0
        console.print(f"job {job.id}: cancel requested (it saves a checkpoint and stops)")
        if not args.wait:
            return 0
        final = job.state
        for event in watch(client, job.id, after=job.last_event_sequence):
            if event.WhichOneof("event") == "state_change":
                final = event.state_change.state
        code = _finish_line(job.id, final)
        return 0 if final == pb.JOB_STATE_CANCELLED else code


def cmd_logs(args: argparse.Namespace) -> int:
    with connect(args) as client:
        until = None if args.follow else _get(client, args.job_id).last_event_sequence
        if until is not None and until <= args.after:
            return 0
        for event in watch(client, args.job_id, after=args.after, until=until):
            print(describe_event(event), flush=True)  # plain lines: made for grep and pipes
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    mode = {"merged": pb.EXPORT_MODE_MERGED, "adapter": pb.EXPORT_MODE_ADAPTER_ONLY}[args.mode]
    out = str(Path(args.output_dir).expanduser().absolute())
    with connect(args) as client:
        reply = client.training.ExportModel(
            api.ExportModelRequest(
                job_id=args.job_id, version=args.version, mode=mode, output_dir=out
            ),
            timeout=args.timeout,
        )
    what = "merged model" if reply.mode == pb.EXPORT_MODE_MERGED else "adapter"
    version = f" v{reply.version}" if reply.version else ""
    console.print(f"exported {what} of {args.job_id}{version} to {reply.output_dir}")
    for name in reply.files:
        console.print(f"  {name}", markup=False, highlight=False)
    return 0


def _connection_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--run-dir",
        default=os.environ.get("LLAMAFLEET_RUN_DIR", ".llamafleet"),
        help="the local cluster's state folder (env LLAMAFLEET_RUN_DIR)",
    )
    p.add_argument(
        "--address",
        default=os.environ.get("LLAMAFLEET_TRAINING_ADDRESS", ""),
        help="host:port of a training service, instead of the local cluster "
        "(env LLAMAFLEET_TRAINING_ADDRESS; token from LLAMAFLEET_TOKEN)",
    )
    return p


def register(sub) -> None:
    keys = ", ".join(sorted(FLAT_KEYS))
    p = _connection_args(
        sub.add_parser(
            "train",
            help="submit a training job and follow it",
            epilog=f"LLaMA-Factory keys llamafleet reads: {keys}.",
        )
    )
    p.add_argument("config", help="LLaMA-Factory flat YAML, or a TrainingJobSpec as YAML")
    p.add_argument("--job-id", help="job id (idempotent: resubmitting the same spec reattaches)")
    p.add_argument("--resume", action="store_true", help="continue the job from its checkpoint")
    p.add_argument("--detach", action="store_true", help="submit and return at once")
    p.set_defaults(func=cmd_train)

    jobs = sub.add_parser("jobs", help="list, inspect, cancel and read training jobs")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True)
    p = _connection_args(jsub.add_parser("ls", help="jobs, newest first"))
    p.add_argument("--state", action="append", choices=["queued", "running", "succeeded",
                   "failed", "cancelled"], help="only jobs in this state (repeatable)")  # fmt: skip
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ls)
    p = _connection_args(jsub.add_parser("get", help="one job in detail"))
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_get)
    p = _connection_args(jsub.add_parser("cancel", help="stop a job (keeps its last checkpoint)"))
    p.add_argument("job_id")
    p.add_argument("--wait", action="store_true", help="wait until it has stopped")
    p.set_defaults(func=cmd_cancel)
    p = _connection_args(jsub.add_parser("logs", help="a job's events"))
    p.add_argument("job_id")
    p.add_argument("-f", "--follow", action="store_true", help="keep following until it ends")
    p.add_argument("--after", type=int, default=0, help="start after this event sequence")
    p.set_defaults(func=cmd_logs)

    p = _connection_args(sub.add_parser("export", help="write a job's model or adapter out"))
    p.add_argument("job_id")
    p.add_argument("output_dir", help="folder on the training machine (must not exist or be empty)")
    p.add_argument("--version", type=int, default=0, help="adapter version; 0 = the latest")
    p.add_argument("--mode", choices=["merged", "adapter"], default="merged")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the export")
    p.set_defaults(func=cmd_export)
