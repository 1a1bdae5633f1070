"""A message's tokens packed into one row, against a real SQLite file and a real PostgreSQL database.

Every read (a run's events, a thread's, a search across runs, one event by id) gives
each event back once, exactly as written, in order, through every page size, also
where a node storing other nodes' runs wrote the same run a token per row.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from kiki_events.errors import StoreError
from kiki_events.events import AgentLifecycleEvent, DoneEvent, StatusEvent, StreamEvent, TokenEvent, ToolResultEvent
from kiki_events.history import ANYONE, EventStore, SqliteStore
from kiki_events.history.migrations import SCHEMA_TABLE, migrations, statements
from kiki_events.history.packing import MAX_SPAN, PACK_SECONDS, event_rows, expand
from tests.test_history import meta_of, write_all

T0 = 1_700_000_000.0


def chatty_run(run_id: str, *, thread: str | None = "t1", ts: float = T0, tokens: int = 300) -> list[StreamEvent]:
    """A run of two agents streaming ``tokens`` tokens each (two messages, one interrupted by a tool result)."""
    env: dict[str, Any] = {"run_id": run_id, "thread_id": thread, "node": "n1"}
    events: list[StreamEvent] = [StatusEvent(**env, seq=1, ts=ts, status="started", graph="team")]

    def add(make: Any, **fields: Any) -> None:
        events.append(make(**env, seq=len(events) + 1, ts=ts + len(events) * 0.001, **fields))

    for agent, message in (("research", "m1"), ("writer", "m2")):
        add(AgentLifecycleEvent, agent=agent, phase="started")
        for i in range(tokens):
            add(TokenEvent, agent=agent, message_id=message, text=f"{agent}·{i} ", kind="text")
            if agent == "research" and i == tokens // 3:
                add(ToolResultEvent, agent=agent, tool_call_id="c1", name="search", output="found")
        add(AgentLifecycleEvent, agent=agent, phase="completed", duration_s=0.5)
    add(DoneEvent, status="success")
    return events


async def every_page(read: Any, limit: int) -> list[StreamEvent]:
    collected: list[StreamEvent] = []
    cursor = None
    while True:
        page = await read(limit=limit, cursor=cursor)
        assert len(page.events) <= limit
        collected += page.events
        if (cursor := page.cursor) is None:
            return collected


async def event_rows_stored(store: EventStore, run_id: str) -> list[tuple[int, int]]:
    """``(seq, span)`` of every row of ``run_id`` (read through the store's own connection)."""
    rows = await store._fetch("SELECT seq, span FROM events WHERE run_id = ? ORDER BY seq", [run_id])  # type: ignore[attr-defined]
    return [(int(seq), int(span)) for seq, span in rows]


@pytest.mark.asyncio
async def test_a_messages_tokens_are_one_row_and_come_back_one_by_one_exactly(store: EventStore) -> None:
    events = chatty_run("r1")
    await write_all(store, events, lookup=meta_of({"r1": "alice"}))

    rows = await event_rows_stored(store, "r1")
    assert len(rows) < 15 < len(events)  # 606 tokens in a handful of rows
    assert sum(span for _, span in rows) == len(events)
    assert max(span for _, span in rows) > 100
    page = await store.events("alice", run_id="r1", limit=10_000)
    assert page.events == events and page.cursor is None
    run = await store.run("r1", "alice")
    assert (run.events, run.last_seq) == (len(events), len(events))


@pytest.mark.asyncio
@pytest.mark.parametrize("limit", [1, 7, 100, 299])
async def test_pages_and_after_cut_through_packed_rows_without_gap_or_duplicate(store: EventStore, limit: int) -> None:
    events = chatty_run("r1", tokens=120)
    await write_all(store, events)
    assert await every_page(lambda **kw: store.events(None, run_id="r1", **kw), limit) == events
    for after in (0, 1, 3, 50, 121, 200, len(events) - 1, len(events)):
        page = await store.events(None, run_id="r1", after=after, limit=limit)
        assert page.events == events[after : after + limit]
    only_tools = await store.events(None, run_id="r1", types=["tool_result", "done"], after=5)
    assert [e.type for e in only_tools.events] == ["tool_result", "done"]
    writer_only = await store.events(None, run_id="r1", agent="writer", limit=10_000)
    assert writer_only.events == [e for e in events if e.agent == "writer"]


@pytest.mark.asyncio
async def test_a_thread_and_a_search_across_runs_page_through_packed_rows(store: EventStore) -> None:
    first, second = chatty_run("ra", tokens=80), chatty_run("rb", ts=T0 + 1, tokens=80)
    other = chatty_run("rc", thread="t2", ts=T0 + 0.05, tokens=80)
    await write_all(store, [*first, *second, *other], lookup=meta_of({"ra": "alice", "rb": "alice", "rc": "bob"}))

    for limit in (1, 9, 1000):
        thread = await every_page(lambda **kw: store.events("alice", thread_id="t1", **kw), limit)
        assert thread == first + second
        found = await every_page(lambda **kw: store.search(ANYONE, types=["token"], **kw), limit)
        tokens = [e for e in (*first, *second, *other) if e.type == "token"]
        assert sorted(e.id for e in found) == sorted(e.id for e in tokens) and len(found) == len(tokens)
        for run_id in ("ra", "rb", "rc"):
            seqs = [e.seq for e in found if e.run_id == run_id]
            assert seqs == sorted(seqs)

    # A time range that starts and ends inside packed rows keeps exactly the tokens inside it.
    since, until = T0 + 0.0405, T0 + 0.1305
    inside = await every_page(lambda **kw: store.search("alice", since=since, until=until, **kw), 11)
    expected = [e for e in first + second if since <= e.ts < until]
    assert len(expected) > 50 and sorted(e.id for e in inside) == sorted(e.id for e in expected)


@pytest.mark.asyncio
async def test_one_token_inside_a_packed_row_is_found_by_its_id(store: EventStore) -> None:
    events = [*chatty_run("r1", tokens=50)]
    token = events[30]
    caused = StatusEvent(run_id="r2", seq=1, ts=T0 + 9, status="started", causation_id=token.id)
    await write_all(store, [*events, caused])
    chain = await store.causation(ANYONE, event_id=token.id)
    assert chain.event == token
    assert [link.run.run_id for link in chain.effects] == ["r2"]
    with pytest.raises(Exception, match="not found"):
        await store.causation(ANYONE, event_id=f"r1:{len(events) + 5}")


@pytest.mark.asyncio
async def test_a_run_stored_packed_by_one_node_and_a_token_a_row_by_another_reads_once(store: EventStore) -> None:
    events = chatty_run("r1", tokens=200)
    odd = [e for e in events if e.seq % 2]  # a follower that missed every other event
    await write_all(store, odd, pack_tokens=False)
    await write_all(store, events, batch_size=37)  # the node that ran it, batches cutting messages anywhere
    await write_all(store, events[100:160], pack_tokens=False)
    rows = await event_rows_stored(store, "r1")
    assert len(rows) > len(events) // 2  # the rows do overlap
    for limit in (1, 5, 64, 10_000):
        assert await every_page(lambda **kw: store.events(None, run_id="r1", **kw), limit) == events
        assert await every_page(lambda **kw: store.events(None, thread_id="t1", **kw), limit) == events
        found = await every_page(lambda **kw: store.search(None, **kw), limit)
        assert sorted(e.seq for e in found) == [e.seq for e in events]


@pytest.mark.asyncio
async def test_a_wider_row_replaces_a_narrower_one_with_the_same_first_seq(store: EventStore) -> None:
    events = chatty_run("r1", tokens=40)
    await write_all(store, events[:20], pack_tokens=False)
    await write_all(store, events)
    assert (await store.events(None, run_id="r1", limit=3, after=1)).events == events[1:4]
    rows = dict(await event_rows_stored(store, "r1"))
    assert rows[3] > 1  # the packed row took the place of the token written alone
    assert (await store.events(None, run_id="r1")).events == events


def test_packing_stops_at_the_span_the_time_and_anything_the_tokens_do_not_share() -> None:
    base: dict[str, Any] = {"run_id": "r", "message_id": "m", "agent": "a", "thread_id": "t"}
    long = [TokenEvent(**base, seq=s, ts=T0 + s * 1e-3, text="x") for s in range(1, 2 * MAX_SPAN + 12)]
    assert [row[6] for row in event_rows(long)] == [MAX_SPAN, MAX_SPAN, 11]
    slow = [TokenEvent(**base, seq=s, ts=T0 + s * PACK_SECONDS * 0.6, text="x") for s in range(1, 6)]
    assert [row[6] for row in event_rows(slow)] == [2, 2, 1]
    backwards = [TokenEvent(**base, seq=1, ts=T0, text="x"), TokenEvent(**base, seq=2, ts=T0 - 1, text="y")]
    assert [row[6] for row in event_rows(backwards)] == [1, 1]
    mixed = [
        TokenEvent(**base, seq=1, ts=T0, text="a"),
        TokenEvent(**base, seq=2, ts=T0, text="b"),
        TokenEvent(**{**base, "message_id": "m2"}, seq=3, ts=T0, text="c"),
        TokenEvent(**base, seq=4, ts=T0, text="d", kind="reasoning"),
        TokenEvent(**{**base, "agent": "b"}, seq=5, ts=T0, text="e"),
        TokenEvent(**base, seq=7, ts=T0, text="f"),  # seq 6 never came
        TokenEvent(**base, seq=8, ts=T0, text="g", causation_id="x:1"),
        TokenEvent(**{**base, "run_id": "other"}, seq=9, ts=T0, text="h"),
        TokenEvent(**base, seq=9, ts=T0, text="i", causation_id="x:1"),
        TokenEvent(**base, seq=9, ts=T0, text="i", causation_id="x:1"),  # given twice
    ]
    rows = event_rows(mixed)
    assert [(row[0], row[1], row[6]) for row in rows] == [
        ("r", 1, 2),
        ("r", 3, 1),
        ("r", 4, 1),
        ("r", 5, 1),
        ("r", 7, 1),
        ("r", 8, 2),
        ("r", 9, 1),
        ("other", 9, 1),
    ]
    assert [e for row in rows for e in expand(row)] == [*mixed[:7], mixed[8], mixed[9], mixed[7]]
    assert [row[6] for row in event_rows(mixed, pack=False)] == [1] * 9


def test_texts_with_any_character_round_trip_through_a_packed_row() -> None:
    texts = ["héllo ", "世界", '"quoted"\\', "\n\t", "\x00nul", "😀", "\u2028"]
    tokens = [
        TokenEvent(run_id="r", seq=i + 1, ts=T0 + i * 0.1234567891, message_id="m", text=t) for i, t in enumerate(texts)
    ]
    (row,) = event_rows(tokens)
    assert row[6] == len(texts) and expand(row) == tokens


@pytest.mark.asyncio
async def test_a_token_no_json_may_hold_is_dropped_and_counted_and_its_message_kept(store: EventStore) -> None:
    tokens = [TokenEvent(run_id="r", seq=i, ts=T0, message_id="m", text=f"t{i}") for i in range(1, 6)]
    broken = tokens[2].model_copy(update={"text": "\ud800"})
    drops: list[str] = []
    writer = await write_all(store, [*tokens[:2], broken, *tokens[3:]], on_drop=drops.append)
    assert (await store.events(None, run_id="r")).events == [*tokens[:2], *tokens[3:]]
    assert writer.dropped == 1 and drops == ["store_refused"]


def test_a_packed_row_that_does_not_hold_its_tokens_is_a_clear_error() -> None:
    tokens = [TokenEvent(run_id="r", seq=i, ts=T0, message_id="m", text="x") for i in (1, 2, 3)]
    run_id, seq, ts, kind, agent, body, _ = event_rows(tokens)[0]
    with pytest.raises(StoreError, match="r:1 does not hold its 4 tokens"):
        expand((run_id, seq, ts, kind, agent, body, 4))


@pytest.mark.asyncio
async def test_a_database_of_the_previous_version_is_migrated_and_its_rows_read_as_before(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(SCHEMA_TABLE)
    for version, name, sql in migrations("sqlite")[:2]:
        for statement in statements(sql):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (?, ?, ?)", (version, name, T0))
    conn.execute(
        "INSERT INTO events (run_id, seq, ts, type, agent, body) VALUES (?, ?, ?, ?, ?, ?)",
        ("old", 1, T0, "token", "a", b'{"message_id":"m","text":"kept"}'),
    )
    conn.execute(
        "INSERT INTO runs (run_id, status, started_at, last_seq, events, llm_calls, tool_calls, tool_errors, errors, "
        "input_tokens, output_tokens, total_tokens, reasoning_tokens, cached_tokens) "
        "VALUES ('old', 'running', ?, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0)",
        (T0,),
    )
    conn.close()
    store = SqliteStore(path)
    await store.open()
    try:
        assert await store.schema_version() == 3
        (event,) = (await store.events(None, run_id="old")).events
        assert event == TokenEvent(run_id="old", seq=1, ts=T0, agent="a", message_id="m", text="kept")
    finally:
        await store.close()
