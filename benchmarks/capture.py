"""P1, P1b and P5 (README.md, "Performance"), side by side in one run.

* P1  – capturing a run with KikiCallbackHandler + EventBus + one consuming
        subscriber, against ``graph.astream(stream_mode="messages")``   (bar ≤ 1.15×)
* P1b – the same, against ``graph.astream_events(version="v2")``       (bar ≤ 0.70×)
* P5  – average wire size of a token frame in our SSE format, against the
        ``messages`` tuple frame LangGraph Server sends for the same token (bar ≤ 0.15×)

The graph is the demo's benchmark graph: two LLM nodes, each streaming
``--tokens`` chunks from the scripted model with zero delay. Every round runs
all three variants (in rotating order); figures are medians over rounds.

    python3 scripts/dev.py run python benchmarks/capture.py [--rounds 7] [--tokens 2000] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import load_demo, median, verdict, write_results
from kiki_events import EventBus, KikiCallbackHandler, StreamEvent
from kiki_events.core.runlog import RunLog
from kiki_events.formats.kiki import FORMAT

INPUT = {"messages": [{"role": "user", "content": "Write the report."}]}


async def via_messages(graph: Any) -> int:
    count = 0
    async for _ in graph.astream(INPUT, stream_mode="messages"):
        count += 1
    return count


async def via_astream_events(graph: Any) -> int:
    count = 0
    async for _ in graph.astream_events(INPUT, version="v2"):
        count += 1
    return count


async def via_kiki(graph: Any) -> int:
    seen = 0

    def consume(event: StreamEvent) -> None:
        nonlocal seen
        seen += 1

    async with EventBus() as bus:
        bus.subscribe(consume, name="consumer")
        await graph.ainvoke(INPUT, {"callbacks": [KikiCallbackHandler(bus)]})
        await bus.drain()
    return seen


async def timed(fn: Callable[[Any], Awaitable[int]], graph: Any) -> tuple[float, int]:
    gc.collect()
    start = time.perf_counter()
    count = await fn(graph)
    return time.perf_counter() - start, count


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


async def main(rounds: int, tokens: int) -> dict[str, Any]:
    graph = load_demo("research_team").build_benchmark_graph(tokens)
    variants: dict[str, Callable[[Any], Awaitable[int]]] = {
        "kiki": via_kiki,
        "messages": via_messages,
        "astream_events": via_astream_events,
    }
    for fn in variants.values():  # warm-up
        await fn(graph)
    times: dict[str, list[float]] = {name: [] for name in variants}
    counts: dict[str, int] = {}
    p1: list[float] = []
    p1b: list[float] = []
    names = list(variants)
    for r in range(rounds):
        order = names[r % 3 :] + names[: r % 3]
        this_round: dict[str, float] = {}
        for name in order:
            elapsed, counts[name] = await timed(variants[name], graph)
            this_round[name] = elapsed
            times[name].append(elapsed)
        p1.append(this_round["kiki"] / this_round["messages"])
        p1b.append(this_round["kiki"] / this_round["astream_events"])
    wire = await wire_sizes(graph)
    return {
        "tokens_per_node": tokens,
        "rounds": rounds,
        "seconds_median": {name: round(median(v), 4) for name, v in times.items()},
        "items_seen": counts,
        "P1": {"ratio": round(median(p1), 3), "bar": 1.15, "anchor": "astream(stream_mode='messages')"},
        "P1b": {"ratio": round(median(p1b), 3), "bar": 0.70, "anchor": "astream_events(version='v2')"},
        "P5": {**wire, "bar": 0.15, "anchor": "LangGraph Server messages tuple frame"},
    }


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--out", help="JSON output file (default benchmarks/results/capture.json)")
    args = parser.parse_args()
    results = asyncio.run(main(args.rounds, args.tokens))
    path = write_results("capture", results, args.out)
    print(f"capture benchmark: 2 LLM nodes x {args.tokens} tokens, {args.rounds} rounds (medians)")
    for name, seconds in results["seconds_median"].items():
        print(f"  {name:<15} {seconds * 1000:8.1f} ms   ({results['items_seen'][name]} items)")
    p1, p1b, p5 = results["P1"], results["P1b"], results["P5"]
    print(f"  P1  kiki / messages        {p1['ratio']:.3f}x  (bar <= {p1['bar']})  {verdict(p1['ratio'], p1['bar'])}")
    print(
        f"  P1b kiki / astream_events  {p1b['ratio']:.3f}x  (bar <= {p1b['bar']})  {verdict(p1b['ratio'], p1b['bar'])}"
    )
    print(
        f"  P5  token frame {p5['ours_bytes']} B vs {p5['anchor_bytes']} B = {p5['ratio']:.3f}x"
        f"  (bar <= {p5['bar']})  {verdict(p5['ratio'], p5['bar'])}"
    )
    print(f"  written to {path}")


if __name__ == "__main__":
    cli()
