"""Round-trip latency of ``Handoff.delegate`` between two nodes through a private Redis.

Node A delegates to agent ``echo`` served by node B (both are
:class:`~kiki_events.runtime.KikiRuntime` objects in this one process; the graph
returns at once), so the figure is the handoff's own cost: task queue, pickup, run
start, replies. Sequential round trips first (one delegate waiting at a time), then
the same while ``--background`` other delegates wait on agent ``hold`` (so every new
request joins replies already being read), then ``--concurrent`` delegates at once.
Side by side, the anchor: the floor of any request/reply through Redis streams, one
``XADD`` answered by a blocking ``XREAD`` on the other side and the reply read the
same way (two clients in the same process, no work in between). The Redis is a
private ``redis-server`` on a free port, never a shared one. Printed and written as
JSON (``benchmarks/results/handoff.json``).

    python3 scripts/dev.py run python benchmarks/handoff.py [--rounds 300] [--background 20]
                                                            [--concurrent 50] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from langgraph.graph import END, START, StateGraph

from benchmarks._common import PrivateRedis, write_results
from kiki_events.config import Settings
from kiki_events.redis.client import blocking_command
from kiki_events.runtime import KikiRuntime

PREFIX = "kiki-handoff-latency:"


class _State(TypedDict, total=False):
    n: int


def _echo_graph() -> Any:
    async def echo(state: _State) -> dict[str, Any]:
        return {"n": state.get("n", 0)}

    builder = StateGraph(_State)
    builder.add_node("echo", echo)
    builder.add_edge(START, "echo")
    builder.add_edge("echo", END)
    return builder.compile(name="echo")


class _Hold:
    """Runs of ``hold`` wait for :attr:`release`; :attr:`all_in` is set once ``expected`` are waiting."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.waiting = 0
        self.all_in = asyncio.Event()
        self.release = asyncio.Event()


def _hold_graph(holder: _Hold) -> Any:
    async def hold(state: _State) -> dict[str, Any]:
        holder.waiting += 1
        if holder.waiting >= holder.expected:
            holder.all_in.set()
        await holder.release.wait()
        return {"n": state.get("n", 0)}

    builder = StateGraph(_State)
    builder.add_node("hold", hold)
    builder.add_edge(START, "hold")
    builder.add_edge("hold", END)
    return builder.compile(name="hold")


def _settings(node: str, url: str, serve: tuple[str, ...]) -> Settings:
    return Settings.model_validate(
        {
            "node": node,
            "eventbus": {"provider": "redis", "redis": {"url": url, "channel_prefix": PREFIX}},
            "handoff": {"serve": list(serve), "concurrency": 64, "timeout": 30},
            "logging": {"level": "WARNING"},
        }
    )


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _summary(label: str, times: list[float]) -> dict[str, float]:
    figures = {
        "p50_ms": round(_ms(times, 0.5), 3),
        "p90_ms": round(_ms(times, 0.9), 3),
        "p99_ms": round(_ms(times, 0.99), 3),
        "mean_ms": round(statistics.mean(times) * 1000, 3),
    }
    print(
        f"  {label}: {len(times)} round trips, p50 {figures['p50_ms']:.2f} ms, p90 {figures['p90_ms']:.2f} ms, "
        f"p99 {figures['p99_ms']:.2f} ms, mean {figures['mean_ms']:.2f} ms",
        flush=True,
    )
    return figures


async def _round_trips(handoff: Any, rounds: int, label: str) -> dict[str, float]:
    times: list[float] = []
    for n in range(rounds):
        started = time.perf_counter()
        await handoff.delegate("echo", {"n": n})
        times.append(time.perf_counter() - started)
    return _summary(label, times)


async def _anchor(url: str, rounds: int) -> dict[str, float]:
    """One request and its reply through two streams, nothing else: the floor of a Redis handoff."""
    from redis.asyncio import Redis

    requester, server = Redis.from_url(url), Redis.from_url(url)
    requests, replies = f"{PREFIX}anchor:requests", f"{PREFIX}anchor:replies"

    await requester.delete(requests, replies)

    async def serve() -> None:
        last = "0-0"
        while True:
            # Stopped by a cancellation, which a plain xread can lose (see blocking_command).
            reply: Any = await blocking_command(server, "XREAD", "COUNT", 1, "BLOCK", 2000, "STREAMS", requests, last)
            for _key, entries in reply or ():
                for entry_id, fields in entries:
                    last = entry_id
                    await server.xadd(replies, fields)

    serving = asyncio.ensure_future(serve())
    times: list[float] = []
    try:
        last_reply = "0-0"
        for n in range(rounds + 20):
            started = time.perf_counter()
            await requester.xadd(requests, {"n": n})
            reply: Any = await requester.xread({replies: last_reply}, count=1, block=10_000)
            if not reply:
                raise RuntimeError("the anchor's reply did not come within 10 s")
            last_reply = reply[0][1][0][0]
            if n >= 20:  # the first ones warm up both connections
                times.append(time.perf_counter() - started)
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await requester.delete(requests, replies)
        await requester.aclose()
        await server.aclose()
    return _summary("anchor (XADD + blocking XREAD, both ways)", times)


async def _measure(url: str, rounds: int, background: int, concurrent: int) -> dict[str, Any]:
    holder = _Hold(background)
    a = KikiRuntime(_settings("lat-a", url, ()))
    graphs = {"echo": _echo_graph(), "hold": _hold_graph(holder)}
    b = KikiRuntime(_settings("lat-b", url, ("echo", "hold")), graphs=graphs)
    async with a, b:
        handoff = a.handoff
        if handoff is None:
            sys.exit("node A has no Handoff")
        for n in range(20):  # warm-up: connections, graph compilation caches
            await handoff.delegate("echo", {"n": n})
        anchor = await _anchor(url, rounds)
        sequential = await _round_trips(handoff, rounds, "delegate, one at a time")
        held = [asyncio.ensure_future(handoff.delegate("hold", {"n": n})) for n in range(background)]
        if background:
            await asyncio.wait_for(holder.all_in.wait(), 30)
        crowded = await _round_trips(handoff, rounds, f"delegate, {background} others waiting")
        holder.release.set()
        await asyncio.gather(*held)
        batches: list[float] = []
        for _ in range(5):
            started = time.perf_counter()
            await asyncio.gather(*(handoff.delegate("echo", {"n": n}) for n in range(concurrent)))
            batches.append(time.perf_counter() - started)
        batch_ms = round(statistics.median(batches) * 1000, 3)
        print(f"  {concurrent} delegates at once: median batch {batch_ms:.1f} ms", flush=True)
    return {
        "rounds": rounds,
        "anchor": anchor,
        "sequential": sequential,
        "with_others_waiting": {"waiting": background, **crowded},
        "concurrent": {"delegates": concurrent, "median_batch_ms": batch_ms},
        "ratio_p50": round(sequential["p50_ms"] / anchor["p50_ms"], 2),
        "measured": "Handoff.delegate from node A to agent echo served by node B (two runtimes, one process); "
        "anchor: one XADD answered through blocking XREADs, both ways",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--background", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--out", help="JSON output file (default benchmarks/results/handoff.json)")
    args = parser.parse_args()
    print(f"handoff benchmark: {args.rounds} round trips node A -> Redis -> node B and back")
    redis = PrivateRedis()
    try:
        results = asyncio.run(_measure(redis.url, args.rounds, args.background, args.concurrent))
    finally:
        redis.stop()
    print(f"  delegate p50 / anchor p50: {results['ratio_p50']:.2f}x")
    print(f"  written to {write_results('handoff', results, args.out)}")


if __name__ == "__main__":
    main()
