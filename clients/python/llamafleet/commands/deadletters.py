"""``llamafleet requeue``: replay dead-lettered work items onto the streams they came from.

An item reaches ``llamafleet:deadletter`` after ``max_deliveries`` failed attempts (``llamafleet
status`` lists the latest with their reasons). Once the cause is fixed (the adapter version is
published, the scorer configured, ...), ``requeue`` puts it back, with its original id and
payload, and removes its dead letter; running the same command again changes nothing.
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from llamafleet import cluster
from llamafleet.cluster import DEFAULT_RUN_DIR
from llamafleet.dead_letters import DEADLETTER_STREAM, requeue

console = Console()


def cmd_requeue(args: argparse.Namespace) -> int:
    r = cluster.redis_for(args.run_dir, args.redis_url)
    results = requeue(r, args.ids, every=args.all)
    if args.json:
        print(json.dumps([vars(x) for x in results], indent=2))
        return 0
    if not results:
        console.print("no dead letters to requeue")
    for x in results:
        if x.new_entry:
            console.print(
                f"requeued {x.item_id} onto {x.stream} (entry {x.new_entry}); removed dead "
                f"letter(s) {', '.join(x.dead_letter_entries)}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        elif x.dead_letter_entries:
            console.print(
                f"{x.item_id}: already requeued by another call", markup=False, soft_wrap=True
            )
        else:
            console.print(
                f"{x.item_id}: not in {DEADLETTER_STREAM} (already requeued, or never "
                "dead-lettered); nothing to do",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "requeue",
        help="put dead-lettered items back on their source streams (after fixing the cause)",
    )
    p.add_argument(
        "ids",
        nargs="*",
        metavar="ID",
        help="dead-letter entry ids or item ids, as `llamafleet status` lists them",
    )
    p.add_argument("--all", action="store_true", help="requeue every dead letter")
    p.add_argument(
        "--run-dir",
        default=DEFAULT_RUN_DIR,
        help="where `llamafleet up` keeps its state (env LLAMAFLEET_RUN_DIR)",
    )
    p.add_argument(
        "--redis-url", help="the queue Redis, instead of the one `llamafleet up` recorded"
    )
    p.add_argument("--json", action="store_true", help="print what was requeued as JSON")
    p.set_defaults(func=cmd_requeue)
