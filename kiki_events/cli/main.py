"""The ``kiki-events`` command.

``kiki-events serve`` runs the server (uvicorn) with the dashboard; without a
config file and without ``--graph`` it serves the demo research team from
``./agents/research_team.py``. ``kiki-events schema`` prints the JSON Schema of
the events. ``kiki-events tail`` prints live events from Redis (see
:mod:`kiki_events.cli.tail`). A bad configuration is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..codec import event_json_schema
from ..errors import ConfigError, GraphLoadError, MissingDependencyError, RunNotFoundError, TransportError
from ..heap import freeze_startup_heap, tune_collector

__all__ = ["DEFAULT_CONFIG", "DEMO_GRAPHS", "main"]

DEFAULT_CONFIG = Path("config/eventbus.yaml")
"""Used by ``serve`` when it exists in the current directory and no ``--config`` is given."""
DEMO_GRAPHS = {"research_team": "./agents/research_team.py:graph"}
"""Served when neither the configuration nor ``--graph`` names a graph."""

_PROG = "kiki-events"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_PROG, description="Stream LangGraph runs to browsers as typed events.")
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
    return parser


def _seq(value: str) -> int:
    # ASCII digits only: ``str.isdigit`` also takes ``²`` or ``٣``, which ``int`` refuses.
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise argparse.ArgumentTypeError(f"expected a seq (0 or more, in digits 0-9), got {value!r}")
    return int(value)


def _ids_as_values(argv: Sequence[str]) -> list[str]:
    """``--run -x…`` → ``--run=-x…``: run and thread ids are URL-safe base64 and may begin with
    ``-``, which argparse would take for an option."""
    options = {"-h", "--help", "--config", "--run", "--thread", "--topic", "--after", "--json"}
    args: list[str] = []
    rest = iter(argv)
    for arg in rest:
        args.append(arg)
        if arg in ("--run", "--thread"):
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
    if args.command == "schema":
        json.dump(event_json_schema(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        sys.stdout.flush()
        return 0
    if args.command == "tail":
        return _tail(args)
    try:
        return _serve(args)
    except (ConfigError, GraphLoadError, MissingDependencyError) as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2


def _graph_options(values: Sequence[str]) -> dict[str, str]:
    graphs: dict[str, str] = {}
    for value in values:
        name, sep, ref = value.partition("=")
        if not sep or not name.strip() or not ref.strip():
            raise ConfigError(f"--graph {value!r}: expected NAME=PATH:ATTR, e.g. team=./agents/team.py:graph")
        graphs[name.strip()] = ref.strip()
    return graphs


def _serve(args: argparse.Namespace) -> int:
    from ..config import load_settings

    config: Path | None = args.config
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    settings = load_settings(config)
    graphs = {**settings.graphs, **_graph_options(args.graph)} or dict(DEMO_GRAPHS)
    server = settings.server.model_copy(
        update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    )
    if not 0 <= server.port <= 65535:
        raise ConfigError(f"--port {server.port}: must be between 0 and 65535")
    settings = settings.model_copy(update={"graphs": graphs, "server": server})

    try:
        import uvicorn

        from ..runtime import KikiRuntime
        from ..server.app import create_app
        from .logs import configure_logging
    except ImportError as exc:
        raise MissingDependencyError(f"serving needs {exc.name}: pip install 'kiki-events[server]'") from None

    # Relative graph paths resolve against the current directory, like --graph values.
    runtime = KikiRuntime(settings, base_dir=Path.cwd())
    configure_logging(settings.logging)  # only once everything that can be wrong was checked
    app = create_app(runtime=runtime)
    principals = len(server.auth.bearer_tokens)  # never the tokens themselves
    access = f"bearer tokens of {principals} principal(s)" if principals else "anonymous"
    print(
        f"{_PROG}: serving http://{server.host}:{server.port}/ "
        f"(graphs: {', '.join(runtime.graphs.names())}; config: {config or 'built-in defaults'}; auth: {access})",
        flush=True,
    )
    # What was imported and built so far lives as long as the process: keep it out of
    # the collector's full passes, which otherwise stall the event loop.
    freeze_startup_heap()
    # Fewer, larger young passes: under load most objects then die before a pass sees
    # them, and full passes become rare (see kiki_events.heap).
    tune_collector()
    # On SIGTERM/SIGINT uvicorn stops accepting connections; open streams see the
    # shutdown and ask the runtime to end its runs (``runs.shutdown_grace``), so
    # every client receives its final ``done`` before the connection closes.
    uvicorn.run(
        app,
        host=server.host,
        port=server.port,
        log_level=settings.logging.level.lower(),
        log_config=None,  # keep our handlers: uvicorn's records go through them too
        timeout_graceful_shutdown=int(settings.runs.shutdown_grace) + 10,
    )
    return 0


def _tail(args: argparse.Namespace) -> int:
    import asyncio

    from ..config import load_settings
    from .tail import tail

    config: Path | None = args.config
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    try:
        settings = load_settings(config)
        if args.topic is not None and not args.topic.strip():
            raise ConfigError("--topic: give a topic such as agent:started or agent:*")
        run = tail(
            settings,
            run=args.run,
            after=args.after,
            thread=args.thread,
            topic=args.topic,
            as_json=args.json,
            out=sys.stdout,
        )
        return asyncio.run(run)
    except (ConfigError, MissingDependencyError, TransportError) as exc:
        source = f"{config}: " if config is not None and not str(exc).startswith(str(config)) else ""
        print(f"{_PROG}: error: {source}{exc}", file=sys.stderr)
        return 2
    except RunNotFoundError as exc:
        print(f"{_PROG}: error: {exc} (no node of this deployment knows it)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
