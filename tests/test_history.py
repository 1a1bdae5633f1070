"""The event store against a real SQLite file and a real PostgreSQL database: writes, queries, ownership, retention."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from kiki_events.errors import InvalidArgumentError, RunNotFoundError
from kiki_events.events import (
    AgentLifecycleEvent,
    Cost,
    CustomEvent,
    DoneEvent,
    ErrorEvent,
    InterruptEvent,
    InterruptInfo,
    LLMCallEvent,
    ModelCost,
    StatusEvent,
    StreamEvent,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
    Usage,
)
from kiki_events.history import ANYONE, EventStore, HistoryWriter, PostgresStore, RunMeta

T0 = 1_700_000_000.0


def every_type(run_id: str, *, ts: float = T0, thread: str | None = "t1") -> list[StreamEvent]:
    """One event of every type (each with its optional fields set), seq 1 …"""
    env: dict[str, Any] = {"run_id": run_id, "thread_id": thread, "node": "n1"}
    usage = Usage(input_tokens=10, output_tokens=5, total_tokens=15, reasoning_tokens=2, cached_tokens=3)
    cost = Cost(total_usd=0.0125, models=(ModelCost(model="gpt", provider="openai", calls=1, usage=usage, usd=0.0125),))
    events: list[StreamEvent] = [
        StatusEvent(**env, seq=1, ts=ts, status="started", graph="team", causation_id="other:3"),
        AgentLifecycleEvent(**env, seq=2, ts=ts + 1, agent="research", phase="started"),
        TokenEvent(
            **env, seq=3, ts=ts + 2, agent="research/researcher", message_id="m1", text="héllo", kind="reasoning"
        ),
        LLMCallEvent(
            **env,
            seq=4,
            ts=ts + 3,
            agent="research/researcher",
            message_id="m1",
            status="success",
            model="gpt",
            provider="openai",
            duration_s=0.5,
            ttft_s=0.1,
            usage=usage,
            cost_usd=0.0125,
        ),
        ToolCallEvent(
            **env,
            seq=5,
            ts=ts + 4,
            agent="research/tools",
            phase="end",
            tool_call_id="c1",
            name="search",
            message_id="m1",
            args={"q": "x", "n": [1, 2]},
        ),
        ToolResultEvent(
            **env,
            seq=6,
            ts=ts + 5,
            tool_call_id="c1",
            name="search",
            error="boom",
            truncated=True,
            duration_s=0.2,
            error_type="ValueError",
        ),
        CustomEvent(**env, seq=7, ts=ts + 6, name="progress", data={"pct": 50}, tool_call_id="c1"),
        InterruptEvent(**env, seq=8, ts=ts + 7, interrupts=(InterruptInfo(id="i1", value={"question": "ok?"}),)),
        ErrorEvent(**env, seq=9, ts=ts + 8, message="it broke", error_type="RuntimeError"),
        AgentLifecycleEvent(**env, seq=10, ts=ts + 9, agent="writer", phase="failed", duration_s=1.5, error="x"),
        DoneEvent(**env, seq=11, ts=ts + 10, status="error", usage=usage, duration_s=10.0, trace_id="tr", cost=cost),
    ]
    return events


async def write_all(store: EventStore, events: list[StreamEvent], **options: Any) -> HistoryWriter:
    writer = HistoryWriter(store, **options)
    await writer.start()
    for event in events:
        assert writer.add(event)
    assert await writer.flush(10)
    await writer.close(close_store=False)
    return writer


def meta_of(owners: dict[str, str | None]) -> Any:
    return lambda run_id: RunMeta(principal=owners.get(run_id), node="n1") if run_id in owners else None


@pytest.mark.asyncio
async def test_every_event_type_comes_back_as_it_was_written_with_the_runs_totals(store: EventStore) -> None:
    events = every_type("r1")
    await write_all(store, events, lookup=meta_of({"r1": "alice"}))

    page = await store.events("alice", run_id="r1")
    assert page.events == events and page.cursor is None
    run = await store.run("r1", "alice")
    assert (run.graph, run.thread_id, run.principal, run.node, run.status) == ("team", "t1", "alice", "n1", "error")
    assert (run.started_at, run.ended_at, run.duration_s, run.last_seq, run.events) == (T0, T0 + 10, 10.0, 11, 11)
    assert (run.llm_calls, run.tool_calls, run.tool_errors, run.errors) == (1, 1, 1, 1)
    assert run.usage == Usage(input_tokens=10, output_tokens=5, total_tokens=15, reasoning_tokens=2, cached_tokens=3)
    assert run.agents == ("research", "research/researcher", "research/tools", "writer")
    assert (run.causation_id, run.caused_by, run.trace_id, run.cost_usd) == ("other:3", "other", "tr", 0.0125)
    assert await store.schema_version() == 3


@pytest.mark.asyncio
async def test_a_batch_written_again_and_the_same_events_from_two_writers_are_stored_once(store: EventStore) -> None:
    events = every_type("r1")
    await write_all(store, events)
    await write_all(store, events)  # another node, or a retried batch
    await write_all(store, events[:5])  # a node that saw less must not shrink the run's row
    assert (await store.events(ANYONE, run_id="r1")).events == events
    run = await store.run("r1", None)
    assert (run.events, run.last_seq, run.status) == (11, 11, "error")


@pytest.mark.asyncio
async def test_events_come_back_in_seq_order_whatever_order_they_were_written_in(store: EventStore) -> None:
    events = every_type("r1")
    await write_all(store, events[6:] + events[:6], batch_size=3)
    page = await store.events(None, run_id="r1", limit=4)
    assert [e.seq for e in page.events] == [1, 2, 3, 4]
    rest = await store.events(None, run_id="r1", limit=100, cursor=page.cursor)
    assert [e.seq for e in rest.events] == list(range(5, 12)) and rest.cursor is None
    after = await store.events(None, run_id="r1", after=8, types=["done", "error", "token"])
    assert [e.type for e in after.events] == ["error", "done"]
    by_agent = await store.events(None, run_id="r1", agent="research")
    assert [e.seq for e in by_agent.events] == [2, 3, 4, 5]


async def _runs_of_three_people(store: EventStore) -> None:
    owners: dict[str, str | None] = {}
    events: list[StreamEvent] = []
    for i in range(12):
        run_id = f"run{i:02d}"
        owners[run_id] = ("alice", "bob", None)[i % 3]
        thread = f"thread-{owners[run_id]}-{i % 2}"
        batch = every_type(run_id, ts=T0 + i * 100, thread=thread)
        if i % 4 == 0:  # running: no done yet
            batch = batch[:-1]
        events += batch
    await write_all(store, events, lookup=meta_of(owners))


@pytest.mark.asyncio
async def test_runs_are_listed_newest_first_with_filters_and_a_cursor_through_every_page(store: EventStore) -> None:
    await _runs_of_three_people(store)
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.runs(ANYONE, limit=5, cursor=cursor)
        seen += [run.run_id for run in page.runs]
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == [f"run{i:02d}" for i in reversed(range(12))]

    alice = await store.runs("alice")
    assert [r.run_id for r in alice.runs] == ["run09", "run06", "run03", "run00"]
    assert [r.run_id for r in (await store.runs("alice", status="running")).runs] == ["run00"]
    assert [r.run_id for r in (await store.runs("alice", status=["error"], since=T0 + 300)).runs] == [
        "run09",
        "run06",
        "run03",
    ][:3]
    assert [r.run_id for r in (await store.runs("alice", since=T0 + 300, until=T0 + 900)).runs] == ["run06", "run03"]
    assert [r.run_id for r in (await store.runs("alice", thread_id="thread-alice-0")).runs] == ["run06", "run00"]
    assert (await store.runs("alice", graph="other")).runs == []
    assert len((await store.runs("alice", agent="research")).runs) == 4
    assert len((await store.runs("alice", agent="research/tools")).runs) == 4
    assert (await store.runs("alice", agent="resear")).runs == []
    anonymous = await store.runs(None)
    assert [r.run_id for r in anonymous.runs] == ["run11", "run08", "run05", "run02"]
    assert [r.run_id for r in (await store.runs(ANYONE, owner="bob", limit=2)).runs] == ["run10", "run07"]
    with pytest.raises(InvalidArgumentError, match="status"):
        await store.runs(ANYONE, status="lost")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="cursor"):
        await store.runs(ANYONE, cursor="not-a-cursor")
    with pytest.raises(InvalidArgumentError, match="limit"):
        await store.runs(ANYONE, limit=0)


@pytest.mark.asyncio
async def test_someone_elses_runs_threads_and_events_do_not_exist_for_them(store: EventStore) -> None:
    await _runs_of_three_people(store)
    with pytest.raises(RunNotFoundError):
        await store.run("run00", "bob")
    with pytest.raises(RunNotFoundError):
        await store.run("run00", None)
    with pytest.raises(RunNotFoundError):
        await store.events("bob", run_id="run00")
    with pytest.raises(RunNotFoundError):
        await store.events("bob", thread_id="thread-alice-0")
    with pytest.raises(RunNotFoundError):
        await store.causation("bob", run_id="run00")
    assert (await store.run("run00", ANYONE)).principal == "alice"
    # A run of bob's on alice's thread (the thread is hers: she used it first) is hidden from bob.
    await write_all(
        store, every_type("intruder", ts=T0 + 5000, thread="thread-alice-0"), lookup=meta_of({"intruder": "bob"})
    )
    with pytest.raises(RunNotFoundError):
        await store.run("intruder", "bob")
    assert "intruder" not in [r.run_id for r in (await store.runs("bob")).runs]
    thread = await store.events("alice", thread_id="thread-alice-0", types=["status"])
    assert [e.run_id for e in thread.events] == ["run00", "run06"]
    found = await store.search("bob", types=["done"])
    assert {e.run_id for e in found.events} == {"run01", "run07", "run10"}  # run04 is still running


@pytest.mark.asyncio
async def test_events_of_a_thread_and_across_runs_page_through_in_order(store: EventStore) -> None:
    await _runs_of_three_people(store)
    collected: list[StreamEvent] = []
    cursor = None
    while True:
        page = await store.events("alice", thread_id="thread-alice-0", limit=4, cursor=cursor)
        collected += page.events
        if (cursor := page.cursor) is None:
            break
    assert [e.id for e in collected] == [f"run00:{s}" for s in range(1, 11)] + [f"run06:{s}" for s in range(1, 12)]

    across: list[StreamEvent] = []
    cursor = None
    while True:
        page = await store.search(ANYONE, types=["llm", "done"], since=T0 + 200, until=T0 + 700, limit=3, cursor=cursor)
        across += page.events
        if (cursor := page.cursor) is None:
            break
    assert [e.id for e in across] == [
        "run02:4",
        "run02:11",
        "run03:4",
        "run03:11",
        "run04:4",
        "run05:4",
        "run05:11",
        "run06:4",
        "run06:11",
    ]
    assert [e.ts for e in across] == sorted(e.ts for e in across)
    tools = await store.search("alice", agent="research/tools")
    assert {e.run_id for e in tools.events} == {"run00", "run03", "run06", "run09"}


@pytest.mark.asyncio
async def test_the_causation_chain_of_a_run_or_an_event_both_ways(store: EventStore) -> None:
    def run(run_id: str, cause: str | None, ts: float) -> list[StreamEvent]:
        return [
            StatusEvent(run_id=run_id, seq=1, ts=ts, status="started", graph="g", causation_id=cause),
            CustomEvent(run_id=run_id, seq=2, ts=ts + 1, name="multiagent:sync", data={"phase": "requested"}),
            DoneEvent(run_id=run_id, seq=3, ts=ts + 2, status="success"),
        ]

    await write_all(
        store,
        run("a", None, T0)
        + run("b", "a:2", T0 + 10)
        + run("c", "b:2", T0 + 20)
        + run("d", "a", T0 + 30)
        + run("e", "c:2", T0 + 40),
        lookup=meta_of({"a": "p", "b": "p", "c": "p", "d": "p", "e": "q"}),
    )
    chain = await store.causation("p", run_id="a")
    assert [(link.run.run_id, link.depth, link.via) for link in chain.effects] == [
        ("b", 1, "a:2"),
        ("d", 1, "a"),
        ("c", 2, "b:2"),
    ]  # e is q's: the chain stops there
    assert chain.causes == []
    up = await store.causation("p", run_id="c")
    assert [(link.run.run_id, link.depth, link.via) for link in up.causes] == [("b", 1, "b:2"), ("a", 2, "a:2")]
    by_event = await store.causation("p", event_id="a:2")
    assert by_event.event is not None and by_event.event.type == "custom"
    assert [(link.run.run_id, link.depth) for link in by_event.effects] == [("b", 1), ("c", 2)]
    started = await store.causation("p", event_id="c:1")
    assert [link.run.run_id for link in started.causes] == ["b", "a"]
    with pytest.raises(RunNotFoundError):
        await store.causation("p", event_id="a:99")
    with pytest.raises(InvalidArgumentError):
        await store.causation("p", event_id="nonsense")


@pytest.mark.asyncio
async def test_overflow_is_dropped_and_counted_and_what_waited_is_written_later(store: EventStore) -> None:
    drops: list[str] = []
    writer = HistoryWriter(store, buffer_size=6, batch_size=2, on_drop=drops.append)
    events = every_type("r1")
    accepted = [writer.add(event) for event in events]  # the writer is not started: nothing leaves the buffer
    assert accepted == [True] * 6 + [False] * 5
    assert writer.dropped == 5 and drops == ["store_full"] * 5 and writer.pending == 6
    await writer.start()
    assert await writer.flush(10)
    await writer.close(close_store=False)
    assert [e.seq for e in (await store.events(None, run_id="r1")).events] == [1, 2, 3, 4, 5, 6]
    assert (await store.run("r1", None)).status == "running"


@pytest.mark.asyncio
async def test_retention_deletes_finished_runs_older_than_it_in_batches_and_keeps_the_rest(store: EventStore) -> None:
    now = time.time()
    old = [e for i in range(3) for e in every_type(f"old{i}", ts=now - 10 * 86400, thread="t-old")]
    running = every_type("old-running", ts=now - 10 * 86400)[:-1]
    recent = every_type("recent", ts=now - 3600)
    writer = HistoryWriter(store, retention=7 * 86400, retention_interval=3600)
    await writer.start()
    for event in old + running + recent:
        writer.add(event)
    assert await writer.flush(10)
    assert await writer.sweep() == 3
    await writer.close(close_store=False)
    assert writer.deleted >= 3
    left = await store.runs(ANYONE)
    assert sorted(r.run_id for r in left.runs) == ["old-running", "recent"]
    with pytest.raises(RunNotFoundError):
        await store.events(ANYONE, run_id="old0")
    assert (await store.search(ANYONE, until=now - 5 * 86400)).events == running
    assert await store.delete_finished(now, limit=1) == 1
    assert [r.run_id for r in (await store.runs(ANYONE)).runs] == ["old-running"]


@pytest.mark.asyncio
async def test_a_character_the_database_cannot_store_costs_one_event_never_the_batch(store: EventStore) -> None:
    good = every_type("r1")
    with_nul = TokenEvent(run_id="r2", seq=1, ts=T0, message_id="m", text="a\x00b", thread_id="t2")
    bad = TokenEvent(run_id="bad\x00run", seq=1, ts=T0, message_id="m", text="x")  # PostgreSQL text cannot hold NUL
    drops: list[str] = []
    writer = await write_all(store, [*good[:5], with_nul, bad, *good[5:]], on_drop=drops.append)
    assert (await store.events(None, run_id="r1")).events == good
    assert (await store.events(None, run_id="r2")).events == [with_nul]
    if store.backend == "postgres":
        assert writer.dropped == 1 and drops == ["store_refused"]
    else:  # SQLite stores it
        assert writer.dropped == 0 and (await store.events(None, run_id="bad\x00run")).events == [bad]


@pytest.mark.asyncio
async def test_readers_cancelled_mid_query_never_cost_the_pool_a_connection(postgres_dsn: str) -> None:
    """As an SSE client leaving does: anyio cancels every await after that, the driver's clean-up included."""
    import anyio

    store = PostgresStore(postgres_dsn, pool_size=2, timeout=5.0)
    await store.open()
    try:
        events = every_type("r1")
        await write_all(store, events)
        moments = random.Random(7)
        for _ in range(1000):
            with anyio.move_on_after(moments.random() * 0.004):
                await store.events(ANYONE, run_id="r1")
        pages = await asyncio.gather(*(store.events(ANYONE, run_id="r1") for _ in range(6)))
        assert all(page.events == events for page in pages)
    finally:
        await store.close()
