"""The two uvicorn servers of ``benchmarks/formats.py``, each run as its own process.

    python benchmarks/_formats_servers.py ours|peer --port PORT --tokens N --gc A,B,C

``ours`` (run by the project's ``.venv``) is the ready-made app (``create_app``) with
the benchmark's graphs; ``peer`` (run by the peer's virtualenv, see ``_agui_peer.py``)
serves the same graphs through ``ag-ui-langgraph``'s ``add_langgraph_fastapi_endpoint``,
twice: ``/peer/{graph}`` as the package ships it (``emit_raw_events=True``, its default)
and ``/peer-lean/{graph}`` with ``emit_raw_events=False``. The graphs are built by the
same code in both (``graphs()``), each compiled with its own ``InMemorySaver``.

Both processes are set up alike: the same uvicorn options (access log off), the heap
frozen and the collector tuned as ``kiki-events serve`` does (``--gc``), and three
routes of the benchmark's own:

* ``GET /bench/cpu`` – ``time.process_time()`` of the process (all its threads);
* ``GET /bench/info`` – pid, event loop, Python and library versions;
* ``POST /bench/bare/{graph}`` – the graph's ``ainvoke`` on a new thread with no
  callbacks (nothing streams, not even the model): the floor both servers share;
* ``POST /bench/streamed/{graph}`` – the same with a callback handler that does
  nothing but make the models stream (LangChain's own per-chunk work, which every
  streaming endpoint pays before its own).

Only the standard library is imported at the top: the peer's virtualenv has no kiki_events.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import itertools
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GRAPHS = ("long", "tools")
TASK = "Compare Redis streams and pub/sub"


def graphs(tokens: int) -> dict[str, Any]:
    """``long``: two LLM nodes, ``tokens`` chunks each, no tools (``build_benchmark_graph``, as in
    ``benchmarks/capture.py``); ``tools``: the research team (supervisor → researcher → two tool
    calls → researcher → supervisor → writer), the writer's answer ``tokens`` chunks long."""
    from langgraph.checkpoint.memory import InMemorySaver

    sys.path.insert(0, str(ROOT))
    from benchmarks._common import load_demo

    demo = load_demo("research_team")
    return {
        "long": demo.build_benchmark_graph(tokens, checkpointer=InMemorySaver()),
        "tools": demo.build_graph(token_delay=0.0, tokens_per_answer=tokens, checkpointer=InMemorySaver()),
    }


def graph_input(text: str = TASK) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def add_bench_routes(app: Any, served: dict[str, Any]) -> None:
    threads = itertools.count()

    @app.get("/bench/cpu")
    async def cpu() -> dict[str, float]:
        return {"cpu": time.process_time()}

    @app.get("/bench/info")
    async def info() -> dict[str, Any]:
        from benchmarks._agui_peer import COMPARED

        def version(name: str) -> str | None:
            try:
                return importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                return None

        loop = type(asyncio.get_running_loop())
        return {
            "pid": __import__("os").getpid(),
            "python": sys.version.split()[0],
            "loop": f"{loop.__module__}.{loop.__qualname__}",
            "gc_threshold": list(gc.get_threshold()),
            "versions": {name: found for name in (*COMPARED, "ag-ui-langgraph") if (found := version(name))},
        }

    @app.post("/bench/bare/{name}")
    async def bare(name: str) -> dict[str, int]:
        config = {"configurable": {"thread_id": f"bare-{next(threads)}"}}
        state = await served[name].ainvoke(graph_input(), config)
        return {"messages": len(state["messages"])}

    @app.post("/bench/streamed/{name}")
    async def streamed(name: str) -> dict[str, int]:
        config = {"configurable": {"thread_id": f"streamed-{next(threads)}"}, "callbacks": [streaming_only()]}
        state = await served[name].ainvoke(graph_input(), config)
        return {"messages": len(state["messages"])}


def streaming_only() -> Any:
    """A callback handler that does nothing but make chat models stream (as any streaming handler does)."""
    from langgraph.callbacks import GraphCallbackHandler

    class StreamingOnly(GraphCallbackHandler):  # type: ignore[misc]
        run_inline = True
        raise_error = False

        def tap_output_aiter(self, run_id: Any, output: Any) -> Any:
            return output

        def tap_output_iter(self, run_id: Any, output: Any) -> Any:
            return output

    return StreamingOnly()


def ours_app(tokens: int) -> Any:
    from kiki_events.config import Settings
    from kiki_events.server import create_app

    served = graphs(tokens)
    settings = Settings.from_mapping({"logging": {"level": "WARNING"}, "server": {"dashboard": False}})
    app = create_app(settings, graphs=served)
    add_bench_routes(app, served)
    return app


def peer_app(tokens: int) -> Any:
    from ag_ui_langgraph import LangGraphAgent, add_langgraph_fastapi_endpoint
    from fastapi import FastAPI

    served = graphs(tokens)
    app = FastAPI()
    for name, graph in served.items():
        add_langgraph_fastapi_endpoint(app, LangGraphAgent(name=name, graph=graph), path=f"/peer/{name}")
        lean = LangGraphAgent(name=name, graph=graph, emit_raw_events=False)
        add_langgraph_fastapi_endpoint(app, lean, path=f"/peer-lean/{name}")
    add_bench_routes(app, served)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("ours", "peer"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--gc", required=True, help="collector thresholds, A,B,C")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import uvicorn

    app = ours_app(args.tokens) if args.kind == "ours" else peer_app(args.tokens)
    # As ``kiki-events serve`` does (kiki_events.heap), in both processes alike.
    gc.collect()
    gc.freeze()
    thresholds = [int(value) for value in args.gc.split(",")]
    gc.set_threshold(*thresholds)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
