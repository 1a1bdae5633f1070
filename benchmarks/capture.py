"""P1, P1b and P5 (README.md, "Performance"), side by side in one run.

* P1  – capturing runs with KikiCallbackHandler + EventBus + one consuming
        subscriber, against ``graph.astream(stream_mode="messages")``   (bar ≤ 1.15×)
* P1b – the same, against ``graph.astream_events(version="v2")``       (bar ≤ 0.70×)
* P5  – average wire size of a token frame in our SSE format, against the
        ``messages`` tuple frame LangGraph Server sends for the same token (bar ≤ 0.15×)

P1 and P1b are measured on two graph shapes (``--graph long|short|both``, default both):

* ``long``  – the demo's benchmark graph: two LLM nodes, each streaming ``--tokens``
  chunks; per-token costs dominate.
* ``short`` – a supervisor loop (supervisor → worker 1 → supervisor → … → worker
  ``--workers`` → supervisor → end), every LLM call streaming ``--short-tokens``
  chunks; per-run, per-node and per-LLM-call costs dominate. A round is
  ``--runs`` runs of each variant.

Every model is the scripted one with zero delay. In every round the three
variants take turns run by run (in an order that rotates from round to round);
the kiki variant keeps one bus (with its subscriber) per round and one handler
per run, as the server does (the bus's start and stop are not timed). After the
warm-up the process settles its heap and collector as ``kiki-events serve`` does
(``--no-freeze``: not). Figures are
medians over rounds of the per-round ratios of wall time (the bar); P1 is also
given in this process's CPU time, which other processes on a busy machine
disturb less, and as the ratio of each variant's fastest round.

    python3 scripts/dev.py run python benchmarks/capture.py [--rounds 7] [--graph both] [--tokens 2000]
        [--workers 3] [--short-tokens 10] [--runs 20] [--breakdown] [--no-freeze] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from langchain_core.messages import AIMessage
from langgraph.callbacks import GraphCallbackHandler
from langgraph.graph import END, START, StateGraph

from benchmarks._common import load_demo, median, verdict, write_results
from kiki_events import EventBus, KikiCallbackHandler, StreamEvent
from kiki_events.core.runlog import RunLog
from kiki_events.formats.kiki import FORMAT
from kiki_events.heap import freeze_startup_heap, tune_collector

INPUT = {"messages": [{"role": "user", "content": "Write the report."}]}

Once = Callable[[Any], Awaitable[int]]
"""Runs ``graph`` once; returns the items (or events) it saw."""
Variant = Callable[[], AbstractAsyncContextManager[Once]]
"""A session of one variant for one round: what lives across runs (the kiki bus) lives in it."""


@dataclass(frozen=True)
class Shape:
    """One graph to measure and how many runs of each variant make one round."""

    name: str
    graph: Any
    runs: int
    llm_calls: int
    tokens_per_call: int
    describe: str


def long_shape(tokens: int, runs: int = 1) -> Shape:
    graph = load_demo("research_team").build_benchmark_graph(tokens)
    return Shape("long", graph, runs, 2, tokens, f"2 LLM nodes x {tokens} tokens, {runs} run(s) per round")


def short_shape(workers: int, tokens: int, runs: int) -> Shape:
    graph = build_supervisor_graph(workers, tokens)
    calls = 2 * workers + 1
    describe = f"supervisor loop, {workers} workers: {calls} LLM calls x {tokens} tokens, {runs} runs per round"
    return Shape("short", graph, runs, calls, tokens, describe)


def build_supervisor_graph(workers: int, tokens: int) -> Any:
    """``supervisor`` hands the task to each worker in turn, then ends; every call streams ``tokens`` chunks."""
    demo = load_demo("research_team")
    names = [f"worker_{i}" for i in range(1, workers + 1)]
    graph = StateGraph(demo.BenchmarkState)
    for seed, name in enumerate(["supervisor", *names], start=1):
        text = demo.lorem_tokens(tokens, seed=seed)
        model = demo.ScriptedChatModel(script=lambda _messages, text=text: AIMessage(content=text))
        graph.add_node(name, demo._LLMNode(name, model, f"You are {name}.", demo._reply_as(name)))

    def route(state: Mapping[str, Any]) -> str:
        turns = sum(1 for message in state["messages"] if getattr(message, "name", None) == "supervisor")
        return names[turns - 1] if turns <= len(names) else END

    graph.add_edge(START, "supervisor")
    graph.add_conditional_edges("supervisor", route, [*names, END])
    for name in names:
        graph.add_edge(name, "supervisor")
    return graph.compile(name="supervisor_loop")


async def messages_once(graph: Any) -> int:
    count = 0
    async for _ in graph.astream(INPUT, stream_mode="messages"):
        count += 1
    return count


async def astream_events_once(graph: Any) -> int:
    count = 0
    async for _ in graph.astream_events(INPUT, version="v2"):
        count += 1
    return count


@asynccontextmanager
async def via_messages() -> AsyncIterator[Once]:
    yield messages_once


@asynccontextmanager
async def via_astream_events() -> AsyncIterator[Once]:
    yield astream_events_once


@asynccontextmanager
async def kiki_session(*sinks: Callable[[StreamEvent], object] | None) -> AsyncIterator[Once]:
    """One bus with one consuming subscriber (and ``sinks``, if any); one handler per run."""
    seen = 0

    def consume(event: StreamEvent) -> None:
        nonlocal seen
        seen += 1

    async with EventBus() as bus:
        for sink in sinks:
            if sink is not None:
                bus.add_sink(sink)  # type: ignore[arg-type]
        bus.subscribe(consume, name="consumer")

        async def once(graph: Any) -> int:
            before = seen
            await graph.ainvoke(INPUT, {"callbacks": [KikiCallbackHandler(bus)]})
            await bus.drain()
            return seen - before

        yield once


VARIANTS: dict[str, Variant] = {"kiki": kiki_session, "messages": via_messages, "astream_events": via_astream_events}


class NoopHandler(GraphCallbackHandler):
    """A handler that does nothing but make chat models stream, as ours and ``messages`` mode do."""

    run_inline = True
    raise_error = False

    def tap_output_aiter(self, run_id: Any, output: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return output

    def tap_output_iter(self, run_id: Any, output: Iterator[Any]) -> Iterator[Any]:
        return output


async def ainvoke_once(graph: Any, config: Any = None) -> int:
    await graph.ainvoke(INPUT, config)
    return 0


@asynccontextmanager
async def via_no_handler() -> AsyncIterator[Once]:
    yield ainvoke_once


@asynccontextmanager
async def via_noop_handler() -> AsyncIterator[Once]:
    async def once(graph: Any) -> int:
        return await ainvoke_once(graph, {"callbacks": [NoopHandler()]})

    yield once


@asynccontextmanager
async def via_kiki_no_bus() -> AsyncIterator[Once]:
    async def once(graph: Any) -> int:
        events: list[StreamEvent] = []
        await graph.ainvoke(INPUT, {"callbacks": [KikiCallbackHandler(events.append)]})
        return len(events)

    yield once


BREAKDOWN: dict[str, Variant] = {
    "no_handler": via_no_handler,
    "noop_handler": via_noop_handler,
    "kiki_no_bus": via_kiki_no_bus,
}
"""``--breakdown``: ``ainvoke`` alone (models do not stream), with a handler that does
nothing (what LangChain spends to call any streaming handler), our handler into a list."""


async def measure(
    shape: Shape, rounds: int, variants: Mapping[str, Variant] = VARIANTS, *, settle: bool = True
) -> dict[str, Any]:
    """Time every variant on ``shape``: wall and CPU seconds per round (``shape.runs`` runs each), by variant.

    Within a round the variants take turns run by run (in an order that rotates from
    round to round), so a change in the machine's load falls on all of them alike.
    ``settle``: after the warm-up, freeze the heap and tune the collector as
    ``kiki-events serve`` does (undone at the end). Otherwise a full collection walks
    every object LangGraph and pydantic made at start-up (tens of ms, more than a
    short run) in whichever run happens to trigger it.
    """
    names = list(variants)
    async with AsyncExitStack() as stack:
        for name in names:  # warm-up
            await (await stack.enter_async_context(variants[name]()))(shape.graph)
    thresholds = gc.get_threshold()
    if settle:
        tune_collector()
        freeze_startup_heap()
    try:
        return await _rounds(shape, rounds, variants)
    finally:
        if settle:
            gc.unfreeze()
            gc.set_threshold(*thresholds)


async def _rounds(shape: Shape, rounds: int, variants: Mapping[str, Variant]) -> dict[str, Any]:
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    counts: dict[str, int] = {}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        wall = dict.fromkeys(names, 0.0)
        used = dict.fromkeys(names, 0.0)
        seen = dict.fromkeys(names, 0)
        async with AsyncExitStack() as stack:
            sessions = {name: await stack.enter_async_context(variants[name]()) for name in names}
            gc.collect()
            for _ in range(shape.runs):
                for name in order:
                    cpu_start, start = time.process_time(), time.perf_counter()
                    seen[name] += await sessions[name](shape.graph)
                    wall[name] += time.perf_counter() - start
                    used[name] += time.process_time() - cpu_start
        for name in names:
            times[name].append(wall[name])
            cpu[name].append(used[name])
            counts[name] = seen[name]
    return {"times": times, "cpu": cpu, "counts": counts}


def ratios(times: Mapping[str, list[float]], name: str, anchor: str) -> list[float]:
    return [ours / theirs for ours, theirs in zip(times[name], times[anchor], strict=True)]


def summary(shape: Shape, measured: Mapping[str, Any]) -> dict[str, Any]:
    times = measured["times"]
    p1, p1b = ratios(times, "kiki", "messages"), ratios(times, "kiki", "astream_events")
    p1_cpu = ratios(measured["cpu"], "kiki", "messages")
    best = {name: min(v) for name, v in times.items()}
    return {
        "shape": shape.describe,
        "llm_calls_per_run": shape.llm_calls,
        "tokens_per_call": shape.tokens_per_call,
        "runs_per_round": shape.runs,
        "ms_per_run_median": {name: round(median(v) / shape.runs * 1000, 4) for name, v in times.items()},
        "vs_messages": {name: round(median(ratios(times, name, "messages")), 3) for name in times},
        "items_per_run": {name: count // shape.runs for name, count in measured["counts"].items()},
        "P1": {
            "ratio": round(median(p1), 3),
            "range": [round(min(p1), 3), round(max(p1), 3)],
            "per_round": [round(r, 4) for r in p1],
            "cpu_ratio": round(median(p1_cpu), 3),
            "cpu_range": [round(min(p1_cpu), 3), round(max(p1_cpu), 3)],
            "best_ratio": round(best["kiki"] / best["messages"], 3),
            "bar": 1.15,
            "anchor": "astream(stream_mode='messages')",
        },
        "P1b": {
            "ratio": round(median(p1b), 3),
            "range": [round(min(p1b), 3), round(max(p1b), 3)],
            "bar": 0.70,
            "anchor": "astream_events(version='v2')",
        },
    }


async def aenumerate(items: Any) -> Any:
    index = 0
    async for item in items:
        yield index, item
        index += 1


async def wire_sizes(graph: Any) -> dict[str, float]:
    """Average bytes per token frame: ours vs LangGraph Server's ``messages`` frame."""
    events: list[StreamEvent] = []
    await graph.ainvoke(INPUT, {"callbacks": [KikiCallbackHandler(events.append)], "configurable": {"thread_id": "t"}})
    log = RunLog(events[0].run_id, len(events))  # frames exactly as the server stores and sends them
    for event in events:
        log.append(event)
    frames, _ = log.read(0, len(events))
    encoder = FORMAT.encoder()
    ours = [len(encoder.encode(frame)) for frame in frames if frame.event.type == "token"]
    theirs = []
    stream = graph.astream(INPUT, {"configurable": {"thread_id": "t"}}, stream_mode="messages")
    async for seq, (chunk, metadata) in aenumerate(stream):
        # LangGraph Server frames a messages-mode item as the JSON pair [message, metadata]; a
        # resumable stream (like ours, always) adds an id line of milliseconds and a counter. Its
        # own run metadata (assistant, graph, versions, host …) would add more: this anchor is
        # the smaller, local part of that frame.
        data = json.dumps([chunk.model_dump(), metadata], separators=(",", ":"), default=str)
        frame_id = f"{time.time_ns() // 1_000_000}-{seq}"
        theirs.append(len(f"id: {frame_id}\nevent: messages\ndata: {data}\n\n".encode()))
    avg_ours = sum(ours) / len(ours)
    avg_theirs = sum(theirs) / len(theirs)
    return {
        "ours_bytes": round(avg_ours, 1),
        "anchor_bytes": round(avg_theirs, 1),
        "ratio": round(avg_ours / avg_theirs, 4),
    }


def shapes(args: argparse.Namespace) -> list[Shape]:
    chosen = []
    if args.graph in ("long", "both"):
        chosen.append(long_shape(args.tokens))
    if args.graph in ("short", "both"):
        chosen.append(short_shape(args.workers, args.short_tokens, args.runs))
    return chosen


async def main(args: argparse.Namespace) -> dict[str, Any]:
    graphs: dict[str, Any] = {}
    for shape in shapes(args):
        variants = {**VARIANTS, **BREAKDOWN} if args.breakdown else VARIANTS
        graphs[shape.name] = summary(shape, await measure(shape, args.rounds, variants, settle=not args.no_freeze))
    wire = await wire_sizes(load_demo("research_team").build_benchmark_graph(args.tokens))
    p5 = {**wire, "bar": 0.15, "anchor": "LangGraph Server messages tuple frame"}
    return {"rounds": args.rounds, "heap_frozen": not args.no_freeze, "graphs": graphs, "P5": p5}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--graph", choices=("long", "short", "both"), default="both")
    parser.add_argument("--tokens", type=int, default=2000, help="tokens per LLM call of the long graph")
    parser.add_argument("--workers", type=int, default=3, help="workers of the short graph's supervisor loop")
    parser.add_argument("--short-tokens", type=int, default=10, help="tokens per LLM call of the short graph")
    parser.add_argument("--runs", type=int, default=20, help="runs of each variant per round, short graph")
    parser.add_argument("--no-freeze", action="store_true", help="leave the collector as Python starts it")
    parser.add_argument("--breakdown", action="store_true", help="also time the variants of BREAKDOWN (see there)")
    parser.add_argument("--out", help="JSON output file (default benchmarks/results/capture.json)")
    return parser


def print_graph(name: str, figures: Mapping[str, Any]) -> None:
    print(f"  [{name}] {figures['shape']}")
    for variant, ms in figures["ms_per_run_median"].items():
        items, ratio = figures["items_per_run"][variant], figures["vs_messages"][variant]
        print(f"    {variant:<15} {ms:8.3f} ms/run  {ratio:6.3f}x messages  ({items} items/run)")
    p1, p1b = figures["P1"], figures["P1b"]
    low, high = p1["range"]
    print(
        f"    P1  kiki / messages        {p1['ratio']:.3f}x  (rounds {low:.3f}-{high:.3f}, bar <= {p1['bar']})"
        f"  {verdict(p1['ratio'], p1['bar'])}"
    )
    low, high = p1["cpu_range"]
    print(f"        in CPU time            {p1['cpu_ratio']:.3f}x  (rounds {low:.3f}-{high:.3f})")
    print(f"        fastest / fastest      {p1['best_ratio']:.3f}x")
    p1b_verdict = verdict(p1b["ratio"], p1b["bar"])
    print(f"    P1b kiki / astream_events  {p1b['ratio']:.3f}x  (bar <= {p1b['bar']})  {p1b_verdict}")


def cli() -> None:
    args = parser().parse_args()
    results = asyncio.run(main(args))
    path = write_results("capture", results, args.out)
    print(f"capture benchmark: {args.rounds} rounds (medians)")
    for name, figures in results["graphs"].items():
        print_graph(name, figures)
    p5 = results["P5"]
    print(
        f"  P5  token frame {p5['ours_bytes']} B vs {p5['anchor_bytes']} B = {p5['ratio']:.3f}x"
        f"  (bar <= {p5['bar']})  {verdict(p5['ratio'], p5['bar'])}"
    )
    print(f"  written to {path}")


if __name__ == "__main__":
    cli()
