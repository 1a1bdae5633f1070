"""``kiki-events history …``: the stored history, read from a server over HTTP.

One module per subcommand, listed in :data:`SUBCOMMANDS`; each has ``NAME``,
``HELP``, ``configure(parser)`` (its options) and ``run(args, client, out) -> int``.
Adding a subcommand is adding a module and its entry. Every subcommand takes
``--url`` (``KIKI_EVENTS_URL``, default ``http://127.0.0.1:8000``), ``--token``
(``KIKI_EVENTS_TOKEN``: a bearer token of ``server.auth.bearer_tokens``) and
``--json``. The server applies its ownership rules: the token's principal sees its own
runs only. A failed request is one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import IO

from ..common import PROG
from . import causation, events, runs, search
from .client import DEFAULT_URL, TOKEN_ENV, URL_ENV, HistoryClient, HistoryRequestError

__all__ = ["SUBCOMMANDS", "add_history_parser", "history_command"]

SUBCOMMANDS: tuple[ModuleType, ...] = (runs, events, search, causation)
"""The subcommands of ``history``, in the order ``--help`` lists them."""


def add_history_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``history`` and its subcommands to the command parser."""
    history = commands.add_parser("history", help="stored runs and events, from a server (GET /runs, /events …)")
    subcommands = history.add_subparsers(dest="history_command", required=True, metavar="SUBCOMMAND")
    for module in SUBCOMMANDS:
        parser = subcommands.add_parser(module.NAME, help=module.HELP)
        module.configure(parser)
        parser.add_argument("--url", help=f"the server (default: ${URL_ENV}, else {DEFAULT_URL})")
        parser.add_argument("--token", help=f"a bearer token (default: ${TOKEN_ENV})")
        parser.add_argument("--json", action="store_true", help="print JSON (one object per line) instead of text")


def history_command(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Run the ``history`` subcommand ``args`` names; 1 with one line on stderr when a request fails."""
    module = next(m for m in SUBCOMMANDS if args.history_command == m.NAME)
    try:
        client = HistoryClient.from_args(args.url, args.token)
        code: int = module.run(args, client, out or sys.stdout)
    except HistoryRequestError as exc:
        print(f"{PROG} history {module.NAME}: {exc}", file=sys.stderr)
        return 1
    return code
