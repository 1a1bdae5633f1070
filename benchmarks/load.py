"""Many clients starting runs on one ``kiki-events serve`` process: run time under load vs one run alone.

The server is a real ``kiki-events serve`` process on a free port (in-memory bus, the
demo graph ``research_team`` with its scripted model, ``--token-delay`` seconds per
token). This process is the clients: first one client alone runs ``--alone`` runs one
after the other (the anchor: the same server, no load), then ``--clients`` clients
each loop for ``--seconds``: ``POST /runs/stream`` with a demo task and read the SSE
stream to ``done``. A run's time is from its first request to its ``done``, so a
client that gets 429 waits ``Retry-After``, asks again, and that wait counts (the 429s
are counted too). When the time is up no new run starts; the runs under way finish
and count. The clients speak raw HTTP/1.1 over asyncio streams (keep-alive, chunked
bodies, frames counted without being decoded), so they cost little next to the server;
the CPU time of both processes is reported. Printed and written as JSON
(``benchmarks/results/load.json``).

    python3 scripts/dev.py run python benchmarks/load.py [--clients 200] [--seconds 30] \
        [--token-delay 0.02] [--max-active N] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import ROOT, free_port, write_results
from kiki_events.config import load_settings

HOST = "127.0.0.1"
TASK = "Compare Redis streams and pub/sub"
_TICK = os.sysconf("SC_CLK_TCK")
_DONE = b"\nevent: done\n"
_EVENT = b"\nevent: "


def _die_with_parent() -> None:
    """In the server's process before it starts: end it if the benchmark dies (Linux ``PR_SET_PDEATHSIG``)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


class ServerProcess:
    """``kiki-events serve`` with the demo graph in a process of its own; its output goes to a file."""

    def __init__(self, *, token_delay: float, max_active: int | None) -> None:
        self.port = free_port()
        self.max_active = max_active or load_settings(ROOT / "config" / "eventbus.yaml").runs.max_active
        env = {**os.environ, "KIKI_DEMO_TOKEN_DELAY": str(token_delay)}
        if max_active is not None:
            env["KIKI__RUNS__MAX_ACTIVE"] = str(max_active)
        self.log = tempfile.NamedTemporaryFile(prefix="kiki-load-server-", suffix=".log", delete=False)  # noqa: SIM115
        command = [sys.executable, "-m", "kiki_events.cli", "serve", "--config", "config/eventbus.yaml",
                   "--host", HOST, "--port", str(self.port)]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not answer /healthz within 60 s:\n{self.output()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()
        os.unlink(self.log.name)


class HTTPError(Exception):
    """The server answered something a client did not expect."""


@dataclass
class Figures:
    """What the clients saw."""

    times: list[float] = field(default_factory=list)
    """Seconds from a run's first request to its ``done``."""
    streaming: list[float] = field(default_factory=list)
    """Seconds from the accepted request to ``done``."""
    events: int = 0
    limited: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    unstarted: int = 0
    """Runs still refused (429) when the time was up."""

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough to start runs and read their streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reusable = True

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    def close(self) -> None:
        self.writer.close()

    async def start_run(self, request: bytes, figures: Figures) -> tuple[int, float]:
        """Send ``request``; returns ``(429, retry_after)`` or ``(200, 0)`` once ``done`` arrived."""
        self.writer.write(request)
        status, headers = await self._head()
        if headers.get("connection", "").lower() == "close":
            self.reusable = False
        if status != 200:
            await self._body(headers, None)
            if status == 429:
                return 429, float(headers.get("retry-after", "1"))
            raise HTTPError(f"HTTP {status}")
        outcome = _Stream()
        await self._body(headers, outcome)
        figures.events += outcome.events
        if outcome.status is None:
            raise HTTPError("stream ended without done")
        if outcome.status != "success":
            raise HTTPError(f"run ended {outcome.status}")
        return 200, 0.0

    async def _head(self) -> tuple[int, dict[str, str]]:
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        return status, headers

    async def _body(self, headers: dict[str, str], stream: _Stream | None) -> None:
        reader = self.reader
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readline()).split(b";", 1)[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return
                data = await reader.readexactly(size + 2)
                if stream is not None:
                    stream.feed(data[:-2])
        else:
            length = int(headers.get("content-length", "0"))
            data = await reader.readexactly(length)
            if stream is not None:
                stream.feed(data)


class _Stream:
    """Counts the SSE frames of one run and notes its ``done`` (without decoding JSON)."""

    __slots__ = ("buffer", "done_at", "events", "status")

    def __init__(self) -> None:
        # A leading newline: every ``event:`` line then follows one, the first frame's too.
        self.buffer = b"\n"
        self.events = 0
        self.status: str | None = None
        self.done_at = 0.0

    def feed(self, data: bytes) -> None:
        buffer = self.buffer + data
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self.buffer = buffer
            return
        complete = buffer[: end + 2]
        self.buffer = buffer[end + 1 :]  # keep one newline: the next frame's ``event:`` line follows it
        self.events += complete.count(_EVENT)
        done = complete.find(_DONE)
        if done >= 0 and self.status is None:
            self.done_at = time.perf_counter()
            data_line = complete[done + len(_DONE) : complete.find(b"\n", done + len(_DONE))]
            self.status = "success" if b'"status":"success"' in data_line else data_line.decode(errors="replace")


def _request(port: int) -> bytes:
    body = json.dumps({"graph": "research_team", "message": TASK}).encode()
    head = (
        f"POST /runs/stream HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _client(port: int, deadline: float, figures: Figures) -> None:
    """Start runs one after the other until ``deadline``; each run counts once it ends."""
    request = _request(port)
    connection: Connection | None = None
    try:
        while time.monotonic() < deadline:
            first = time.perf_counter()
            while True:
                try:
                    if connection is None:
                        connection = await Connection.open(port)
                    accepted = time.perf_counter()
                    status, retry_after = await connection.start_run(request, figures)
                except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, HTTPError,
                        ValueError) as exc:  # fmt: skip
                    figures.error(str(exc) if isinstance(exc, HTTPError) else type(exc).__name__)
                    if connection is not None:
                        connection.close()
                        connection = None
                    await asyncio.sleep(0.1)  # no hot loop against a failing server
                    break
                if not connection.reusable:
                    connection.close()
                    connection = None
                if status == 429:
                    figures.limited += 1
                    if time.monotonic() + retry_after >= deadline:
                        figures.unstarted += 1
                        return
                    await asyncio.sleep(retry_after)
                    continue
                done = time.perf_counter()
                figures.times.append(done - first)
                figures.streaming.append(done - accepted)
                break
    finally:
        if connection is not None:
            connection.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _alone(server: ServerProcess, runs: int) -> tuple[list[float], float]:
    """Times of ``runs`` runs one after the other, and the server's CPU seconds per run."""
    figures = Figures()
    await _one(server.port, figures)  # warms the server up (imports, caches); not counted
    cpu = server.cpu_seconds()
    for _ in range(runs):
        await _one(server.port, figures)
    return figures.times[1:], (server.cpu_seconds() - cpu) / runs


async def _one(port: int, figures: Figures) -> None:
    connection = await Connection.open(port)
    try:
        started = time.perf_counter()
        status, _ = await connection.start_run(_request(port), figures)
        if status != 200:
            raise SystemExit(f"a run alone got HTTP {status}")
        figures.times.append(time.perf_counter() - started)
    finally:
        connection.close()


async def _load(server: ServerProcess, clients: int, seconds: float) -> dict[str, Any]:
    figures = Figures()
    cpu_server, cpu_clients = server.cpu_seconds(), _cpu_self()
    started = time.perf_counter()
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(_client(server.port, deadline, figures) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    cpu_server, cpu_clients = server.cpu_seconds() - cpu_server, _cpu_self() - cpu_clients
    times = figures.times
    if not times:
        raise SystemExit(f"no run completed under load (errors: {figures.errors})")
    return {
        "p50_s": round(_percentile(times, 50), 3),
        "p90_s": round(_percentile(times, 90), 3),
        "p99_s": round(_percentile(times, 99), 3),
        "max_s": round(max(times), 3),
        "streaming_p50_s": round(_percentile(figures.streaming, 50), 3),
        "streaming_p99_s": round(_percentile(figures.streaming, 99), 3),
        "runs": len(times),
        "elapsed_s": round(elapsed, 3),
        "runs_per_s": round(len(times) / elapsed, 2),
        "events": figures.events,
        "events_per_s": round(figures.events / elapsed),
        "limited_429": figures.limited,
        "unstarted": figures.unstarted,
        "errors": sum(figures.errors.values()),
        "error_kinds": figures.errors,
        "cpu": {
            "server_s": round(cpu_server, 2),
            "server_share": round(cpu_server / elapsed, 3),
            "server_ms_per_run": round(cpu_server / len(times) * 1000, 1),
            "clients_s": round(cpu_clients, 2),
            "clients_share": round(cpu_clients / elapsed, 3),
        },
    }


async def _measure(server: ServerProcess, clients: int, seconds: float, alone_runs: int) -> dict[str, Any]:
    alone, alone_cpu = await _alone(server, alone_runs)
    alone_s = statistics.median(alone)
    print(f"  one run alone: {alone_s:.2f} s (median of {len(alone)})", flush=True)
    load = await _load(server, clients, seconds)
    print(
        f"  {clients} clients for {seconds:g} s: run time p50 {load['p50_s']:.2f} s, p90 {load['p90_s']:.2f} s, "
        f"p99 {load['p99_s']:.2f} s (from the accepted request: p50 {load['streaming_p50_s']:.2f} s)\n"
        f"  {load['runs']} runs completed, {load['runs_per_s']:.2f} runs/s, {load['events_per_s']:,} events/s, "
        f"{load['limited_429']} answers 429, {load['unstarted']} runs not started in time, {load['errors']} errors\n"
        f"  CPU: server {load['cpu']['server_s']:.1f} s ({load['cpu']['server_share']:.0%} of a core, "
        f"{load['cpu']['server_ms_per_run']:.0f} ms per run), "
        f"clients {load['cpu']['clients_s']:.1f} s ({load['cpu']['clients_share']:.0%} of a core)",
        flush=True,
    )
    return {"alone_s": round(alone_s, 3), "alone_runs": [round(t, 3) for t in alone],
            "alone_server_ms_per_run": round(alone_cpu * 1000, 1), "load": load,
            "ratio_p50": round(load["p50_s"] / alone_s, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--token-delay", type=float, default=0.02, help="KIKI_DEMO_TOKEN_DELAY of the server")
    parser.add_argument("--max-active", type=int, help="runs.max_active of the server (default: its config's)")
    parser.add_argument("--alone", type=int, default=3, help="runs measured alone first (the anchor)")
    parser.add_argument("--out", help="JSON output file (default benchmarks/results/load.json)")
    args = parser.parse_args()
    if args.clients < 1 or args.seconds <= 0 or args.alone < 1:
        parser.error("--clients and --alone must be at least 1, --seconds positive")
    server = ServerProcess(token_delay=args.token_delay, max_active=args.max_active)
    print(
        f"load benchmark: kiki-events serve (pid {server.process.pid}, port {server.port}), research_team at "
        f"{args.token_delay:g} s per token, max_active {server.max_active}",
        flush=True,
    )
    try:
        results = asyncio.run(_measure(server, args.clients, args.seconds, args.alone))
    finally:
        server.stop()
    results = {"clients": args.clients, "seconds": args.seconds, "token_delay": args.token_delay,
               "max_active": server.max_active, **results,
               "measured": "POST /runs/stream of the demo research_team to done, per client in a loop; "
                           "anchor: one run alone on the same server"}  # fmt: skip
    print(f"  p50 under load / alone: {results['ratio_p50']:.2f}x")
    print(f"  written to {write_results('load', results, args.out)}")


if __name__ == "__main__":
    main()
