"""``kiki-events history search``: stored events across runs by type, agent and time, oldest first."""

from __future__ import annotations

import argparse
from typing import IO

from .client import HistoryClient
from .events import add_event_filters, print_events

__all__ = ["HELP", "NAME", "configure", "run"]

NAME = "search"
HELP = "stored events across runs by type, agent and time, oldest first (GET /events)"


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of ``history search``."""
    add_event_filters(parser)
    parser.add_argument("--since", metavar="WHEN", help="at or after: Unix seconds, ISO 8601 or a duration ago (24h)")
    parser.add_argument("--until", metavar="WHEN", help="before (same forms as --since)")


def run(args: argparse.Namespace, client: HistoryClient, out: IO[str]) -> int:
    """Print the events found, following pages until the last (or ``--limit``)."""
    params = {
        "type": args.types,
        "agent": args.agent,
        "since": args.since,
        "until": args.until,
        "limit": min(args.limit or 1000, 1000),
    }
    print_events(client.pages("/events", "events", params, args.limit), args.json, out)
    return 0
