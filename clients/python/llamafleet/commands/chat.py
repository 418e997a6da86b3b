"""``llamafleet chat`` (talk to a base model or a job's adapter) and ``llamafleet plot``."""

from __future__ import annotations

import argparse
import sys

from llamafleet.chat import UnknownModel, cluster_backend
from llamafleet.client import Client
from llamafleet.cluster import DEFAULT_RUN_DIR, ClusterState, credentials_for
from llamafleet.commands import UserError
from llamafleet.rollout.v1 import rollout_pb2
from llamafleet.training.v1 import training_pb2, training_service_pb2

HELP = "commands: /reset (forget the conversation), /exit (or Ctrl-D)"


def _client(run_dir: str, base: str = "") -> tuple[Client, ClusterState]:
    """A client of the cluster's services; rollout/reward: those of ``base`` (a name)."""
    state = ClusterState.load(run_dir)
    return Client(state.addresses_for(base), credentials=credentials_for(state)), state


def cmd_chat(args: argparse.Namespace) -> int:
    state = ClusterState.load(args.run_dir)
    name, _ = state.base(args.base_model)  # ClusterError (exit 2) without a base, or a bad one
    client, state = _client(args.run_dir, name)
    backend = cluster_backend(state, client, args.base_model)
    try:
        backend.adapter(args.model)  # fail early on a bad model name
    except (UnknownModel, ValueError) as exc:
        backend.close()
        raise UserError(f"{exc}; models: {', '.join(backend.model_names())}") from None
    sampling = rollout_pb2.SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages: list[dict] = list(system)
    out = sys.stdout
    interactive = sys.stdin.isatty()
    if interactive:
        out.write(f"chatting with {args.model}; {HELP}\n")
    while True:
        if interactive:
            out.write("you> ")
            out.flush()
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            messages = list(system)
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        out.write(f"{args.model}> ")
        reply = ""
        for response in backend.generate(args.model, messages, sampling):
            if response.HasField("tokens"):
                reply += response.tokens.text
                out.write(response.tokens.text)
                out.flush()
        out.write("\n")
        messages.append({"role": "assistant", "content": reply})
    backend.close()
    client.close()
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Loss (and eval loss) against step from the job's events, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    client, _ = _client(args.run_dir)
    job = client.training.GetTrainingJob(
        training_service_pb2.GetTrainingJobRequest(job_id=args.job_id)
    ).job
    train, evals = [], []
    last = job.last_event_sequence  # a running job: plot what has happened so far
    if last:
        request = training_service_pb2.WatchTrainingJobRequest(job_id=args.job_id)
        for reply in client.training.WatchTrainingJob(request, timeout=120):
            event = reply.event
            if event.HasField("metrics"):
                m = event.metrics
                if m.HasField("loss"):
                    train.append((m.step, m.loss))
                if m.HasField("eval_loss"):
                    evals.append((m.step, m.eval_loss))
            if event.sequence >= last:
                break
    client.close()
    if not train and not evals:
        raise UserError(f"job {args.job_id} has no loss values yet")
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    state = training_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
    ax.set(xlabel="step", ylabel="loss", title=f"{args.job_id} ({state})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    print(f"wrote {args.output} ({len(train)} train points, {len(evals)} eval points)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("chat", help="talk to the base model or a job's adapter (rollout service)")
    p.add_argument("--model", default="base", help="base | JOB_ID | JOB_ID@VERSION")
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR)
    p.add_argument(
        "--base-model",
        default="",
        help="the base to talk to: a base name or folder of the cluster (default: its first "
        "--base-model); with several bases, only that base's adapters are accepted",
    )
    p.add_argument("--system", default="", help="a system prompt")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-tokens", type=int, default=256)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("plot", help="plot a job's loss curve to a PNG")
    p.add_argument("job_id")
    p.add_argument("-o", "--output", default="loss.png")
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR)
    p.set_defaults(func=cmd_plot)
