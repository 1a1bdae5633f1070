"""Per-token server CPU and bytes of each wire format, and P7: our AG-UI endpoint against ag-ui-langgraph's.

Two uvicorn servers run side by side, each in its own process, serving the same two
graphs built by the same code (``benchmarks/_formats_servers.py``), every model the
scripted one with zero delay, so only the streaming differs:

* ``long``  – ``build_benchmark_graph`` (as in ``benchmarks/capture.py``): two LLM
  nodes, ``--tokens`` text chunks each;
* ``tools`` – the research team: supervisor → researcher (two tool calls, their
  arguments streamed) → tools → researcher → supervisor → writer, the writer's
  answer ``--tokens`` chunks long.

**Ours** is the ready-made app (``create_app``; metrics on, as by default). Its variants,
each the endpoint a client of that format uses, the request read to its end over a
raw socket:

* ``kiki``     – ``POST /runs/stream`` (our format);
* ``agui-1.0`` – ``POST /ag-ui/{graph}`` with ``protocolVersion: "1.0"``;
* ``agui-0.0`` – ``POST /ag-ui/{graph}`` without a version (the 0.0.x events);
* ``aisdk``    – ``POST /ai-sdk/{graph}`` (the AI SDK UI message stream);
* ``bare``     – the graph's ``ainvoke`` in the server with no callbacks at all (its
  model does not even stream): the floor every variant stands on;
* ``streamed`` – the same with a callback handler that only makes the models stream:
  LangChain's own work per chunk, which every streaming endpoint pays first.

**The peer** is ``ag-ui-langgraph``'s own FastAPI endpoint
(``add_langgraph_fastapi_endpoint``, built on ``astream_events`` v2): ``peer`` as the
package ships it (``emit_raw_events=True``: each LangGraph event also goes out as a
``RAW`` event and rides on the AG-UI event it caused), ``peer-lean`` with
``emit_raw_events=False``, and ``peer-bare`` / ``peer-streamed`` (the floors, in the
peer's process).

The peer is installed with pip into a virtualenv of its own (never the project's
``.venv``): ``--peer-env DIR``, else ``~/.cache/kiki-events-bench/ag-ui-langgraph-<version>-…``
(``$KIKI_BENCH_CACHE`` moves it), pinned to the exact versions of every library the
project's environment has (LangGraph, LangChain, FastAPI, uvicorn, pydantic …) so both
servers run the same ones; see ``benchmarks/_agui_peer.py``. ``python
benchmarks/_agui_peer.py`` makes it alone. ``--peer require`` (the default) stops with
an error when it cannot be installed; ``--peer auto`` then measures ours alone and says
why; ``--peer skip`` does not try.

Server CPU is ``time.process_time()`` of the server's process read over HTTP before and
after each variant's ``--runs`` requests; a token is a text chunk a model streamed.
Before anything is timed, and for every timed request, each stream is read back and
checked against the run the graph really makes (every message's text, every tool call
with its arguments, every tool result, the stream's first and last event): a variant
is only compared once its streams are complete. Rounds rotate the order of the
variants. Beside the HTTP figures, each of our encoders is timed alone, in this process,
on one run's stored frames (``encoders``). P7 (bar ≤ 0.5, ours at least twice as cheap)
is the median over rounds of the per-round ratio ``agui-1.0 / peer`` of CPU per token,
also given against ``peer-lean``, and above each server's floor. Printed as a table and
written as JSON (``benchmarks/results/formats.json``).

    python3 scripts/dev.py run python benchmarks/formats.py [--rounds 5] [--runs 2] [--tokens 2000]
        [--graph both] [--peer require|auto|skip] [--peer-env DIR] [--peer-version V] [--out FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _agui_peer as peer_env
from benchmarks._common import ROOT, die_with_parent, free_port, write_results
from benchmarks._formats_servers import GRAPHS, TASK
from benchmarks._formats_servers import graphs as build_graphs
from benchmarks._formats_tables import encoder_costs, expected_run, print_results, summarise
from benchmarks._streams import READERS, Expected, problems, request
from kiki_events.heap import SERVING_THRESHOLDS

_threads = itertools.count(1)


@dataclass(frozen=True)
class Variant:
    name: str
    server: str
    """``ours`` or ``peer``."""
    reading: str | None
    """The reader of its streams (``_streams.READERS``); ``None``: not a stream (the floor)."""

    def call(self, graph: str) -> tuple[str, dict[str, Any]]:
        """The request's path and body."""
        thread = f"bench-{next(_threads)}"
        agui: dict[str, Any] = {
            "threadId": thread, "runId": f"run-{thread}", "protocolVersion": "1.0",
            "messages": [{"id": "m1", "role": "user", "content": TASK}],
            "state": {}, "tools": [], "context": [], "forwardedProps": {},
        }  # fmt: skip
        if self.name == "kiki":
            return "/runs/stream?format=kiki", {"graph": graph, "message": TASK, "thread_id": thread}
        if self.name == "agui-1.0":
            return f"/ag-ui/{graph}", agui
        if self.name == "agui-0.0":
            return f"/ag-ui/{graph}", {k: v for k, v in agui.items() if k != "protocolVersion"}
        if self.name == "aisdk":
            message = {"id": "m1", "role": "user", "parts": [{"type": "text", "text": TASK}]}
            return f"/ai-sdk/{graph}", {"id": thread, "messages": [message], "trigger": "submit-message"}
        if self.name in ("peer", "peer-lean"):
            return f"/{self.name}/{graph}", agui
        return f"/bench/{self.name.removeprefix('peer-')}/{graph}", {}


OURS = [
    Variant("kiki", "ours", "kiki"),
    Variant("agui-1.0", "ours", "agui"),
    Variant("agui-0.0", "ours", "agui"),
    Variant("aisdk", "ours", "aisdk"),
    Variant("bare", "ours", None),
    Variant("streamed", "ours", None),
]
PEER = [
    Variant("peer", "peer", "agui"),
    Variant("peer-lean", "peer", "agui"),
    Variant("peer-bare", "peer", None),
    Variant("peer-streamed", "peer", None),
]


class Server:
    """One of the two server processes (``_formats_servers.py``), dying with this one."""

    def __init__(self, kind: str, python: str, tokens: int) -> None:
        self.kind = kind
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix=f"kiki-formats-{kind}-", suffix=".log", delete=False)  # noqa: SIM115
        command = [python, str(ROOT / "benchmarks" / "_formats_servers.py"), kind, "--port", str(self.port),
                   "--tokens", str(tokens), "--gc", ",".join(map(str, SERVING_THRESHOLDS))]  # fmt: skip
        parent = os.getpid()
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=self.log, stderr=self.log, preexec_fn=lambda: die_with_parent(parent)
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                self.info = self.get("/bench/info")
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the {kind} server did not start:\n{self.output()}") from None
                time.sleep(0.1)

    def get(self, path: str) -> Any:
        response = request(self.port, path, timeout=30)
        if response.status != 200:
            raise RuntimeError(f"{self.kind} GET {path}: {response.status} {response.body[:300]!r}")
        return json.loads(response.body)

    def cpu(self) -> float:
        return float(self.get("/bench/cpu")["cpu"])

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


class StreamError(RuntimeError):
    """A stream did not carry the whole run (or a request failed)."""


def one_request(server: Server, variant: Variant, graph: str, expected: Expected) -> dict[str, Any]:
    """Send ``variant``'s request for ``graph``; check what came back; its bytes and events."""
    path, body = variant.call(graph)
    response = request(server.port, path, body)
    if response.status != 200:
        raise StreamError(f"{variant.name} on {graph}: HTTP {response.status}: {response.body[:500]!r}")
    if variant.reading is None:
        return {"wire": response.wire, "body": len(response.body), "events": 0, "seconds": response.seconds}
    seen = READERS[variant.reading](response.body)
    found = problems(variant.reading, seen, expected)
    if found:
        raise StreamError(f"{variant.name} on {graph}: the stream is not the run: " + "; ".join(found))
    return {"wire": response.wire, "body": len(response.body), "events": len(seen.types), "seconds": response.seconds}


def timed_batch(server: Server, variant: Variant, graph: str, expected: Expected, runs: int) -> dict[str, Any]:
    """``runs`` requests of one variant, between two readings of the server's CPU clock."""
    before = server.cpu()
    answers = [one_request(server, variant, graph, expected) for _ in range(runs)]
    cpu = server.cpu() - before
    return {
        "cpu_s": cpu,
        "wire": sum(a["wire"] for a in answers),
        "body": sum(a["body"] for a in answers),
        "events": answers[0]["events"],
        "seconds": sum(a["seconds"] for a in answers),
    }


def measure(servers: dict[str, Server], variants: list[Variant], graph: str, expected: Expected, args: Any) -> Any:
    """Every variant on ``graph``: one checked warm-up request each, then ``--rounds`` rounds."""
    for variant in variants:
        one_request(servers[variant.server], variant, graph, expected)
    rounds: dict[str, list[dict[str, Any]]] = {variant.name: [] for variant in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for variant in order:
            batch = timed_batch(servers[variant.server], variant, graph, expected, args.runs)
            rounds[variant.name].append(batch)
    return rounds


def start_peer(args: argparse.Namespace) -> tuple[peer_env.PeerEnv | None, str | None]:
    """The peer's virtualenv, or (``--peer auto``) why there is none."""
    if args.peer == "skip":
        return None, "--peer skip"
    try:
        env_dir = Path(args.peer_env) if args.peer_env else None
        return peer_env.ensure_peer(args.peer_version, env_dir), None
    except peer_env.PeerUnavailable as exc:
        if args.peer == "require":
            raise SystemExit(f"formats benchmark: ag-ui-langgraph cannot be installed: {exc}") from None
        return None, str(exc)


def main(args: argparse.Namespace) -> dict[str, Any]:
    env, skipped = start_peer(args)
    chosen = list(GRAPHS) if args.graph == "both" else [args.graph]
    local = build_graphs(args.tokens)
    expected = {name: expected_run(local[name]) for name in chosen}
    encoders = {name: encoder_costs(local[name], expected[name].tokens) for name in chosen}
    servers = {"ours": Server("ours", sys.executable, args.tokens)}
    try:
        if env is not None:
            servers["peer"] = Server("peer", str(env.python), args.tokens)
        variants = OURS + (PEER if env is not None else [])
        measured = {name: measure(servers, variants, name, expected[name], args) for name in chosen}
        info = {kind: server.info for kind, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    results = summarise(measured, expected, encoders, args)
    results["servers"] = info
    if env is None:
        results["peer"] = {"skipped": skipped}
    else:
        ours_v, peer_v = info["ours"]["versions"], info["peer"]["versions"]
        differ = {n: [ours_v.get(n), peer_v.get(n)] for n in peer_env.COMPARED if ours_v.get(n) != peer_v.get(n)}
        results["peer"] = {"package": f"ag-ui-langgraph=={peer_v.get('ag-ui-langgraph')}", "env": str(env.path),
                           "constrained": env.constrained, "versions_that_differ": differ}  # fmt: skip
    return results


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=2, help="requests of each variant per round")
    parser.add_argument(
        "--tokens", type=int, default=2000, help="text chunks per LLM call (long), of the answer (tools)"
    )
    parser.add_argument("--graph", choices=(*GRAPHS, "both"), default="both")
    parser.add_argument("--peer", choices=("require", "auto", "skip"), default="require")
    parser.add_argument("--peer-env", help="the peer's virtualenv (made there if it is not ready)")
    parser.add_argument("--peer-version", default=peer_env.PEER_VERSION, help="ag-ui-langgraph version")
    parser.add_argument(
        "--out", "--json", dest="out", help="JSON output file (default benchmarks/results/formats.json)"
    )
    return parser


def cli() -> None:
    args = parser().parse_args()
    try:
        results = main(args)
    except StreamError as exc:
        raise SystemExit(f"formats benchmark: {exc}") from None
    path = write_results("formats", results, args.out)
    print_results(results)
    print(f"  written to {path}")


if __name__ == "__main__":
    cli()
