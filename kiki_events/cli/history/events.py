"""``kiki-events history events``: the stored events of one run or one thread, in order."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import IO, Any

from ...codec import decode, encode
from ..tail import format_event
from .client import HistoryClient
from .options import count, quote, seq

__all__ = ["HELP", "NAME", "configure", "print_events", "run"]

NAME = "events"
HELP = "the stored events of a run or a thread (GET /runs/{id}/events, /threads/{id}/events)"


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of ``history events``."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", metavar="ID", help="the events of this run")
    which.add_argument("--thread", metavar="ID", help="the events of this thread's runs, oldest run first")
    add_event_filters(parser)
    parser.add_argument("--after", type=seq, default=None, metavar="SEQ", help="with --run: events after this seq")


def add_event_filters(parser: argparse.ArgumentParser) -> None:
    """``--type`` (repeatable), ``--agent`` and ``--limit`` (events in all)."""
    parser.add_argument("--type", action="append", dest="types", metavar="TYPE", help="keep this type (repeatable)")
    parser.add_argument("--agent", metavar="PATH", help="keep this agent's events (and its sub-agents')")
    parser.add_argument("--limit", type=count, default=None, metavar="N", help="print at most N events (default: all)")


def print_events(items: Iterable[Any], json_lines: bool, out: IO[str]) -> None:
    """Each event of ``items`` (JSON objects) as a readable line, or as its compact JSON."""
    for item in items:
        event = decode(json.dumps(item))
        print(encode(event).decode() if json_lines else format_event(event), file=out)


def run(args: argparse.Namespace, client: HistoryClient, out: IO[str]) -> int:
    """Print the events, following pages until the last (or ``--limit``); 2 for ``--after`` without ``--run``."""
    if args.after is not None and args.run is None:
        print("kiki-events history events: --after: only with --run", file=sys.stderr)
        return 2
    path = f"/runs/{quote(args.run)}/events" if args.run is not None else f"/threads/{quote(args.thread)}/events"
    params = {"type": args.types, "agent": args.agent, "after": args.after, "limit": min(args.limit or 1000, 1000)}
    print_events(client.pages(path, "events", params, args.limit), args.json, out)
    return 0
