"""The ``kiki-events`` command: its argument parser and the dispatch to the commands.

``kiki-events serve`` runs the server (:mod:`.serve`), ``kiki-events schema`` prints
the JSON Schema of the events (:mod:`.schema`), ``kiki-events tail`` prints live
events from Redis (:mod:`.tail`), ``kiki-events history`` reads stored runs and events
from a server (:mod:`.history`). A bad configuration is one line on stderr and exit
code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .common import DEFAULT_CONFIG, PROG

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Stream LangGraph runs to browsers as typed events.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP/SSE server with the live dashboard")
    serve.add_argument("--config", type=Path, help=f"YAML settings (default: {DEFAULT_CONFIG} if it exists)")
    serve.add_argument("--host", help="interface to listen on (default: server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (default: server.port)")
    serve.add_argument(
        "--graph",
        action="append",
        default=[],
        metavar="NAME=PATH:ATTR",
        help="serve a graph, e.g. team=./agents/research_team.py:graph (repeatable)",
    )

    commands.add_parser("schema", help="print the JSON Schema of the StreamEvent union")

    tail = commands.add_parser("tail", help="print live events from Redis, one line each")
    tail.add_argument("--config", type=Path, help=f"YAML settings with provider: redis (default: {DEFAULT_CONFIG})")
    which = tail.add_mutually_exclusive_group()
    which.add_argument("--run", metavar="ID", help="every event of one run, from its start; ends after its done")
    which.add_argument("--thread", metavar="ID", help="every run that starts on a thread")
    which.add_argument("--topic", metavar="T", help="lifecycle events of one topic, e.g. agent:* (default: all)")
    tail.add_argument(
        "--after", type=_seq, default=0, metavar="SEQ", help="with --run: only the events after this seq (default: 0)"
    )
    tail.add_argument("--json", action="store_true", help="print each event as one line of JSON")

    from .history import add_history_parser

    add_history_parser(commands)
    return parser


def _seq(value: str) -> int:
    # ASCII digits only: ``str.isdigit`` also takes ``²`` or ``٣``, which ``int`` refuses.
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise argparse.ArgumentTypeError(f"expected a seq (0 or more, in digits 0-9), got {value!r}")
    return int(value)


def _ids_as_values(argv: Sequence[str]) -> list[str]:
    """``--run -x…`` → ``--run=-x…``: run and thread ids are URL-safe base64 and may begin with
    ``-``, which argparse would take for an option."""
    options = {"-h", "--help", "--config", "--run", "--thread", "--topic", "--after", "--json", "--event"}
    args: list[str] = []
    rest = iter(argv)
    for arg in rest:
        args.append(arg)
        if arg in ("--run", "--thread", "--event"):
            value = next(rest, None)
            if value is not None and value.startswith("-") and value not in options:
                args[-1] = f"{arg}={value}"
            elif value is not None:
                args.append(value)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kiki-events`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(_ids_as_values(sys.argv[1:] if argv is None else argv))
    if args.command == "tail" and args.after and args.run is None:
        parser.error("argument --after: only with --run")
    try:
        return _command(args)
    except BrokenPipeError:
        # The reader went away (``kiki-events schema | head``): stop quietly. Python
        # would flush stdout again at exit and complain, so point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _command(args: argparse.Namespace) -> int:
    # Each command imports what it needs only: ``schema`` starts without the runtime or the server.
    if args.command == "schema":
        from .schema import schema

        return schema(sys.stdout)
    if args.command == "history":
        from .history import history_command

        return history_command(args)
    if args.command == "tail":
        from .tail import tail_command

        return tail_command(args)
    from .serve import serve

    return serve(args)
