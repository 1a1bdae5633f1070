"""The event store on both backends: a SQLite file in the test's folder and a PostgreSQL database of the test's own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from kiki_events.history import EventStore, PostgresStore, SqliteStore

__all__ = ["store"]


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    """An open store, once on each backend (closed after the test)."""
    made: EventStore
    if request.param == "sqlite":
        made = SqliteStore(tmp_path / "history" / "events.sqlite")
    else:
        made = PostgresStore(request.getfixturevalue("postgres_dsn"))
    await made.open()
    try:
        yield made
    finally:
        await made.close()
