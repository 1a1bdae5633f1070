"""The event store's settings, migrations, writer and sink: what does not need both backends."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from kiki_events.config import Settings
from kiki_events.core.store import RunStore
from kiki_events.errors import ConfigError, StoreError
from kiki_events.events import StatusEvent, TokenEvent
from kiki_events.history import HistoryWriter, SqliteStore
from kiki_events.sinks.history import HistorySink
from tests.servers import async_wait_for
from tests.test_history import T0, every_type, write_all


@pytest.mark.asyncio
async def test_reopening_migrates_nothing_and_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    store = SqliteStore(path)
    await store.open()
    await write_all(store, every_type("r1"))
    await store.close()
    again = SqliteStore(path)
    await again.open()
    assert await again.schema_version() == 3
    assert (await again.run("r1", None)).events == 11
    await again._transaction([("INSERT INTO schema_version VALUES (?, ?, ?)", [(99, "future", 0.0)])])
    await again.close()
    with pytest.raises(StoreError, match="schema version 99, newer than this library's 3"):
        await SqliteStore(path).open()


def test_the_store_section_is_off_by_default_and_bad_values_name_their_key() -> None:
    assert Settings().store.enabled is False
    ok = Settings.from_mapping({"store": {"enabled": True, "backend": "postgres", "dsn": "postgresql://x/y"}})
    assert ok.store.backend == "postgres" and "postgresql" not in repr(ok.store)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"backend": "mysql"}, "store.backend"),
        ({"backend": "postgres"}, "store.dsn"),
        ({"dsn": "postgresql://x/y"}, "store.dsn"),
        ({"batch_size": 0}, "store.batch_size"),
        ({"flush_interval": "5s"}, "store.flush_interval"),
        ({"buffer_size": 10, "batch_size": 20}, "store.batch_size"),
        ({"retention_days": -1}, "store.retention_days"),
        ({"scope": "some"}, "store.scope"),
        ({"path": " "}, "store.path"),
    ]
    for section, key in bad:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            Settings.from_mapping({"store": section})


@pytest.mark.asyncio
async def test_a_sqlite_file_locked_by_another_process_is_written_once_the_lock_is_released(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "locked.sqlite", busy_timeout=0.05)
    writer = HistoryWriter(store, batch_size=4)
    await writer.start()
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    events = every_type("r1")
    for event in events:
        writer.add(event)
    await async_wait_for(lambda: writer.failures > 0, timeout=10)
    assert writer.pending == len(events)
    other.execute("COMMIT")
    other.close()
    assert await writer.flush(10)
    assert (await store.events(None, run_id="r1")).events == events
    await writer.close()


@pytest.mark.asyncio
async def test_an_event_no_row_can_hold_is_dropped_once_however_often_its_batch_is_retried(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "locked.sqlite", busy_timeout=0.05)
    drops: list[str] = []
    writer = HistoryWriter(store, on_drop=drops.append)
    await writer.start()
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # the batch fails, and is taken again, until the lock is released
    events = every_type("r1")
    broken = TokenEvent(run_id="r1", seq=len(events) + 1, ts=events[-1].ts, message_id="m9", text="\ud800")
    for event in [*events, broken]:
        writer.add(event)
    await async_wait_for(lambda: writer.failures > 2, timeout=10)
    other.execute("COMMIT")
    other.close()
    assert await writer.flush(10)
    assert (await store.events(None, run_id="r1")).events == events
    assert (writer.dropped, drops, writer.written) == (1, ["store_refused"], len(events))
    await writer.close()


def test_the_sink_stores_this_nodes_runs_and_never_connection_notices() -> None:
    runs = RunStore()
    runs.create("mine", node="a", principal="alice")
    runs.create("theirs", node="b", principal="bob")
    local = HistorySink(HistoryWriter(SqliteStore("unused.sqlite")), node="a", lookup=runs.peek)
    every = HistorySink(HistoryWriter(SqliteStore("unused.sqlite")), node="a", scope="all", lookup=runs.peek)
    notice = StatusEvent(run_id="mine", seq=0, ts=T0, status="gap", first_seq=3)
    for sink in (local, every):
        for event in [notice, *every_type("mine"), *every_type("theirs"), *every_type("unregistered")]:
            sink(event)
    # A run the run store does not know is judged by its events' node (n1 here: another node's).
    assert [e.run_id for e in local.writer._buffer] == ["mine"] * 11
    assert [e.run_id for e in every.writer._buffer] == ["mine"] * 11 + ["theirs"] * 11 + ["unregistered"] * 11
