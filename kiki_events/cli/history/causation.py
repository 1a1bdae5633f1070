"""``kiki-events history causation``: what led to a run or event, and what it started."""

from __future__ import annotations

import argparse
import json
from typing import IO, Any

from .client import HistoryClient
from .options import quote
from .runs import format_run

__all__ = ["HELP", "NAME", "configure", "run"]

NAME = "causation"
HELP = "the causation chain of a run or an event, both directions (GET /runs/{id}/causation)"


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of ``history causation``."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", metavar="ID", help="the chain of this run")
    which.add_argument("--event", metavar="RUN:SEQ", help="the chain of this event")
    parser.add_argument("--depth", type=int, choices=range(1, 65), default=16, metavar="N", help="steps each way")


def _links(title: str, arrow: str, links: list[dict[str, Any]], out: IO[str]) -> None:
    print(f"{title}:" if links else f"{title}: none", file=out)
    for link in links:
        via = f" via {link['via']}" if link.get("via") else ""
        print(f"  {'  ' * (link['depth'] - 1)}{arrow} [{link['depth']}]{via}  {format_run(link['run'])}", file=out)


def run(args: argparse.Namespace, client: HistoryClient, out: IO[str]) -> int:
    """Print the chain: the run (and event), its causes nearest first, its effects breadth first."""
    which = f"/runs/{quote(args.run)}" if args.run is not None else f"/events/{quote(args.event)}"
    path = f"{which}/causation"
    body = client.get(path, {"depth": args.depth})
    if args.json:
        print(json.dumps(body, separators=(",", ":")), file=out)
        return 0
    print(f"run    {format_run(body['run'])}", file=out)
    event = body.get("event")
    if event is not None:
        print(f"event  {event['run_id']}:{event['seq']} {event['type']} {event.get('agent') or ''}".rstrip(), file=out)
    _links("causes", "←", body["causes"], out)
    _links("effects", "→", body["effects"], out)
    return 0
