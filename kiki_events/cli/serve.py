"""``kiki-events serve``: the HTTP/SSE server (uvicorn) with the dashboard.

Without a config file and without ``--graph`` it serves the demo research team from
``./agents/research_team.py`` (README.md, "The demo").
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError, GraphLoadError, MissingDependencyError
from ..heap import freeze_startup_heap, tune_collector
from .common import PROG, config_file, fail

__all__ = ["DEMO_GRAPHS", "serve"]

DEMO_GRAPHS = {"research_team": "./agents/research_team.py:graph"}
"""Served when neither the configuration nor ``--graph`` names a graph."""


def serve(args: argparse.Namespace) -> int:
    """Run the server until it is stopped; the exit code (2 and one line on stderr for a bad configuration)."""
    try:
        return _serve(args)
    except (ConfigError, GraphLoadError, MissingDependencyError) as exc:
        return fail(str(exc))


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

    config = config_file(args.config)
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
        f"{PROG}: serving http://{server.host}:{server.port}/ "
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
