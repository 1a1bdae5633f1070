"""The in-process parts of ``benchmarks/formats.py``: what a run should carry, our encoders
timed alone, and the figures (summary, table)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from langchain_core.messages import AIMessage, ToolMessage

from benchmarks._common import load_demo, median, verdict
from benchmarks._formats_servers import graph_input
from benchmarks._streams import Expected
from kiki_events import KikiCallbackHandler, StreamEvent
from kiki_events.core.runlog import RunLog
from kiki_events.formats import Encoder, get_format
from kiki_events.formats.agui import FORMAT as AGUI

P7_BAR = 0.5
"""P7: our AG-UI endpoint at most half the peer's server CPU per token."""
OURS = ("kiki", "agui-1.0", "agui-0.0", "aisdk")
ANCHORS = ("peer", "peer-lean")
FLOORS = ("bare", "streamed")
"""The floors, each server's own: ``bare`` (in the peer's process ``peer-bare``) and ``streamed``."""
ENCODERS: dict[str, Callable[[], Encoder]] = {
    "kiki": lambda: get_format("kiki").encoder(),
    "agui-1.0": lambda: AGUI.encoder_for("1.0"),
    "agui-0.0": lambda: AGUI.encoder_for(None),
    "aisdk": lambda: get_format("aisdk").encoder(),
}


def expected_run(graph: Any) -> Expected:
    """What one run of ``graph`` produces, from its final state."""
    state = asyncio.run(graph.ainvoke(graph_input(), {"configurable": {"thread_id": "expected"}}))
    split_text = load_demo("scripted_model").split_text
    texts, calls, results, tokens = [], [], {}, 0
    for message in state["messages"]:
        if isinstance(message, AIMessage):
            if message.text:
                texts.append(message.text)
                tokens += len(split_text(message.text))
            calls += [(call["id"], call["name"], call["args"]) for call in message.tool_calls]
        elif isinstance(message, ToolMessage):
            results[message.tool_call_id] = message.text
    return Expected(texts, calls, results, tokens)


def encoder_costs(graph: Any, tokens: int, passes: int = 9) -> dict[str, Any]:
    """Each of our encoders alone on one run's stored frames (fresh frames each pass: nothing memoised).

    The fastest of ``passes`` in this process's CPU time, in µs per token, and the body's bytes per token.
    """
    events: list[StreamEvent] = []
    config = {"callbacks": [KikiCallbackHandler(events.append)], "configurable": {"thread_id": "frames"}}
    asyncio.run(graph.ainvoke(graph_input(), config))
    costs: dict[str, Any] = {}
    for name, make in ENCODERS.items():
        best, size = float("inf"), 0
        for _ in range(passes):
            log = RunLog(events[0].run_id, len(events))
            for event in events:
                log.append(event)
            frames, _ = log.read(0, len(events))
            started = time.process_time()
            encoder = make()
            size = len(encoder.start() + encoder.encode_all(frames) + encoder.finish())
            best = min(best, time.process_time() - started)
        costs[name] = {"us_per_token": round(best / tokens * 1e6, 3), "body_bytes_per_token": round(size / tokens, 1)}
    return {"events_per_run": len(events), **costs}


def _spread(values: list[float], digits: int = 3) -> dict[str, Any]:
    return {
        "median": round(median(values), digits),
        "range": [round(min(values), digits), round(max(values), digits)],
        "per_round": [round(v, digits + 1) for v in values],
    }


def _variant(batches: list[dict[str, Any]], tokens: int, runs: int) -> dict[str, Any]:
    per_token = [b["cpu_s"] / (runs * tokens) * 1e6 for b in batches]
    return {
        "cpu_us_per_token": _spread(per_token, 2),
        "cpu_ms_per_run": round(median([b["cpu_s"] / runs * 1000 for b in batches]), 2),
        "wire_bytes_per_token": round(median([b["wire"] / (runs * tokens) for b in batches]), 1),
        "body_bytes_per_token": round(median([b["body"] / (runs * tokens) for b in batches]), 1),
        "events_per_run": batches[0]["events"],
        "wall_ms_per_run": round(median([b["seconds"] / runs * 1000 for b in batches]), 1),
    }


def _ratios(measured: dict[str, list[dict[str, Any]]], ours: str, anchor: str, floor: str | None = None) -> list[float]:
    """Per round: ``ours``'s CPU / ``anchor``'s, each less its server's ``floor`` when one is named."""

    def cpu(name: str, r: int) -> float:
        value = measured[name][r]["cpu_s"]
        if floor is not None:
            value -= measured[f"peer-{floor}" if name.startswith("peer") else floor][r]["cpu_s"]
        return float(value)

    return [cpu(ours, r) / cpu(anchor, r) for r in range(len(measured[ours]))]


def summarise_graph(measured: dict[str, list[dict[str, Any]]], expected: Expected, runs: int) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "tokens_per_run": expected.tokens,
        "messages_per_run": len(expected.texts),
        "tool_calls_per_run": len(expected.calls),
        "variants": {name: _variant(batches, expected.tokens, runs) for name, batches in measured.items()},
    }
    if "peer" not in measured:
        return figures
    pairs = [(ours, anchor) for ours in OURS for anchor in ANCHORS]
    figures["vs_peer"] = {f"{ours}/{anchor}": _spread(_ratios(measured, ours, anchor)) for ours, anchor in pairs}
    for floor in FLOORS:
        figures[f"vs_peer_above_{floor}"] = {
            f"{ours}/{anchor}": _spread(_ratios(measured, ours, anchor, floor)) for ours, anchor in pairs
        }
    variants = figures["variants"]
    figures["P7"] = {
        "ratio": figures["vs_peer"]["agui-1.0/peer"]["median"],
        "range": figures["vs_peer"]["agui-1.0/peer"]["range"],
        "ratio_vs_lean": figures["vs_peer"]["agui-1.0/peer-lean"]["median"],
        "range_vs_lean": figures["vs_peer"]["agui-1.0/peer-lean"]["range"],
        "above_bare": figures["vs_peer_above_bare"]["agui-1.0/peer"]["median"],
        "above_bare_vs_lean": figures["vs_peer_above_bare"]["agui-1.0/peer-lean"]["median"],
        "above_streamed": figures["vs_peer_above_streamed"]["agui-1.0/peer"]["median"],
        "above_streamed_vs_lean": figures["vs_peer_above_streamed"]["agui-1.0/peer-lean"]["median"],
        "bytes_ratio": round(
            variants["agui-1.0"]["wire_bytes_per_token"] / variants["peer"]["wire_bytes_per_token"], 4
        ),
        "bytes_ratio_vs_lean": round(
            variants["agui-1.0"]["wire_bytes_per_token"] / variants["peer-lean"]["wire_bytes_per_token"], 4
        ),
        "bar": P7_BAR,
        "anchor": "ag-ui-langgraph's add_langgraph_fastapi_endpoint (emit_raw_events=True, its default)",
    }
    return figures


def summarise(
    measured: dict[str, dict[str, list[dict[str, Any]]]],
    expected: dict[str, Expected],
    encoders: dict[str, Any],
    args: Any,
) -> dict[str, Any]:
    graphs = {}
    for name, rounds in measured.items():
        graphs[name] = summarise_graph(rounds, expected[name], args.runs)
        graphs[name]["encoders_alone"] = encoders[name]
    return {"rounds": args.rounds, "runs_per_round": args.runs, "tokens": args.tokens, "graphs": graphs}


_DESCRIBE = {
    "long": "2 LLM nodes, no tools",
    "tools": "research team: 5 LLM calls, 2 tool calls",
}
_SERVER = {"peer": "peer", "peer-lean": "peer", "peer-bare": "peer", "peer-streamed": "peer"}


def print_results(results: dict[str, Any]) -> None:
    print(
        f"formats benchmark: {results['rounds']} rounds x {results['runs_per_round']} requests per variant "
        "(medians [range over rounds]); CPU is the server process's, per streamed text token"
    )
    for name, figures in results["graphs"].items():
        print(f"  [{name}] {_DESCRIBE.get(name, name)}: {figures['tokens_per_run']} tokens per run")
        print(f"    {'variant':<13} {'server':<6} {'CPU us/token':>22} {'wire B/token':>13} {'body B/token':>13}"
              f" {'events/run':>11} {'CPU ms/run':>11} {'encode us/token':>16}")  # fmt: skip
        for variant, row in figures["variants"].items():
            cpu = row["cpu_us_per_token"]
            alone = figures["encoders_alone"].get(variant)
            encode = f"{alone['us_per_token']:>16.2f}" if alone else ""
            print(
                f"    {variant:<13} {_SERVER.get(variant, 'ours'):<6} {cpu['median']:>9.2f} "
                f"[{cpu['range'][0]:.2f}-{cpu['range'][1]:.2f}]".ljust(43)
                + f"{row['wire_bytes_per_token']:>13.1f} {row['body_bytes_per_token']:>13.1f}"
                f" {row['events_per_run']:>11} {row['cpu_ms_per_run']:>11.1f}{encode}"
            )
        _print_p7(figures.get("P7"))
    peer = results["peer"]
    if "skipped" in peer:
        print(f"  P7 not measured: the peer was not installed ({peer['skipped'].splitlines()[0]})")
    else:
        print(
            f"  peer: {peer['package']} in {peer['env']}; library versions that differ: {peer['versions_that_differ']}"
        )


def _print_p7(p7: dict[str, Any] | None) -> None:
    if p7 is None:
        return
    bar = p7["bar"]
    low, high = p7["range"]
    print(f"    P7 agui-1.0 / peer       CPU {p7['ratio']:.3f}x [{low:.3f}-{high:.3f}]  (bar <= {bar})"
          f"  {verdict(p7['ratio'], bar)};  bytes {p7['bytes_ratio']:.3f}x")  # fmt: skip
    low, high = p7["range_vs_lean"]
    print(f"       agui-1.0 / peer-lean  CPU {p7['ratio_vs_lean']:.3f}x [{low:.3f}-{high:.3f}]"
          f"  {verdict(p7['ratio_vs_lean'], bar)};  bytes {p7['bytes_ratio_vs_lean']:.3f}x")  # fmt: skip
    for floor in FLOORS:
        print(f"       above each server's {floor:<8}  {p7[f'above_{floor}']:.3f}x vs peer, "
              f"{p7[f'above_{floor}_vs_lean']:.3f}x vs peer-lean")  # fmt: skip
