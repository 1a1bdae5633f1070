"""What each sink and JSON logging cost per token, measured on P1 (README.md, "Performance").

In the same run, in rotating order, on each graph of ``benchmarks/capture.py``
(``--graph``: ``long``, two LLM nodes, ``--tokens`` each; ``short``, a supervisor loop
of 7 LLM calls of 10 tokens; ``both``, the default; ``--runs`` runs of each variant
per round):

* ``messages``     – the P1 anchor, ``graph.astream(stream_mode="messages")``;
* ``kiki``         – P1's kiki variant with no sink on the bus;
* ``kiki+NAME``    – the same with one sink attached to the bus: each sink that a
  factory of :data:`kiki_events.sinks.SINKS` builds from the settings (defaults, or
  ``--settings FILE``), and each ``--sink module:attribute`` (any callable taking an
  event, e.g. ``kiki_events.codec:encode``);
* ``kiki+json-logs`` – no sink, and a handler with the server's JSON formatter on the
  ``kiki_events`` logger at INFO (nothing is logged per token: its records per run
  are counted and reported);
* ``kiki+all``     – every sink built from the settings on the bus together, and the
  JSON logging above: the configuration P1's bar applies to when metrics are on,
  Langfuse is off and the server logs JSON.

Each is reported as extra microseconds per token against ``kiki`` (median over rounds
of the per-round difference, divided by the tokens of a round) and as its P1 ratio;
each sink also by the microseconds per event of calling it alone on one run's events
(fastest of several passes), a figure a busy machine disturbs far less.

    python3 scripts/dev.py run python benchmarks/sinks.py [--graph both] [--rounds 7] [--tokens 500]
        [--runs 4] [--settings FILE] [--sink module:attribute ...] [--no-freeze] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry

from benchmarks._common import median, write_results
from benchmarks.capture import (
    INPUT,
    Once,
    Shape,
    Variant,
    kiki_session,
    long_shape,
    measure,
    ratios,
    short_shape,
    via_messages,
)
from kiki_events import KikiCallbackHandler, StreamEvent
from kiki_events.cli.logs import JsonFormatter
from kiki_events.config import Settings, load_settings
from kiki_events.runtime.build import create_metrics
from kiki_events.sinks import SINKS
from kiki_events.sinks.base import SinkContext

EventCallable = Callable[[StreamEvent], object]

SHORT_WORKERS, SHORT_TOKENS, SHORT_RUNS = 3, 10, 5
"""The short graph as ``benchmarks/capture.py`` measures it; ``--runs`` times ``SHORT_RUNS`` runs per round."""


def kiki_with(sink: EventCallable | None) -> Variant:
    """P1's kiki variant, with ``sink`` (if any) on the bus."""
    return partial(kiki_session, sink)


class _Counting(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.records = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.records += 1
        return True


@contextmanager
def json_logging(counter: _Counting) -> Iterator[None]:
    """A JSON-formatting handler on ``kiki_events`` at INFO (to /dev/null), counting its records."""
    logger = logging.getLogger("kiki_events")
    with open(os.devnull, "w", encoding="utf-8") as devnull:
        handler = logging.StreamHandler(devnull)
        handler.setFormatter(JsonFormatter())
        handler.addFilter(counter)
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)


def with_json_logging(counter: _Counting, *sinks: EventCallable) -> Variant:
    """P1's kiki variant with JSON logging on (and ``sinks`` on the bus)."""

    @asynccontextmanager
    async def session() -> AsyncIterator[Once]:
        with json_logging(counter):
            async with kiki_session(*sinks) as once:
                yield once

    return session


def load_callable(reference: str) -> tuple[str, EventCallable]:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"--sink must look like module:attribute; got {reference!r}")
    target = getattr(importlib.import_module(module_name), attribute)
    if not callable(target):
        raise SystemExit(f"--sink {reference} is not callable")
    return attribute, target


async def direct_cost(graph: Any, sinks: dict[str, EventCallable], repeats: int = 15) -> dict[str, float]:
    """Microseconds per event of calling each sink alone on one run's events (fastest of ``repeats``).

    Steadier than the difference of two timed runs on a busy machine; the events are
    mostly tokens, so it is close to the cost per token.
    """
    events: list[StreamEvent] = []
    await graph.ainvoke(INPUT, {"callbacks": [KikiCallbackHandler(events.append)]})
    costs = {}
    for name, sink in sinks.items():
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for event in events:
                sink(event)
            best = min(best, time.perf_counter() - start)
        costs[name] = round(best / len(events) * 1e6, 3)
    return costs


def build_sinks(settings: Settings) -> tuple[list[Any], list[str]]:
    """The sinks ``SINKS`` builds from ``settings``, and the factories that built none.

    They get what the runtime gives them: a registry of their own and the ``kiki_``
    metrics on it when ``metrics.enabled``, and no node name (the benchmark's handler
    stamps none on its events).
    """
    registry = CollectorRegistry() if settings.metrics.enabled else None
    metrics = create_metrics(registry) if registry is not None else None
    context = SinkContext(settings, node=None, registry=registry, metrics=metrics)
    built, off = [], []
    for factory in SINKS:
        sink = factory(context)
        if sink is None:
            off.append(f"{factory.__module__}.{factory.__qualname__}")
        else:
            built.append(sink)
    return built, off


def chosen_shapes(args: argparse.Namespace) -> list[Shape]:
    chosen = []
    if args.graph in ("long", "both"):
        chosen.append(long_shape(args.tokens, args.runs))
    if args.graph in ("short", "both"):
        chosen.append(short_shape(SHORT_WORKERS, SHORT_TOKENS, SHORT_RUNS * args.runs))
    return chosen


async def main(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings(args.settings) if args.settings else Settings()
    sinks, off = build_sinks(settings)
    for sink in sinks:
        await sink.start()
    callables: dict[str, EventCallable] = {f"kiki+{sink.name}": sink for sink in sinks}
    for reference in args.sink:
        name, target = load_callable(reference)
        callables[f"kiki+{name}"] = target
    graphs: dict[str, Any] = {}
    try:
        for shape in chosen_shapes(args):
            counter = _Counting()
            variants: dict[str, Variant] = {"kiki": kiki_with(None), "messages": via_messages}
            for name, target in callables.items():
                variants[name] = kiki_with(target)
            variants["kiki+json-logs"] = with_json_logging(counter)
            variants["kiki+all"] = with_json_logging(counter, *sinks)
            measured = await measure(shape, args.rounds, variants, settle=not args.no_freeze)
            direct = await direct_cost(shape.graph, callables)
            figures = report(shape, measured, counter, args)
            for name, cost in direct.items():
                figures["variants"][name]["alone_us_per_event"] = cost
            graphs[shape.name] = figures
    finally:
        for sink in sinks:
            await sink.close()
    return {"graphs": graphs, "sinks": [sink.name for sink in sinks], "sinks_off_in_settings": off}


def report(shape: Shape, measured: dict[str, Any], counter: _Counting, args: Any) -> dict[str, Any]:
    times = measured["times"]
    tokens = shape.llm_calls * shape.tokens_per_call * shape.runs
    rows: dict[str, Any] = {}
    for name in times:
        if name == "messages":
            continue
        extra = [(ours - base) / tokens * 1e6 for ours, base in zip(times[name], times["kiki"], strict=True)]
        p1 = ratios(times, name, "messages")
        rows[name] = {
            "extra_us_per_token": round(median(extra), 3),
            "extra_us_per_token_range": [round(min(extra), 3), round(max(extra), 3)],
            "P1": round(median(p1), 3),
            "P1_range": [round(min(p1), 3), round(max(p1), 3)],
            "ms_per_run_median": round(median(times[name]) / shape.runs * 1000, 3),
        }
    logged_runs = 2 * (args.rounds * shape.runs + 1)  # two variants log, each with one warm-up run
    return {
        "shape": shape.describe,
        "tokens_per_round": tokens,
        "heap_frozen": not args.no_freeze,
        "rounds": args.rounds,
        "messages_ms_per_run_median": round(median(times["messages"]) / shape.runs * 1000, 3),
        "variants": rows,
        "json_logs_records": counter.records,
        "json_logs_records_per_run": round(counter.records / logged_runs, 3),
        "items_per_round": measured["counts"],
    }


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graph", choices=("long", "short", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=500, help="tokens per LLM call (two calls per run)")
    parser.add_argument("--runs", type=int, default=4, help="runs of each variant per round")
    parser.add_argument("--settings", help="settings file whose sinks to measure (default: the defaults)")
    parser.add_argument("--sink", action="append", default=[], help="module:attribute of a callable sink to add")
    parser.add_argument("--no-freeze", action="store_true", help="leave the collector as Python starts it")
    parser.add_argument("--out", help="JSON output file (default benchmarks/results/sinks.json)")
    args = parser.parse_args()
    results = asyncio.run(main(args))
    path = write_results("sinks", results, args.out)
    print(f"sinks measured: {', '.join(results['sinks']) or 'none'}")
    for figures in results["graphs"].values():
        print_graph(figures, args.rounds)
    for factory in results["sinks_off_in_settings"]:
        print(f"  {factory}: off in these settings (not measured)")
    print(f"  written to {path}")


def print_graph(results: dict[str, Any], rounds: int) -> None:
    print(f"sink cost per token: {results['shape']}, {rounds} rounds (medians)")
    print(f"  messages (anchor)      {results['messages_ms_per_run_median']:9.3f} ms/run")
    for name, row in results["variants"].items():
        low, high = row["extra_us_per_token_range"]
        print(
            f"  {name:<22} {row['ms_per_run_median']:9.3f} ms/run  {row['extra_us_per_token']:+7.3f} us/token"
            f" (rounds {low:+.3f} to {high:+.3f})  P1 {row['P1']:.3f}x"
            + (f"  alone: {row['alone_us_per_event']:.3f} us/event" if "alone_us_per_event" in row else "")
        )
    print(f"  json logging: {results['json_logs_records']} records in all ({results['json_logs_records_per_run']}/run)")


if __name__ == "__main__":
    cli()
