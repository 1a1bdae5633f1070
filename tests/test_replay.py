"""Replay from the event store over a real server: runs that left memory, live runs whose first
events left the bounded buffer, in every format, resumed with ``Last-Event-ID``; and stored
events re-published on the bus as replayed."""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from kiki_events.config import Settings
from kiki_events.errors import RunNotFoundError
from kiki_events.runtime import KikiRuntime
from kiki_events.server import bearer_tokens, create_app
from tests.servers import FrameSplitter, Gate, LiveServer, SSEFrame, gated_graph, live_server, wait_for

FORMATS = ["kiki", "agui", "aisdk"]
ALICE = {"Authorization": "Bearer token-a"}
BOB = {"Authorization": "Bearer token-b"}
TASK = {"graph": "team", "message": "Compare Redis streams and pub/sub"}


def _app(tmp_path: Path, graphs: dict[str, Any], *, runs: dict[str, Any] | None = None, **store: Any) -> Any:
    settings = Settings.from_mapping(
        {
            "node": "n1",
            "store": {"enabled": True, "path": str(tmp_path / "history.sqlite"), "flush_interval": "2ms", **store},
            "runs": runs or {},
        }
    )
    return create_app(settings, graphs=graphs, auth=bearer_tokens({"token-a": "alice", "token-b": "bob"}))


def runtime_of(app: Any) -> KikiRuntime:
    runtime: KikiRuntime = app.state.kiki_runtime
    return runtime


def blocks(body: bytes) -> list[SSEFrame]:
    """The SSE blocks of a whole body, keep-alive comments left out."""
    frames = FrameSplitter().feed(body if body.endswith(b"\n\n") else body + b"\n\n")
    return [frame for frame in frames if not (frame.comments and frame.data is None and frame.event is None)]


def get(client: httpx.Client, url: str, *, headers: dict[str, str] = ALICE, after: str | None = None) -> httpx.Response:
    extra = {"Last-Event-ID": after} if after is not None else {}
    return client.get(url, headers={**headers, **extra})


def start_run(client: httpx.Client, body: dict[str, Any] = TASK) -> str:
    with client.stream("POST", "/runs/stream", json=body, headers=ALICE) as response:
        assert response.status_code == 200, response.read()
        response.read()
        return response.headers["X-Kiki-Run-Id"]


def evict(srv: LiveServer, runtime: KikiRuntime, run_id: str) -> None:
    """Forget ``run_id`` as the run store's sweeper does once ``replay_ttl`` is over."""

    async def sweep() -> None:
        runtime.store.evict_expired(now=time.time() + runtime.store.replay_ttl + 1)

    srv.call(sweep)
    assert runtime.store.peek(run_id) is None


def kiki_seqs(frames: list[SSEFrame]) -> list[int]:
    return [frame.seq for frame in frames if frame.id is not None]


def test_a_run_that_left_memory_streams_from_the_store_as_it_did_from_memory_in_every_format(
    tmp_path: Path, research_team: ModuleType
) -> None:
    app = _app(tmp_path, {"team": research_team.build_graph(token_delay=0.0)})
    runtime = runtime_of(app)
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        run_id = start_run(client)
        url = f"/runs/{run_id}/stream"
        last = runtime.store.get(run_id, "alice").log.last_seq
        middle = f"{run_id}:{last // 2}"
        in_memory = {}
        for fmt in FORMATS:
            whole = get(client, f"{url}?format={fmt}")
            resumed = get(client, f"{url}?format={fmt}", after=middle)
            assert whole.status_code == resumed.status_code == 200
            in_memory[fmt] = (blocks(whole.content), blocks(resumed.content))
        evict(srv, runtime, run_id)
        for fmt in FORMATS:
            whole = get(client, f"{url}?format={fmt}")
            resumed = get(client, f"{url}?format={fmt}", after=middle)
            assert whole.status_code == resumed.status_code == 200, (whole.content, resumed.content)
            assert whole.headers["content-type"] == resumed.headers["content-type"]
            assert whole.headers["X-Kiki-Run-Id"] == run_id
            assert (blocks(whole.content), blocks(resumed.content)) == in_memory[fmt], fmt
        whole_kiki, resumed_kiki = in_memory["kiki"]
        assert kiki_seqs(whole_kiki) == list(range(1, last + 1))
        assert kiki_seqs(resumed_kiki) == list(range(last // 2 + 1, last + 1))
        assert whole_kiki[-1].event == "done"
        # Nothing after the last event: 204, as for a finished run in memory; others see no run.
        assert get(client, url, after=f"{run_id}:{last}").status_code == 204
        assert get(client, f"{url}?last_event_id={last}").status_code == 204
        assert get(client, url, headers=BOB).status_code == 404
        assert get(client, url, headers={}).status_code == 401
        assert get(client, url, after=f"other-run:{last // 2}").status_code == 400
        assert get(client, "/runs/no-such-run/stream").status_code == 404


def test_the_sweeper_forgets_a_run_after_a_tiny_replay_ttl_and_the_store_serves_it(
    tmp_path: Path, research_team: ModuleType
) -> None:
    app = _app(tmp_path, {"team": research_team.build_graph(token_delay=0.0)}, runs={"replay_ttl": "50ms"})
    runtime = runtime_of(app)
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        with client.stream("POST", "/runs/stream", json=TASK, headers=ALICE) as response:
            live = blocks(response.read())
            run_id = response.headers["X-Kiki-Run-Id"]
        wait_for(lambda: runtime.store.peek(run_id) is None, what="the sweeper to forget the run")
        stored = blocks(get(client, f"/runs/{run_id}/stream").content)
        assert stored == live
        assert kiki_seqs(stored) == list(range(1, len(kiki_seqs(live)) + 1))
        resumed = blocks(get(client, f"/runs/{run_id}/stream", after=f"{run_id}:7").content)
        assert resumed == [frame for frame in live if frame.id is None or frame.seq > 7]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_live_run_whose_first_events_left_the_bounded_buffer_is_joined_from_its_start(
    tmp_path: Path, research_team: ModuleType, fmt: str
) -> None:
    gate = Gate()
    # A tiny buffer, and a writer that holds its batches back (1 s): when the reader joins, the
    # first events are in neither the buffer nor (most likely) the store yet, only in the writer.
    app = _app(
        tmp_path,
        {"gated": gated_graph(research_team, gate, tokens=120)},
        runs={"replay_events": 16},
        flush_interval="1s",
        batch_size=5000,
    )
    runtime = runtime_of(app)
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        started = client.post("/runs", json={"graph": "gated", "message": "hold on"}, headers=ALICE)
        assert started.status_code in (200, 201, 202), started.text
        run_id = started.json()["run_id"]
        wait_for(gate.reached.is_set, what="the run to reach the gate")
        log = runtime.store.get(run_id, "alice").log
        at_gate = log.last_seq
        assert log.first_seq is not None and log.first_seq > 1 and not log.ended  # the start left the buffer
        splitter = FrameSplitter()
        joined: list[SSEFrame] = []
        with client.stream("GET", f"/runs/{run_id}/stream?format={fmt}", headers=ALICE) as response:
            assert response.status_code == 200
            for chunk in response.iter_raw():
                joined += splitter.feed(chunk)
                if not gate.reached.is_set() or gate_open(gate, joined, fmt, at_gate):
                    continue
            # The stream ended: the run is done.
        assert log.ended and log.last_seq > at_gate
        joined = [f for f in joined if not (f.comments and f.data is None and f.event is None)]
        evict(srv, runtime, run_id)
        from_store = blocks(get(client, f"/runs/{run_id}/stream?format={fmt}").content)
        assert joined == from_store
        if fmt == "kiki":
            assert kiki_seqs(joined) == list(range(1, log.last_seq + 1))
            assert not [f for f in joined if f.event == "status" and f.id is None]  # no gap notice


def gate_open(gate: Gate, frames: list[SSEFrame], fmt: str, at_gate: int) -> bool:
    """Open the gate once the reader has what the run produced before it (kiki), or anything (others)."""
    if getattr(gate, "_opened", False):
        return True
    ready = any(f.id is not None and f.seq >= at_gate for f in frames) if fmt == "kiki" else bool(frames)
    if ready:
        gate.open()
    return ready


def read_thread(client: httpx.Client, thread_id: str, until: str, *, after: str | None = None) -> list[tuple[str, int]]:
    """The ``(run_id, seq)`` of the events of a thread stream, up to the ``done`` of run ``until``."""
    ids: list[tuple[str, int]] = []
    headers = {**ALICE, **({"Last-Event-ID": after} if after else {})}
    with client.stream("GET", f"/threads/{thread_id}/stream", headers=headers) as response:
        assert response.status_code == 200, response.read()
        splitter = FrameSplitter()
        for chunk in response.iter_raw():
            for frame in splitter.feed(chunk):
                if frame.id is not None:
                    run_id, _, seq = frame.id.rpartition(":")
                    ids.append((run_id, int(seq)))
                    if run_id == until and frame.event == "done":
                        return ids
    raise AssertionError(f"the thread stream ended before the done of {until}: {ids[-3:]}")


def test_a_thread_stream_includes_its_runs_that_left_memory(tmp_path: Path, research_team: ModuleType) -> None:
    app = _app(tmp_path, {"team": research_team.build_graph(token_delay=0.0)})
    runtime = runtime_of(app)
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        first = start_run(client, {**TASK, "thread_id": "t1"})
        second = start_run(client, {**TASK, "thread_id": "t1"})
        sizes = {run: runtime.store.get(run, "alice").log.last_seq for run in (first, second)}
        whole = [(run, seq) for run in (first, second) for seq in range(1, sizes[run] + 1)]
        assert read_thread(client, "t1", second) == whole

        async def forget_first() -> None:
            runtime.store.forget(first)

        srv.call(forget_first)
        assert read_thread(client, "t1", second) == whole
        assert read_thread(client, "t1", second, after=f"{first}:5") == whole[5:]
        assert read_thread(client, "t1", second, after=f"{second}:5") == whole[sizes[first] + 5 :]
        assert client.get("/threads/t1/stream", headers=BOB).status_code == 404


@pytest.mark.asyncio
async def test_events_the_store_never_got_are_reported_with_a_gap_notice_and_tokens_keep_their_first(
    tmp_path: Path,
) -> None:
    from kiki_events.core.backfill import StoredCursor
    from kiki_events.core.runlog import Frame, RunLog
    from kiki_events.events import StatusEvent, TokenEvent
    from kiki_events.history import ANYONE, HistoryWriter, SqliteStore

    events = [
        TokenEvent(run_id="r1", seq=n, ts=1000.0 + n, message_id=f"m{(n - 1) // 4}", text=f"t{n}") for n in range(1, 41)
    ]
    writer = HistoryWriter(SqliteStore(tmp_path / "h.sqlite"), flush_interval=0.0)
    await writer.start()
    try:
        for event in events:
            if event.seq not in (6, 7):  # dropped before the store got them
                writer.add(event)
        assert await writer.flush(10)
        store = writer.store

        async def fetch(after: int, limit: int) -> list[Any]:
            return (await store.events(ANYONE, run_id="r1", after=after, limit=limit)).events

        async def seen(after: int) -> set[str]:
            page = await store.events(ANYONE, run_id="r1", after=0, limit=1000)
            return {e.message_id for e in page.events if isinstance(e, TokenEvent) and e.seq <= after}

        # A run known only to the store, read in pages of 3 from seq 2: a gap notice where 6 and 7 are missing.
        cursor = StoredCursor("r1", fetch, after=2, seen=seen)
        items: list[Any] = []
        while batch := await cursor.next(3):
            items += batch
        frames = [item for item in items if isinstance(item, Frame)]
        notices = [item for item in items if isinstance(item, StatusEvent)]
        assert [f.seq for f in frames] == [3, 4, 5, *range(8, 41)]
        assert [(n.status, n.first_seq) for n in notices] == [("gap", 8)]
        assert items.index(notices[0]) == 3 and cursor.finished
        # m0 began before seq 2 (not first); m1 begins at 5; m1's 8 follows the gap (not first).
        assert [f.seq for f in frames if f.first_of_message] == list(range(5, 41, 4))

        # A live run whose bounded buffer lost its start: the store until the buffer, then the buffer.
        log = RunLog("r1", 16)
        for event in events:
            log.append(event)
        assert log.first_seq is not None and log.first_seq > 8
        joined = StoredCursor("r1", fetch, log=log, seen=seen, patience=0.2)
        got: list[Any] = []
        while batch := await joined.next(4):
            got += batch
            if joined.after == 40:
                break
        assert [i.seq for i in got if isinstance(i, Frame)] == [1, 2, 3, 4, 5, *range(8, 41)]
        assert [(n.status, n.first_seq) for n in got if isinstance(n, StatusEvent)] == [("gap", 8)]
        assert joined.from_store < log.first_seq < 40 - 16  # up to the buffer from the store, the rest from it
    finally:
        await writer.close()


def test_a_client_of_post_runs_stream_slower_than_the_buffer_gets_the_rest_from_the_store(tmp_path: Path) -> None:
    """It stops reading while the run goes on: what the 16-event buffer drops meanwhile comes from the store."""
    import socket

    from langchain_core.callbacks import adispatch_custom_event
    from langgraph.graph import END, START, MessagesState, StateGraph

    blobs, size = 400, 30_000  # 12 MB in all: the client's socket fills up and the server's sends block

    async def talk(state: MessagesState) -> dict[str, Any]:
        for i in range(blobs):
            await adispatch_custom_event("blob", {"i": i, "data": "y" * size})
        return {}

    builder = StateGraph(MessagesState)
    builder.add_node("talk", talk)
    builder.add_edge(START, "talk")
    builder.add_edge("talk", END)
    settings = Settings.from_mapping(
        {
            "node": "n1",
            "store": {"enabled": True, "path": str(tmp_path / "history.sqlite"), "flush_interval": "2ms"},
            "runs": {"replay_events": 16},
            "sse": {"max_backlog": None, "send_timeout": "60s"},  # only the buffer can leave the client behind
        }
    )
    app = create_app(settings, graphs={"blobs": builder.compile()}, auth=bearer_tokens({"token-a": "alice"}))
    runtime = runtime_of(app)
    slow = httpx.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)])
    body = {"graph": "blobs", "message": "go"}
    with (
        live_server(app) as srv,
        httpx.Client(base_url=srv.url, timeout=60, transport=slow) as client,
        client.stream("POST", "/runs/stream", json=body, headers=ALICE) as response,
    ):
        assert response.status_code == 200
        run_id = response.headers["X-Kiki-Run-Id"]
        splitter = FrameSplitter()
        raw = response.iter_raw()
        frames: list[SSEFrame] = []
        while not frames:
            frames += splitter.feed(next(raw))
        wait_for(lambda: (r := runtime.store.peek(run_id)) is not None and r.log.ended, what="the run to end")
        record = runtime.store.peek(run_id)
        assert record is not None and record.log.first_seq is not None and record.log.first_seq > 2  # buffer moved on
        for chunk in raw:
            frames += splitter.feed(chunk)
    frames = [f for f in frames if f.data is not None]  # no comments, no retry field
    assert [f.data for f in frames if f.id is None] == []  # no lagging notice
    assert kiki_seqs(frames) == list(range(1, record.log.last_seq + 1))
    assert sum(f.event == "custom" for f in frames) == blobs and frames[-1].event == "done"


def test_a_thread_stream_joins_a_live_run_whose_first_events_left_the_buffer_from_its_start(
    tmp_path: Path, research_team: ModuleType
) -> None:
    gate = Gate()
    graphs = {"team": research_team.build_graph(token_delay=0.0), "gated": gated_graph(research_team, gate, tokens=80)}
    app = _app(tmp_path, graphs, runs={"replay_events": 16})
    runtime = runtime_of(app)

    async def stored(run_id: str) -> bool:
        assert runtime.history is not None
        try:
            await runtime.history.run(run_id, "alice")
        except RunNotFoundError:
            return False
        return True

    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        first = start_run(client, {**TASK, "thread_id": "t1"})
        started = client.post("/runs", json={"graph": "gated", "message": "hold on", "thread_id": "t1"}, headers=ALICE)
        assert started.status_code in (200, 201, 202), started.text
        live = started.json()["run_id"]
        wait_for(gate.reached.is_set, what="the run to reach the gate")
        log = runtime.store.get(live, "alice").log
        at_gate = log.last_seq
        assert log.first_seq is not None and log.first_seq > 1 and not log.ended  # its start left the buffer
        wait_for(lambda: srv.call(lambda: stored(live)), what="the run's row in the store")
        ids: list[tuple[str, int]] = []
        notices: list[str] = []
        with client.stream("GET", "/threads/t1/stream", headers=ALICE) as response:
            assert response.status_code == 200
            splitter = FrameSplitter()
            for chunk in response.iter_raw():
                frames = splitter.feed(chunk)
                notices += [f.data for f in frames if f.id is None and f.data is not None]
                ids += [(f.id.rpartition(":")[0], f.seq) for f in frames if f.id is not None]
                if (live, at_gate) in ids:
                    gate.open()  # the rest of the run comes live, after what the store gave
                if any(f.event == "done" and f.id and f.id.startswith(live + ":") for f in frames):
                    break
        assert log.ended and log.last_seq > at_gate
        sizes = {run: runtime.store.get(run, "alice").log.last_seq for run in (first, live)}
    assert notices == []  # no gap notice
    assert ids == [(run, seq) for run in (first, live) for seq in range(1, sizes[run] + 1)]  # no gap, no duplicate
