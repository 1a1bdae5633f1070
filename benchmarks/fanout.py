"""P4 and P6 (README.md, "Performance"): SSE fan-out of one run, and the memory of idle clients.

* P4 – one run of ``--tokens`` token events watched by ``--clients`` SSE clients.
  Ours: the ready-made app (:func:`~kiki_events.server.create_app`), the clients
  joining ``GET /runs/{run_id}/stream``, the events published into the runtime's
  bus as the callback handler does. The anchor, side by side in the same rounds: a
  plain sse-starlette endpoint that gives each client its own queue and yields one
  ``ServerSentEvent`` per event (the event's JSON encoded once, not per client).
  Both are fed the same events by the same feeder (batches of ``--batch``, the
  loop runs between batches), each by its own uvicorn process set up the same
  way. frames/s = clients × events / (feed started → every client has ``done``).
  Every client must get every event, in order, once. Bar: ≥ 2× the anchor.
* P6 – a fresh server process of ours: RSS before and after ``--idle`` clients
  connect to a live run's stream and sit idle, divided by their number. Bar: ≤ 64 KB.

The clients run in this process (raw sockets: no client library in the way, each
parses the frames it gets and checks their seq); the servers are separate
processes. Figures are medians over rounds.

    python3 scripts/dev.py run python benchmarks/fanout.py [--rounds 5] [--tokens 20000] [--clients 100] [--idle 1000]
                                [--batch 100] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import resource
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import ROOT, free_port, median, verdict, write_results

P4_BAR = 2.0
P6_BAR_KB = 64.0
_ID = re.compile(rb"^id: [^\n]*:(\d+)$", re.MULTILINE)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# -- the servers (each in its own process) -----------------------------------------------------------------


def _token_events(run_id: str, tokens: int) -> list[Any]:
    """The run every server is fed: ``started``, ``tokens`` tokens, ``done`` (seq 1 … tokens + 2)."""
    from kiki_events.events import DoneEvent, StatusEvent, trusted_token

    now = time.time()
    events: list[Any] = [StatusEvent(run_id=run_id, seq=1, ts=now, thread_id="bench", status="started", graph="fan")]
    events += [
        trusted_token(run_id, seq, now, "bench", "writer", None, "node-a", "m1", f" word{seq % 1000}")
        for seq in range(2, tokens + 2)
    ]
    events.append(DoneEvent(run_id=run_id, seq=tokens + 2, ts=now, thread_id="bench", status="success"))
    return events


async def _feed(events: list[Any], batch: int, publish: Any) -> None:
    for start in range(0, len(events), batch):
        for event in events[start : start + batch]:
            publish(event)
        await asyncio.sleep(0)  # the loop runs between batches, as it does between a graph's awaits


def ours_app(replay_events: int) -> Any:
    """The ready-made app, plus two routes for the benchmark: open a run, feed it."""
    from kiki_events.capture.handler import new_run_id
    from kiki_events.config import Settings
    from kiki_events.server import create_app

    settings = Settings.from_mapping(
        {
            "runs": {"replay_events": replay_events},
            "logging": {"level": "WARNING"},
            "server": {"dashboard": False},
        }
    )
    app = create_app(settings)
    runtime = app.state.kiki_runtime
    feeding: set[asyncio.Task[None]] = set()

    @app.post("/bench/run")
    async def open_run(started: bool = False) -> dict[str, str]:
        _, run_id = new_run_id()
        runtime.store.create(run_id, thread_id="bench")
        if started:
            runtime.bus.publish(_token_events(run_id, 0)[0])
        return {"run_id": run_id}

    @app.post("/bench/feed/{run_id}")
    async def feed(run_id: str, tokens: int, batch: int) -> dict[str, int]:
        events = _token_events(run_id, tokens)
        task = asyncio.get_running_loop().create_task(_feed(events, batch, runtime.bus.publish))
        feeding.add(task)
        task.add_done_callback(feeding.discard)
        return {"events": len(events)}

    @app.get("/bench/clients")
    async def clients() -> dict[str, int]:
        return {"clients": runtime.store.clients, "lagging": runtime.store.lagging}

    return app


def anchor_app() -> Any:
    """A plain sse-starlette endpoint: one queue per client, one frame per event per client."""
    from fastapi import FastAPI
    from sse_starlette import EventSourceResponse, ServerSentEvent

    from kiki_events.formats.kiki import sse_data

    app = FastAPI()
    queues: set[asyncio.Queue[tuple[str, str, str]]] = set()
    feeding: set[asyncio.Task[None]] = set()

    @app.get("/anchor/stream")
    async def stream() -> EventSourceResponse:
        queue: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
        queues.add(queue)

        async def frames() -> Any:
            try:
                while True:
                    event_id, kind, data = await queue.get()
                    yield ServerSentEvent(data=data, id=event_id, event=kind, sep="\n")
                    if kind == "done":
                        return
            finally:
                queues.discard(queue)

        return EventSourceResponse(frames(), sep="\n", headers={"Cache-Control": "no-store"})

    @app.post("/anchor/feed/{run_id}")
    async def feed(run_id: str, tokens: int, batch: int) -> dict[str, int]:
        events = _token_events(run_id, tokens)

        def publish(event: Any) -> None:
            item = (f"{event.run_id}:{event.seq}", event.type, sse_data(event).decode())
            for queue in queues:
                queue.put_nowait(item)

        task = asyncio.get_running_loop().create_task(_feed(events, batch, publish))
        feeding.add(task)
        task.add_done_callback(feeding.discard)
        return {"events": len(events)}

    @app.get("/bench/clients")
    async def clients() -> dict[str, int]:
        return {"clients": len(queues), "lagging": 0}

    return app


def serve(kind: str, port: int, replay_events: int) -> None:
    """Run one server (``ours`` or ``anchor``) on ``port`` until killed."""
    import uvicorn

    from kiki_events.heap import freeze_startup_heap

    _raise_fd_limit()
    app = ours_app(replay_events) if kind == "ours" else anchor_app()
    freeze_startup_heap()  # as ``kiki-events serve`` does; the anchor's process too
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", backlog=4096)


class Server:
    """A server process of this benchmark, killed on exit."""

    def __init__(self, kind: str, replay_events: int) -> None:
        self.kind = kind
        self.port = free_port()
        command = [sys.executable, __file__, "--serve", kind, "--port", str(self.port),
                   "--replay-events", str(replay_events)]  # fmt: skip
        self.process = subprocess.Popen(command, cwd=ROOT)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.get("/bench/clients")
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the {kind} server did not start") from None
                time.sleep(0.05)

    def get(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)


# -- the clients (this process) ------------------------------------------------------------------------------


class Reader(asyncio.Protocol):
    """One SSE client on a raw socket: counts frames, checks their seq runs 1, 2, 3, …"""

    def __init__(self, request: bytes, total: int, finished: asyncio.Future[None] | None) -> None:
        self.request = request
        self.total = total
        self.finished = finished
        self.first = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.last = 0
        self.frames = 0
        self.errors: list[str] = []
        self._head = True
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buffer = self._tail + data if self._tail else data
        if self._head:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self._tail = buffer
                return
            if not buffer.startswith(b"HTTP/1.1 200"):
                self._fail(f"status line {buffer[:40]!r}")
            self._head = False
            if not self.first.done():
                self.first.set_result(None)
        cut = buffer.rfind(b"\n\n") + 2
        if cut < 2:
            self._tail = buffer
            return
        seqs = _ID.findall(buffer, 0, cut)
        self._tail = buffer[cut:]
        if seqs:
            last = self.last
            got = list(map(int, seqs))
            if got != list(range(last + 1, last + 1 + len(got))):
                self._fail(f"seq out of order after {last}: {got[:5]}")
            self.last = got[-1]
            self.frames += len(got)
            if self.last >= self.total and self.finished is not None and not self.finished.done():
                self.finished.set_result(None)

    def _fail(self, problem: str) -> None:
        self.errors.append(problem)
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.finished is not None and not self.finished.done():
            self._fail(f"connection lost after seq {self.last}: {exc}")


async def _connect(port: int, path: str, count: int, total: int, *, wait_done: bool) -> list[Reader]:
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode()
    readers: list[Reader] = []
    for start in range(0, count, 100):  # connect in waves, as a server's accept backlog likes
        wave = [
            Reader(request, total, loop.create_future() if wait_done else None) for _ in range(min(100, count - start))
        ]
        await asyncio.gather(*(loop.create_connection(lambda r=r: r, "127.0.0.1", port) for r in wave))  # type: ignore[misc]
        readers += wave
    await asyncio.wait_for(asyncio.gather(*(r.first for r in readers)), 60)
    return readers


async def _until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def fan_out_round(server: Server, clients: int, tokens: int, batch: int) -> dict[str, Any]:
    """One round against one server: connect, feed, wait for every client's ``done``."""
    total = tokens + 2
    if server.kind == "ours":
        run_id = server.get("/bench/run", "POST")["run_id"]
        path, feed = f"/runs/{run_id}/stream", f"/bench/feed/{run_id}"
    else:
        run_id = "anchor-run"
        path, feed = "/anchor/stream", f"/anchor/feed/{run_id}"
    readers = await _connect(server.port, path, clients, total, wait_done=True)
    await _until(lambda: server.get("/bench/clients")["clients"] >= clients, 30, "every client to be connected")
    started = time.perf_counter()
    server.get(f"{feed}?tokens={tokens}&batch={batch}", "POST")
    await asyncio.wait_for(asyncio.gather(*(r.finished for r in readers if r.finished is not None)), 300)
    elapsed = time.perf_counter() - started
    for reader in readers:
        if reader.transport is not None:
            reader.transport.close()
    errors = [e for r in readers for e in r.errors]
    received = sum(r.frames for r in readers)
    return {
        "seconds": elapsed,
        "frames_per_s": received / elapsed,
        "received": received,
        "expected": clients * total,
        "errors": errors[:5],
        "lagging": server.get("/bench/clients")["lagging"],
    }


async def idle_memory(kind: str, idle: int, replay_events: int) -> dict[str, Any]:
    """RSS of a fresh server before and after ``idle`` clients sit on a live run's stream."""
    server = Server(kind, replay_events)
    try:
        if kind == "ours":
            path = f"/runs/{server.get('/bench/run?started=true', 'POST')['run_id']}/stream"
        else:
            path = "/anchor/stream"
        # Warm the path once (imports, first-request caches), then measure.
        warm = await _connect(server.port, path, 10, 1, wait_done=False)
        for reader in warm:
            reader.transport.close()  # type: ignore[union-attr]
        await _until(lambda: server.get("/bench/clients")["clients"] == 0, 30, "the warm-up clients to leave")
        before = server.rss_kb()
        readers = await _connect(server.port, path, idle, 1, wait_done=False)
        await _until(lambda: server.get("/bench/clients")["clients"] >= idle, 60, "every idle client to be connected")
        after = server.rss_kb()
        for reader in readers:
            reader.transport.close()  # type: ignore[union-attr]
        return {
            "clients": idle,
            "rss_before_kb": before,
            "rss_after_kb": after,
            "kb_per_client": round((after - before) / idle, 2),
        }
    finally:
        server.stop()


async def main(rounds: int, tokens: int, clients: int, idle: int, batch: int) -> dict[str, Any]:
    _raise_fd_limit()
    replay_events = max(20000, tokens + 16)
    servers = {"ours": Server("ours", replay_events), "anchor": Server("anchor", replay_events)}
    per_round: dict[str, list[dict[str, Any]]] = {"ours": [], "anchor": []}
    ratios: list[float] = []
    try:
        for kind in servers:  # warm-up
            await fan_out_round(servers[kind], min(clients, 10), min(tokens, 2000), batch)
        for r in range(rounds):
            order = ["ours", "anchor"] if r % 2 == 0 else ["anchor", "ours"]
            for kind in order:
                gc.collect()
                per_round[kind].append(await fan_out_round(servers[kind], clients, tokens, batch))
            ratios.append(per_round["ours"][-1]["frames_per_s"] / per_round["anchor"][-1]["frames_per_s"])
    finally:
        for server in servers.values():
            server.stop()
    lost = {
        kind: sum(x["expected"] - x["received"] for x in rounds_) + sum(len(x["errors"]) for x in rounds_)
        for kind, rounds_ in per_round.items()
    }
    memory = await idle_memory("ours", idle, replay_events) if idle else None
    anchor_memory = await idle_memory("anchor", idle, replay_events) if idle else None
    return {
        "tokens": tokens,
        "clients": clients,
        "batch": batch,
        "rounds": rounds,
        "P4": {
            "ratio": round(median(ratios), 3),
            "frames_per_s": round(median([x["frames_per_s"] for x in per_round["ours"]])),
            "anchor_frames_per_s": round(median([x["frames_per_s"] for x in per_round["anchor"]])),
            "ratio_per_round": [round(x, 3) for x in ratios],
            "lost": lost,
            "lagging": sum(x["lagging"] for x in per_round["ours"][-1:]),
            "errors": {kind: [e for x in rounds_ for e in x["errors"]][:5] for kind, rounds_ in per_round.items()},
            "bar": P4_BAR,
            "anchor": "sse-starlette endpoint, one queue and one frame per event per client",
        },
        "P6": {**memory, "bar_kb": P6_BAR_KB, "anchor": anchor_memory} if memory else None,
    }


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--idle", type=int, default=1000, help="idle clients for P6 (0: skip P6)")
    parser.add_argument("--batch", type=int, default=100, help="events the feeder publishes between loop turns")
    parser.add_argument("--out", help="JSON output file (default benchmarks/results/fanout.json)")
    parser.add_argument("--serve", choices=["ours", "anchor"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--replay-events", type=int, default=20000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.replay_events)
        return
    results = asyncio.run(main(args.rounds, args.tokens, args.clients, args.idle, args.batch))
    path = write_results("fanout", results, args.out)
    p4, p6 = results["P4"], results["P6"]
    print(
        f"fan-out benchmark: 1 run x {args.tokens} tokens, {args.clients} SSE clients, {args.rounds} rounds (medians)"
    )
    print(f"  ours    {p4['frames_per_s']:>12,} frames/s   lost {p4['lost']['ours']}")
    print(f"  anchor  {p4['anchor_frames_per_s']:>12,} frames/s   lost {p4['lost']['anchor']}")
    ok = verdict(p4["ratio"], P4_BAR, higher_is_better=True) if p4["lost"]["ours"] == 0 else "FAIL (events lost)"
    print(f"  P4 ours / anchor  {p4['ratio']:.2f}x  (bar >= {P4_BAR})  {ok}")
    if p6 is not None:
        print(
            f"  P6 {p6['clients']} idle clients: RSS {p6['rss_before_kb']:,} -> {p6['rss_after_kb']:,} KB = "
            f"{p6['kb_per_client']} KB each  (bar <= {P6_BAR_KB:g})  {verdict(p6['kb_per_client'], P6_BAR_KB)}"
            f"   (anchor: {p6['anchor']['kb_per_client']} KB each)"
        )
    print(f"  written to {path}")


if __name__ == "__main__":
    cli()
