"""``kiki-events history runs``: stored runs, newest first, with their totals."""

from __future__ import annotations

import argparse
import json
import time
from typing import IO, Any

from .client import HistoryClient
from .options import count

__all__ = ["HELP", "NAME", "configure", "format_run", "run"]

NAME = "runs"
HELP = "stored runs, newest first, with their totals (GET /runs)"
_STATUSES = ("running", "success", "error", "interrupted", "cancelled")


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of ``history runs``."""
    parser.add_argument("--thread", metavar="ID", help="runs of this thread")
    parser.add_argument("--graph", metavar="NAME", help="runs of this graph")
    parser.add_argument("--agent", metavar="PATH", help="runs in which this agent (or one below it) worked")
    parser.add_argument(
        "--status", action="append", choices=_STATUSES, metavar="STATUS", help="runs in this status (repeatable)"
    )
    parser.add_argument("--since", metavar="WHEN", help="started at or after: Unix seconds, ISO 8601 or 24h ago")
    parser.add_argument("--until", metavar="WHEN", help="started before (same forms as --since)")
    parser.add_argument("--limit", type=count, default=20, metavar="N", help="runs per page (default 20)")
    parser.add_argument("--cursor", metavar="C", help="the page after this cursor (printed after a full page)")
    parser.add_argument("--all", action="store_true", help="every page, not only the first")


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp is not None else "-"


def format_run(run: dict[str, Any]) -> str:
    """One readable line: start, id, status, graph, duration, totals, cost, agents."""
    duration = f"{run['duration_s']:.1f}s" if run.get("duration_s") is not None else "-"
    failed = f" ({run['tool_errors']} failed)" if run.get("tool_errors") else ""
    cost = f" ${run['cost_usd']:.6f}" if run.get("cost_usd") is not None else ""
    thread = f" thread={run['thread_id']}" if run.get("thread_id") else ""
    cause = f" caused_by={run['caused_by']}" if run.get("caused_by") else ""
    agents = ",".join(run.get("agents") or ()) or "-"
    return (
        f"{_when(run['started_at'])}  {run['run_id']}  {run['status']:<11} {run.get('graph') or '-'}{thread}"
        f"  {duration} events={run['events']} llm={run['llm_calls']} tools={run['tool_calls']}{failed}"
        f" errors={run['errors']} tokens={run['usage']['total_tokens']}{cost}  agents={agents}{cause}"
    )


def run(args: argparse.Namespace, client: HistoryClient, out: IO[str]) -> int:
    """Print the runs (one line each, or one JSON object per line with ``--json``)."""
    params = {
        "thread": args.thread,
        "graph": args.graph,
        "agent": args.agent,
        "status": args.status,
        "since": args.since,
        "until": args.until,
        "limit": args.limit,
        "cursor": args.cursor,
    }
    while True:
        body = client.get("/runs", params)
        for item in body["runs"]:
            print(json.dumps(item, separators=(",", ":")) if args.json else format_run(item), file=out)
        cursor = body.get("cursor")
        if cursor is None:
            return 0
        if not args.all:
            if not args.json:
                print(f"(more: --cursor {cursor})", file=out)
            return 0
        params["cursor"] = cursor
