"""History kept by a running runtime: across a restart, by two nodes in one PostgreSQL database,
through a database outage mid-run, and counted in the metrics when it overflows."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from kiki_events.config import Settings
from kiki_events.events import StreamEvent
from kiki_events.history import ANYONE, EventStore
from kiki_events.runtime import KikiRuntime
from kiki_events.sinks.history import HistorySink
from kiki_events.transports import MemoryHub
from tests.servers import Gate, async_wait_for, gated_graph
from tests.tcp_proxy import CuttableProxy

TASK = {"messages": [{"role": "user", "content": "Research event stores"}]}


def store_settings(node: str, **store: Any) -> Settings:
    return Settings.from_mapping({"node": node, "store": {"enabled": True, "flush_interval": "2ms", **store}})


def writer_of(runtime: KikiRuntime) -> Any:
    sink = next(s for s in runtime.sinks.sinks if isinstance(s, HistorySink))
    return sink.writer


async def stored_events(store: EventStore, run_id: str) -> list[StreamEvent]:
    page = await store.events(ANYONE, run_id=run_id, limit=10_000)
    assert page.cursor is None
    return page.events


@pytest.mark.asyncio
async def test_a_restarted_runtime_keeps_its_history_in_the_sqlite_file(
    tmp_path: Path, research_team: ModuleType
) -> None:
    settings = store_settings("n1", path=str(tmp_path / "history.sqlite"))
    graphs = {"team": research_team.build_graph(token_delay=0.0)}
    async with KikiRuntime(settings, graphs=graphs) as runtime:
        handle = await runtime.start_run("team", TASK, thread_id="t1", principal="alice")
        assert await handle.task == "success"
        live = [event async for event in runtime.follow(handle.run_id)]
    assert live[-1].type == "done"

    async with KikiRuntime(settings, graphs=graphs) as again:
        assert again.history is not None
        assert await stored_events(again.history, handle.run_id) == live
        run = await again.history.run(handle.run_id, "alice")
        assert (run.graph, run.thread_id, run.principal, run.node, run.status) == (
            "team",
            "t1",
            "alice",
            "n1",
            "success",
        )
        assert run.events == run.last_seq == len(live)
        assert run.usage == live[-1].usage  # type: ignore[union-attr]
        assert run.llm_calls == sum(e.type == "llm" for e in live) > 0
        assert run.tool_calls == sum(e.type == "tool_result" for e in live) > 0
        assert "research/researcher" in run.agents
        assert (await again.history.runs("bob")).runs == []
        handle2 = await again.start_run("team", TASK, thread_id="t1", principal="alice")
        assert await handle2.task == "success"
        assert await writer_of(again).flush(10)
        assert [r.run_id for r in (await again.history.runs("alice", thread_id="t1")).runs] == [
            handle2.run_id,
            handle.run_id,
        ]


@pytest.mark.asyncio
async def test_two_nodes_write_one_postgresql_history_and_relayed_copies_are_stored_once(
    postgres_dsn: str, research_team: ModuleType
) -> None:
    hub = MemoryHub()
    graphs = {"team": research_team.build_graph(token_delay=0.0)}
    a = KikiRuntime(store_settings("a", backend="postgres", dsn=postgres_dsn, scope="all"), graphs=graphs, hub=hub)
    b = KikiRuntime(store_settings("b", backend="postgres", dsn=postgres_dsn), graphs=graphs, hub=hub)
    async with a, b:
        run_a = await a.start_run("team", TASK, principal="alice")
        run_b = await b.start_run("team", TASK, principal="bob")
        assert await run_a.task == "success" and await run_b.task == "success"
        # Node a follows b's run: the events reach a's bus and its sink (scope: all) writes them too.
        followed = [event async for event in a.follow(run_b.run_id) if event.seq > 0]
        for runtime in (a, b):
            assert await writer_of(runtime).flush(10)
        assert a.history is not None and b.history is not None
        runs = {run.run_id: run for run in (await a.history.runs(ANYONE)).runs}
        assert set(runs) == {run_a.run_id, run_b.run_id}
        assert (runs[run_a.run_id].node, runs[run_b.run_id].node) == ("a", "b")
        assert (runs[run_a.run_id].principal, runs[run_b.run_id].principal) == ("alice", "bob")
        assert await stored_events(b.history, run_b.run_id) == followed
        assert runs[run_b.run_id].events == len(followed)
        assert writer_of(a).written >= len(followed)  # a wrote them as well: stored once all the same
        assert [r.run_id for r in (await b.history.runs("alice")).runs] == [run_a.run_id]


@pytest.mark.asyncio
async def test_postgresql_down_mid_run_then_back_loses_nothing(postgres_dsn: str, research_team: ModuleType) -> None:
    parts = conninfo_to_dict(postgres_dsn)
    with CuttableProxy(int(parts.get("port") or 5432)) as proxy:
        dsn = make_conninfo(**{**parts, "host": "127.0.0.1", "port": str(proxy.port)})
        gate = Gate()
        settings = store_settings("n1", backend="postgres", dsn=dsn, batch_size=50)
        async with KikiRuntime(settings, graphs={"gated": gated_graph(research_team, gate, tokens=300)}) as runtime:
            writer = writer_of(runtime)
            handle = await runtime.start_run("gated", TASK, principal="alice")
            await async_wait_for(lambda: gate.reached.is_set() and writer.pending == 0, timeout=20)
            written_before = writer.written
            proxy.down()
            gate.open()
            assert await handle.task == "success"
            await async_wait_for(lambda: writer.failures > 0, timeout=20)
            assert writer.pending > 0
            proxy.up()
            assert await writer.flush(30)
            assert runtime.history is not None
            live = [event async for event in runtime.follow(handle.run_id)]
            assert await stored_events(runtime.history, handle.run_id) == live
            assert writer.written > written_before and writer.dropped == 0
            assert (await runtime.history.run(handle.run_id, "alice")).status == "success"


@pytest.mark.asyncio
async def test_overflow_while_the_database_is_down_is_counted_in_the_metrics(
    postgres_dsn: str, research_team: ModuleType
) -> None:
    parts = conninfo_to_dict(postgres_dsn)
    with CuttableProxy(int(parts.get("port") or 5432)) as proxy:
        proxy.down()
        dsn = make_conninfo(**{**parts, "host": "127.0.0.1", "port": str(proxy.port)})
        settings = store_settings("n1", backend="postgres", dsn=dsn, buffer_size=20, batch_size=10)
        async with KikiRuntime(settings, graphs={"team": research_team.build_graph(token_delay=0.0)}) as runtime:
            handle = await runtime.start_run("team", TASK)
            assert await handle.task == "success"  # the graph never noticed
            writer = writer_of(runtime)
            assert writer.pending == 20 and writer.dropped > 0
            text = runtime.metrics_text().decode()
            assert f'kiki_events_dropped_total{{reason="store_full"}} {float(writer.dropped)}' in text
            proxy.up()
            assert await writer.flush(30)
            assert runtime.history is not None
            assert [e.seq for e in await stored_events(runtime.history, handle.run_id)] == list(range(1, 21))


@pytest.mark.asyncio
async def test_the_default_settings_keep_no_history_and_write_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, research_team: ModuleType
) -> None:
    monkeypatch.chdir(tmp_path)
    async with KikiRuntime(Settings(), graphs={"team": research_team.build_graph(token_delay=0.0)}) as runtime:
        assert runtime.history is None and "history" not in runtime.sinks.names()
        handle = await runtime.start_run("team", TASK)
        assert await handle.task == "success"
    assert os.listdir(tmp_path) == []
