"""P2 and P3 (README.md, "Performance"): events from one node process to another through Redis.

* P2 – throughput: node A publishes ``--events`` token events of one run, node B
  receives them; events/s = events / (B has the last one − A started). Side by
  side, in the same rounds, the anchor: the seed's approach, one
  ``await redis.publish(channel, json.dumps(event))`` per event, counted by a
  separate subscriber process that decodes each message.
  Bars: ≥ 5× the anchor and ≥ 50,000 events/s.
* P3 – latency: node A publishes at a steady ``--rate`` events/s for
  ``--seconds``; B measures publish → delivery for each event (both processes
  read the same wall clock; the first 0.5 s is warm-up and not counted). Bar: p99 ≤ 15 ms.

Our side is a real node on each end: a :class:`~kiki_events.runtime.KikiRuntime`
with the Redis bridge (A publishes into its bus like the callback handler does;
B follows the run with ``runtime.follow`` like an SSE reader on B does). The bars
are checked on that whole path; B's transport alone (frames decoded and validated,
no bus) is reported beside it. Every process settles its heap once started
(:func:`~kiki_events.heap.freeze_startup_heap`, as ``kiki-events serve`` does), the
anchor's too. Every process is separate and the Redis is a private
``redis-server`` on a free port, never a shared one. Figures are medians over rounds.

    python3 scripts/dev.py run python benchmarks/bridge.py [--rounds 3] [--events 100000] [--rate 2000] [--seconds 5]
                                [--mode pubsub|streams] [--no-freeze] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import PrivateRedis, median, verdict, write_results
from kiki_events.heap import freeze_startup_heap as _freeze

PREFIX = "kiki-bench:"
P2_RATIO_BAR = 5.0
P2_RATE_BAR = 50_000.0
P3_P99_BAR_MS = 15.0
NO_FREEZE = "KIKI_BENCH_NO_FREEZE"
"""Set (``--no-freeze``): processes skip :func:`freeze_startup_heap`, to show what it is worth."""
WARMUP_S = 0.5
"""P3 leaves out the delays of the first half second of sending."""


def _settle() -> None:
    if not os.environ.get(NO_FREEZE):
        _freeze()


# -- the events --------------------------------------------------------------------------------
def token_fields(run_id: str, seq: int, ts: float) -> dict[str, Any]:
    """One token event's content, the same for both sides."""
    return {
        "run_id": run_id,
        "seq": seq,
        "ts": ts,
        "thread_id": "bench-thread",
        "agent": "writer",
        "node": "node-a",
        "type": "token",
        "message_id": "m1",
        "text": f" word{seq % 1000}",
    }


# -- our side: one runtime per node ---------------------------------------------------------------
def _runtime(url: str, node: str, mode: str) -> Any:
    from kiki_events.config import Settings
    from kiki_events.runtime import KikiRuntime

    settings = Settings.model_validate(
        {
            "node": node,
            "eventbus": {
                "provider": "redis",
                "queue_size": 200_000,
                "redis": {"url": url, "channel_prefix": PREFIX, "mode": mode},
            },
            "runs": {"replay_events": 200_000},
            "logging": {"level": "WARNING"},
        }
    )
    return KikiRuntime(settings)


async def kiki_send(url: str, mode: str, run_id: str, n: int, rate: float, ready: Any, go: Any, out: Any) -> None:
    """Node A: events into the local bus (the callback handler's path), bridged to Redis."""
    from kiki_events.events import StatusEvent, TokenEvent, trusted_token

    async with _runtime(url, "node-a", mode) as runtime:
        bus = runtime.bus
        bus.publish(StatusEvent(run_id=run_id, seq=1, ts=time.time(), node="node-a", status="started", graph="b"))
        await runtime.bridge.transport.flush()
        _settle()
        ready.set()
        go.wait()
        start = time.monotonic()
        if rate <= 0:
            for seq in range(2, n + 2):
                bus.publish(
                    trusted_token(run_id, seq, time.time(), "bench-thread", "writer", None, "node-a", "m1", f" w{seq}")
                )
                if seq % 2000 == 0:
                    await asyncio.sleep(0)  # let the bridge's flusher run, as a graph's awaits do
        else:
            await _paced(n, rate, lambda seq: bus.publish(
                TokenEvent(run_id=run_id, seq=seq, ts=time.time(), node="node-a", message_id="m1", text=f" w{seq}")
            ))  # fmt: skip
        from kiki_events.events import DoneEvent

        bus.publish(DoneEvent(run_id=run_id, seq=n + 2, ts=time.time(), node="node-a", status="success"))
        await runtime.bridge.transport.flush(30)
        out.put(("sent", start))
        await asyncio.sleep(0.5)  # B may still ask for a replay


async def kiki_receive(url: str, mode: str, run_id: str, n: int, ready: Any, out: Any) -> None:
    """Node B: follow the run as an SSE reader on B would; count tokens, note each one's delay."""
    async with _runtime(url, "node-b", mode) as runtime:
        stream = runtime.follow(run_id)
        _settle()
        ready.set()
        count = 0
        delays: list[float] = []
        async for event in stream:
            if event.type == "token":
                count += 1
                delays.append(time.time() - event.ts)
            elif event.type == "done":
                break
        out.put(("received", time.monotonic(), count, delays))


async def kiki_receive_transport(url: str, mode: str, run_id: str, n: int, ready: Any, out: Any) -> None:
    """Node B at the transport: frames decoded and validated, events counted (no bus, no replay log)."""
    from kiki_events.config import Settings
    from kiki_events.runtime.build import create_transport

    settings = Settings.model_validate(
        {"eventbus": {"provider": "redis", "redis": {"url": url, "channel_prefix": PREFIX, "mode": mode}}}
    )
    done = asyncio.Event()
    count = 0
    delays: list[float] = []

    class Counter:
        def on_frame(self, message: Any) -> None:
            nonlocal count
            now = time.time()
            for event in message.events:
                if event.type == "token":
                    count += 1
                    delays.append(now - event.ts)
                elif event.type == "done":
                    done.set()

        def on_control(self, message: Any) -> None: ...

        def on_connected(self, resumed: bool) -> None: ...

    transport = create_transport(settings, node="node-b")
    assert transport is not None
    await transport.start(Counter())
    await transport.watch("run", run_id)
    _settle()
    ready.set()
    await done.wait()
    out.put(("received", time.monotonic(), count, delays))
    await transport.close()


# -- the anchor: the seed's one publish per event -------------------------------------------------
async def anchor_send(url: str, mode: str, run_id: str, n: int, rate: float, ready: Any, go: Any, out: Any) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(url)
    channel = f"{PREFIX}anchor"
    await redis.ping()
    _settle()
    ready.set()
    go.wait()
    start = time.monotonic()
    if rate <= 0:
        for seq in range(2, n + 2):
            await redis.publish(channel, json.dumps(token_fields(run_id, seq, time.time())))
    else:

        async def one(seq: int) -> None:
            await redis.publish(channel, json.dumps(token_fields(run_id, seq, time.time())))

        await _paced(n, rate, one)
    await redis.publish(channel, json.dumps({"type": "done", "seq": n + 2}))
    out.put(("sent", start))
    await redis.aclose()


async def anchor_receive(url: str, mode: str, run_id: str, n: int, ready: Any, out: Any) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(url)
    pubsub = redis.pubsub()
    await pubsub.subscribe(f"{PREFIX}anchor")
    _settle()
    ready.set()
    count = 0
    delays: list[float] = []
    while True:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        if message is None:
            continue
        event = json.loads(message["data"])
        if event["type"] == "done":
            break
        count += 1
        delays.append(time.time() - event["ts"])
    out.put(("received", time.monotonic(), count, delays))
    await pubsub.aclose()
    await redis.aclose()


async def _paced(n: int, rate: float, send: Callable[[int], Any]) -> None:
    """Send ``n`` events at a steady ``rate``: each millisecond, what is due by then."""
    start = time.monotonic()
    seq, last = 2, n + 1
    while seq <= last:
        due = min(last, 1 + int((time.monotonic() - start) * rate))
        while seq <= due:
            result = send(seq)
            if asyncio.iscoroutine(result):
                await result
            seq += 1
        await asyncio.sleep(0.001)


# -- orchestration --------------------------------------------------------------------------------
Side = Callable[..., Coroutine[Any, Any, None]]


def _child(fn: Side, *args: Any) -> None:
    asyncio.run(fn(*args))


def measure(sender: Side, receiver: Side, url: str, mode: str, n: int, rate: float) -> dict[str, Any]:
    """One round: a receiving process and a sending process; returns rate and delays."""
    ctx = mp.get_context("spawn")
    run_id = f"BENCH{secrets.token_hex(8)}"  # a new run each round (streams outlive their run)
    out = ctx.Queue()
    b_ready, a_ready, go = ctx.Event(), ctx.Event(), ctx.Event()
    b = ctx.Process(target=_child, args=(receiver, url, mode, run_id, n, b_ready, out), daemon=True)
    a = ctx.Process(target=_child, args=(sender, url, mode, run_id, n, rate, a_ready, go, out), daemon=True)
    a.start()
    if not a_ready.wait(60):
        raise RuntimeError("node A did not start")
    b.start()
    if not b_ready.wait(60):
        raise RuntimeError("node B did not start")
    time.sleep(0.3)  # B's subscription is in place
    go.set()
    results: dict[str, Any] = {}
    deadline = time.monotonic() + 600
    while len(results) < 2:
        kind, *values = out.get(timeout=max(1.0, deadline - time.monotonic()))
        results[kind] = values
    for process in (a, b):
        process.join(30)
        if process.is_alive():
            process.kill()
    start = results["sent"][0]
    end, count, delays = results["received"]
    if rate > 0:  # the first half second warms up both processes (imports, first frames)
        delays = delays[int(rate * WARMUP_S) :]
    delays_ms = sorted(d * 1000 for d in delays)
    return {
        "received": count,
        "events_per_s": count / (end - start),
        "p50_ms": _pct(delays_ms, 50),
        "p99_ms": _pct(delays_ms, 99),
    }


def _pct(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, round(pct / 100 * len(values)) - 1))
    return values[index]


def main(rounds: int, events: int, rate: float, seconds: float, mode: str) -> dict[str, Any]:
    redis = PrivateRedis()
    receivers: dict[str, tuple[Side, Side]] = {
        "transport": (kiki_send, kiki_receive_transport),
        "kiki": (kiki_send, kiki_receive),
        "anchor": (anchor_send, anchor_receive),
    }
    try:
        p2: dict[str, list[float]] = {name: [] for name in receivers}
        ratios: list[float] = []
        lost: dict[str, int] = dict.fromkeys(receivers, 0)
        for r in range(rounds):
            order = list(receivers)
            order = order[r % 3 :] + order[: r % 3]
            figures: dict[str, float] = {}
            for name in order:
                send, receive = receivers[name]
                result = measure(send, receive, redis.url, mode, events, 0)
                lost[name] += events - result["received"]
                figures[name] = result["events_per_s"]
                p2[name].append(figures[name])
                print(f"  round {r + 1} P2 {name:<11} {result['events_per_s']:10,.0f} events/s", flush=True)
            ratios.append(figures["kiki"] / figures["anchor"])
        p3: dict[str, dict[str, list[float]]] = {}
        steady = int(rate * seconds)
        for r in range(rounds):
            for name in ("kiki", "transport"):
                send, receive = receivers[name]
                result = measure(send, receive, redis.url, mode, steady, rate)
                figures_ms = p3.setdefault(name, {"p50": [], "p99": []})
                figures_ms["p50"].append(result["p50_ms"])
                figures_ms["p99"].append(result["p99_ms"])
                print(
                    f"  round {r + 1} P3 {name:<11} p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms",
                    flush=True,
                )
    finally:
        redis.stop()
    return {
        "mode": mode,
        "rounds": rounds,
        "cpus": os.cpu_count(),
        "heap_frozen": not os.environ.get(NO_FREEZE),
        "P2": {
            "events": events,
            "events_per_s": round(median(p2["kiki"])),
            "transport_events_per_s": round(median(p2["transport"])),
            "anchor_events_per_s": round(median(p2["anchor"])),
            "ratio": round(median(ratios), 2),
            "bar_ratio": P2_RATIO_BAR,
            "bar_events_per_s": P2_RATE_BAR,
            "lost": lost,
            "measured": "node A runtime (bus -> bridge -> Redis batches) -> node B's transport, bridge, bus, "
            "replay log and runtime.follow (an SSE reader on B); events/s = events / (B has the last - A started)",
            "transport": "the same, but node B stops at its transport (frames decoded and validated, no bus)",
            "anchor": "one await redis.publish(channel, json.dumps(event)) per event; subscriber decodes each",
            "per_round": {name: [round(v) for v in values] for name, values in p2.items()},
        },
        "P3": {
            "rate": rate,
            "seconds": seconds,
            "p50_ms": round(median(p3["kiki"]["p50"]), 3),
            "p99_ms": round(median(p3["kiki"]["p99"]), 3),
            "transport_p50_ms": round(median(p3["transport"]["p50"]), 3),
            "transport_p99_ms": round(median(p3["transport"]["p99"]), 3),
            "bar_p99_ms": P3_P99_BAR_MS,
            "measured": "publish into node A's bus -> delivery by runtime.follow on node B (wall clock, same machine)",
            "per_round_p99_ms": [round(v, 3) for v in p3["kiki"]["p99"]],
            "spread_p99_ms": round(statistics.pstdev(p3["kiki"]["p99"]), 3) if rounds > 1 else 0.0,
        },
    }


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--mode", choices=["pubsub", "streams"], default="pubsub")
    parser.add_argument("--no-freeze", action="store_true", help="skip freeze_startup_heap in every process")
    parser.add_argument("--out", help="JSON output file (default benchmarks/results/bridge.json)")
    args = parser.parse_args()
    if args.no_freeze:
        os.environ[NO_FREEZE] = "1"  # inherited by every node process
    print(f"bridge benchmark ({args.mode}): {args.events:,} events node A -> Redis -> node B, {args.rounds} rounds")
    results = main(args.rounds, args.events, args.rate, args.seconds, args.mode)
    path = write_results("bridge" if args.out is None and args.mode == "pubsub" else f"bridge-{args.mode}",
                         results, args.out)  # fmt: skip
    p2, p3 = results["P2"], results["P3"]
    ratio_ok = verdict(p2["ratio"], P2_RATIO_BAR, higher_is_better=True)
    rate_ok = verdict(p2["events_per_s"], P2_RATE_BAR, higher_is_better=True)
    print(f"  P2 kiki   {p2['events_per_s']:>10,} events/s  (bar >= {P2_RATE_BAR:,.0f})  {rate_ok}"
          f"  [at B's transport: {p2['transport_events_per_s']:,} events/s]")  # fmt: skip
    print(f"  P2 anchor {p2['anchor_events_per_s']:>10,} events/s")
    print(f"  P2 ratio  {p2['ratio']:>10.2f}x         (bar >= {P2_RATIO_BAR})  {ratio_ok}")
    print(f"  P3 at {p3['rate']:,.0f} events/s: p50 {p3['p50_ms']:.2f} ms, p99 {p3['p99_ms']:.2f} ms"
          f"  (bar p99 <= {P3_P99_BAR_MS})  {verdict(p3['p99_ms'], P3_P99_BAR_MS)}"
          f"  [at B's transport: p50 {p3['transport_p50_ms']:.2f}, p99 {p3['transport_p99_ms']:.2f} ms]")  # fmt: skip
    print(f"  written to {path}")


if __name__ == "__main__":
    cli()
