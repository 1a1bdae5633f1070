#!/usr/bin/env python3
"""Round-trip latency of ``Handoff.delegate`` between two nodes through a private Redis.

Node A delegates to agent ``echo`` served by node B (both are
:class:`~kiki_events.runtime.KikiRuntime` objects in this one process; the graph
returns at once), so the figure is the handoff's own cost: task queue, pickup, run
start, replies. Sequential round trips first (one delegate waiting at a time), then
the same while ``--background`` other delegates wait on agent ``hold`` (so every new
request joins replies already being read), then ``--concurrent`` delegates at once.
The Redis is a private ``redis-server`` on a free port, never a shared one.

    python scripts/handoff_latency.py [--rounds 300] [--background 20] [--concurrent 50]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from langgraph.graph import END, START, StateGraph

from kiki_events.config import Settings
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_redis() -> tuple[subprocess.Popen[bytes], str, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not on PATH")
    port = _free_port()
    folder = tempfile.mkdtemp(prefix="kiki-latency-")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder, "--appendonly", "no"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0", folder
        except OSError:
            pass
        time.sleep(0.02)  # waiting for the port to open
    process.kill()
    sys.exit("redis-server did not start")


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


async def _round_trips(handoff: Any, rounds: int, label: str) -> None:
    times: list[float] = []
    for n in range(rounds):
        started = time.perf_counter()
        await handoff.delegate("echo", {"n": n})
        times.append(time.perf_counter() - started)
    print(
        f"{label}: {rounds} round trips, p50 {_ms(times, 0.5):.2f} ms, "
        f"p90 {_ms(times, 0.9):.2f} ms, p99 {_ms(times, 0.99):.2f} ms, mean {statistics.mean(times) * 1000:.2f} ms"
    )


async def _measure(url: str, rounds: int, background: int, concurrent: int) -> None:
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
        await _round_trips(handoff, rounds, "sequential")
        held = [asyncio.ensure_future(handoff.delegate("hold", {"n": n})) for n in range(background)]
        if background:
            await asyncio.wait_for(holder.all_in.wait(), 30)
        await _round_trips(handoff, rounds, f"sequential, {background} others waiting")
        holder.release.set()
        await asyncio.gather(*held)
        batches: list[float] = []
        for _ in range(5):
            started = time.perf_counter()
            await asyncio.gather(*(handoff.delegate("echo", {"n": n}) for n in range(concurrent)))
            batches.append(time.perf_counter() - started)
        print(f"concurrent: {concurrent} delegates at once, median batch {statistics.median(batches) * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--background", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=50)
    args = parser.parse_args()
    process, url, folder = _start_redis()
    try:
        asyncio.run(_measure(url, args.rounds, args.background, args.concurrent))
    finally:
        process.kill()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
