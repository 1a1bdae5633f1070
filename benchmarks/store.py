"""The event store (``kiki_events.history``): how fast it writes, and what it adds to P1.

* ``write`` – events written per second into SQLite (a file in a temporary folder, WAL) and
  PostgreSQL (``--dsn``, default the local server's ``postgres`` database; a database of
  the run's own is created and dropped) by our store (the sink's writer: batches in one
  transaction each), against one ``INSERT`` and commit per event into the same table of
  the same database in the same run (bar ≥ 20×); for SQLite once on a plain connection
  (``synchronous`` FULL, SQLite's default: ``sqlite``) and once with the store's own
  ``synchronous=NORMAL`` (``sqlite_synchronous_normal``). The events are those of LLM runs
  (tokens of four messages a run, which the store packs a message's batch to a row),
  ``--events`` for the store and ``--naive-events`` for the naive way, each round; and
  ``*_row_per_event``: the store when no two events share a row (every token of its own
  message), against the naive way with the same durability.
* ``fetch`` – the time to read a stored run of ``--fetch-events`` events (20,000) over HTTP
  from a real uvicorn server keeping its history in SQLite: every page of
  ``GET /runs/{id}/events`` as JSON lines (10,000 a page), and the run's stream
  ``GET /runs/{id}/stream`` when the run is kept only in the store.
* ``P1`` – capture cost with the store on (SQLite, the history sink on the bus, every run
  waiting until its events are written) against ``graph.astream(stream_mode="messages")``,
  measured as ``benchmarks/capture.py`` measures P1 (bar ≤ 1.15×), beside P1 without it.

Figures are medians over ``--rounds`` rounds with their range. ``--quick``: small numbers
(the test suite runs it; its figures are not judged).

    python3 scripts/dev.py run python benchmarks/store.py [--rounds 5] [--events 20000]
        [--naive-events 2000] [--tokens 2000] [--p1-runs 3] [--fetch-events 20000] [--dsn DSN] [--no-postgres]
        [--only write|fetch|p1]
        [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from benchmarks._common import median, verdict, write_results
from benchmarks.capture import INPUT, Once, kiki_session, long_shape, measure, via_messages
from kiki_events import EventBus, KikiCallbackHandler
from kiki_events.codec import encode
from kiki_events.config import Settings
from kiki_events.events import StreamEvent, TokenEvent
from kiki_events.history import EventStore, HistoryWriter, PostgresStore, SqliteStore
from kiki_events.server import create_app
from kiki_events.sinks.history import HistorySink

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
_INSERT = "INSERT INTO events (run_id, seq, ts, type, agent, body) VALUES ({0}, {0}, {0}, {0}, {0}, {0})"


def sample_events(count: int, prefix: str, per_run: int = 1000, *, messages: int = 4) -> list[StreamEvent]:
    """``count`` events of runs of ``per_run`` events each: tokens of ``messages`` messages per run, as an
    LLM run streams them (``messages=per_run``: every token of its own message, so a row each)."""
    events: list[StreamEvent] = []
    now = time.time()
    for i in range(count):
        run, seq = divmod(i, per_run)
        events.append(
            TokenEvent(
                run_id=f"{prefix}-{run}",
                seq=seq + 1,
                ts=now + i * 1e-4,
                agent="research/researcher",
                thread_id=f"t-{run}",
                message_id=f"m{seq * messages // per_run}",
                text=f"token {i} ",
            )
        )
    return events


async def ours(store: EventStore, events: list[StreamEvent]) -> float:
    """Events per second written by the writer (from the first add to the last commit)."""
    writer = HistoryWriter(store, buffer_size=len(events) + 1, batch_size=500)
    await writer.start()
    start = time.perf_counter()
    for event in events:
        writer.add(event)
    assert await writer.flush(600)
    elapsed = time.perf_counter() - start
    await writer.close(close_store=False)
    return len(events) / elapsed


def naive_sqlite(path: Path, events: list[StreamEvent], *, as_ours: bool = False) -> float:
    """Events per second with one INSERT and one commit per event.

    A plain connection (the file is in WAL mode; ``synchronous`` at SQLite's default,
    FULL), or with ``as_ours`` the store's own setting (``synchronous=NORMAL``).
    """
    conn = sqlite3.connect(path, isolation_level=None)
    if as_ours:
        conn.execute("PRAGMA synchronous=NORMAL")
    sql = _INSERT.format("?")
    start = time.perf_counter()
    for e in events:
        conn.execute("BEGIN")
        conn.execute(sql, (e.run_id, e.seq, e.ts, e.type, e.agent, encode(e)))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return len(events) / elapsed


async def naive_postgres(dsn: str, events: list[StreamEvent]) -> float:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        sql = _INSERT.format("%s")
        start = time.perf_counter()
        for e in events:
            await conn.execute(sql, (e.run_id, e.seq, e.ts, e.type, e.agent, encode(e)))  # autocommit: one each
        return len(events) / (time.perf_counter() - start)


@asynccontextmanager
async def postgres_database(admin: str) -> AsyncIterator[str]:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"kiki_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(**{**conninfo_to_dict(admin), "dbname": name})
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def spread(values: list[float], digits: int | None = None) -> dict[str, Any]:
    return {"median": round(median(values), digits), "range": [round(min(values), digits), round(max(values), digits)]}


def figures(ours_rates: list[float], naive_rates: list[float], bar: float | None = 20) -> dict[str, Any]:
    """Rates and their ratios; ``bar``: the ratio to reach (``None``: a figure for information)."""
    ratios = [a / b for a, b in zip(ours_rates, naive_rates, strict=True)]
    return {
        "ours_events_per_s": spread(ours_rates),
        "naive_events_per_s": spread(naive_rates),
        "ratio": {**spread(ratios, 1), "bar": bar},
    }


async def write_rates(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteStore(Path(folder) / "history.sqlite")
        await store.open()
        mine, rows, naive, alike = [], [], [], []
        for r in range(args.rounds):
            mine.append(await ours(store, sample_events(args.events, f"ours{r}")))
            rows.append(await ours(store, sample_events(args.events, f"rows{r}", messages=1000)))
            naive.append(naive_sqlite(store.path, sample_events(args.naive_events, f"naive{r}")))
            alike.append(naive_sqlite(store.path, sample_events(args.naive_events, f"alike{r}"), as_ours=True))
        await store.close()
        results["sqlite"] = figures(mine, naive)
        results["sqlite_synchronous_normal"] = figures(mine, alike)
        results["sqlite_row_per_event"] = figures(rows, alike, bar=None)
    if not args.no_postgres:
        async with postgres_database(args.dsn) as dsn:
            pg = PostgresStore(dsn)
            await pg.open()
            mine, rows, naive = [], [], []
            for r in range(args.rounds):
                mine.append(await ours(pg, sample_events(args.events, f"ours{r}")))
                rows.append(await ours(pg, sample_events(args.events, f"rows{r}", messages=1000)))
                naive.append(await naive_postgres(dsn, sample_events(args.naive_events, f"naive{r}")))
            await pg.close()
            results["postgres"] = figures(mine, naive)
            results["postgres_row_per_event"] = figures(rows, naive, bar=None)
    return results


def with_store(folder: Path) -> Any:
    @asynccontextmanager
    async def session() -> AsyncIterator[Once]:
        store = SqliteStore(folder / f"p1-{secrets.token_hex(4)}.sqlite")
        writer = HistoryWriter(store)
        sink = HistorySink(writer, node=None)
        await sink.start()
        try:
            async with EventBus() as bus:
                bus.add_sink(sink)
                bus.subscribe(lambda event: None, name="consumer")

                async def once(graph: Any) -> int:
                    await graph.ainvoke(INPUT, {"callbacks": [KikiCallbackHandler(bus)]})
                    await bus.drain()
                    assert await writer.flush(60)  # the run's events are in the database
                    return writer.written

                yield once
        finally:
            await sink.close()

    return session


async def p1(args: argparse.Namespace) -> dict[str, Any]:
    shape = long_shape(args.tokens, args.p1_runs)
    with tempfile.TemporaryDirectory() as folder:
        variants = {"messages": via_messages, "kiki": kiki_session, "kiki+store": with_store(Path(folder))}
        measured = await measure(shape, args.rounds, variants)
    times = measured["times"]
    out: dict[str, Any] = {
        "shape": shape.describe,
        "ms_per_run_median": {name: round(median(v) / shape.runs * 1000, 3) for name, v in times.items()},
        "events_per_run": measured["counts"]["kiki"] // shape.runs,
    }
    for name in ("kiki", "kiki+store"):
        ratios = [a / b for a, b in zip(times[name], times["messages"], strict=True)]
        cpu = [a / b for a, b in zip(measured["cpu"][name], measured["cpu"]["messages"], strict=True)]
        out[name] = {
            "ratio": round(median(ratios), 3),
            "range": [round(min(ratios), 3), round(max(ratios), 3)],
            "cpu_ratio": round(median(cpu), 3),
            "bar": 1.15,
        }
    return out


def fetch_times(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds to read one stored run of ``args.fetch_events`` events over HTTP, each way, per round."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "history.sqlite"
        events = sample_events(args.fetch_events, "fetch", per_run=args.fetch_events)
        run_id = events[0].run_id

        async def store_it() -> None:
            writer = HistoryWriter(SqliteStore(path), buffer_size=len(events) + 1)
            await writer.start()
            for event in events:
                writer.add(event)
            assert await writer.flush(600)
            await writer.close()

        asyncio.run(store_it())
        settings = Settings.from_mapping({"store": {"enabled": True, "path": str(path)}})
        pages, streams = [], []
        with serving(create_app(settings, graphs={})) as url, httpx.Client(base_url=url, timeout=120) as client:
            for _ in range(args.rounds):
                start = time.perf_counter()
                got, cursor = 0, None
                while True:
                    params = {"limit": 10_000, "format": "jsonl", **({"cursor": cursor} if cursor else {})}
                    response = client.get(f"/runs/{run_id}/events", params=params)
                    response.raise_for_status()
                    got += response.text.count("\n")
                    cursor = response.headers.get("x-kiki-cursor")
                    if not cursor:
                        break
                pages.append(time.perf_counter() - start)
                assert got == len(events), got
                start = time.perf_counter()
                with client.stream("GET", f"/runs/{run_id}/stream") as response:
                    body = b"".join(response.iter_raw()) if response.status_code == 200 else b""
                if body.count(b"\nid: ") + body.startswith(b"id: ") >= len(events):
                    streams.append(time.perf_counter() - start)
    out: dict[str, Any] = {"events": args.fetch_events, "events_jsonl_s": spread(pages, 3)}
    out["stream_s"] = spread(streams, 3) if streams else "not served from the store"
    return out


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` on a real uvicorn server on a free local port, in a thread, for the block."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the benchmark server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    write = await write_rates(args) if args.only in (None, "write") else {}
    fetch = await asyncio.to_thread(fetch_times, args) if args.only in (None, "fetch") else {}
    p1_figures = await p1(args) if args.only in (None, "p1") else {}
    return {"write": write, "fetch": fetch, "P1": p1_figures, "rounds": args.rounds}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--events", type=int, default=20_000, help="events our store writes per round")
    p.add_argument("--naive-events", type=int, default=2_000, help="events written one by one per round")
    p.add_argument("--p1-runs", type=int, default=3, help="runs of each P1 variant per round, taking turns")
    p.add_argument("--tokens", type=int, default=2000, help="tokens per LLM call of the P1 graph (QUALITY.md: 2,000)")
    p.add_argument("--dsn", default=DEFAULT_DSN, help="a PostgreSQL server (a database of its own is made there)")
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument("--fetch-events", type=int, default=20_000, help="events of the run fetched over HTTP")
    p.add_argument("--only", choices=["write", "fetch", "p1"], default=None, help="measure only this part")
    p.add_argument("--quick", action="store_true", help="small numbers (for the test suite)")
    p.add_argument("--out", default=None)
    return p


def cli() -> None:
    args = parser().parse_args()
    if args.quick:
        args.rounds, args.events, args.naive_events, args.fetch_events = 2, 1000, 100, 500
        args.tokens, args.p1_runs = 50, 1
    results = asyncio.run(main(args))
    for backend, fig in results["write"].items():
        print(
            f"{backend:26} ours {fig['ours_events_per_s']['median']:>8} ev/s {fig['ours_events_per_s']['range']}"
            f"  naive {fig['naive_events_per_s']['median']:>6} ev/s {fig['naive_events_per_s']['range']}"
            f"  ratio {fig['ratio']['median']}x {fig['ratio']['range']}"
            + (
                f"  {verdict(fig['ratio']['median'], bar, higher_is_better=True)}"
                if (bar := fig["ratio"]["bar"])
                else ""
            )
        )
    if results["fetch"]:
        fetch = results["fetch"]
        print(
            f"fetch {fetch['events']} stored events over HTTP: events (JSON lines) {fetch['events_jsonl_s']} s"
            f"; stream {fetch['stream_s']}"
        )
    for name in ("kiki", "kiki+store") if results["P1"] else ():
        fig = results["P1"][name]
        print(f"P1 {name:11} {fig['ratio']}x {fig['range']} (cpu {fig['cpu_ratio']}x)  {verdict(fig['ratio'], 1.15)}")
    print(f"wrote {write_results('store', results, args.out)}")


if __name__ == "__main__":
    cli()
