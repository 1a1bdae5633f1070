"""The SQLite event store: one file, WAL mode, one writer thread and one reader thread.

The standard library's ``sqlite3`` blocks, so every statement runs in a thread of
the store's own: writes in one (one transaction per batch, so there is one writer),
reads in another (WAL lets them read while a batch is written). The file and its
folder are created when missing.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..errors import StoreError
from .base import Batch
from .migrations import SCHEMA_TABLE, migrations, statements
from .queries import SqlStore
from .sql import AGENT_INSERT, EVENT_CONFLICT, RUN_UPSERT, THREAD_INSERT

__all__ = ["SqliteStore"]

_T = TypeVar("_T")

_ROWS = 500
"""Rows per ``INSERT`` statement (7 parameters each: well under SQLite's 32,766)."""


@functools.lru_cache(maxsize=8)
def _events_insert(rows: int) -> str:
    """One ``INSERT`` of ``rows`` events: one statement step, so the write thread gives up
    and takes back the interpreter lock once per statement, not once per event."""
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows)
    columns = "run_id, seq, ts, type, agent, body, span"
    return f"INSERT INTO events ({columns}) VALUES {values} {EVENT_CONFLICT}"


class SqliteStore(SqlStore):
    """An :class:`~kiki_events.history.base.EventStore` in the SQLite file ``path``.

    Args:
        path: the database file (created with its folder when missing).
        busy_timeout: seconds a statement waits for a lock another process holds.
    """

    backend = "sqlite"
    same = "IS"

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._write_thread: ThreadPoolExecutor | None = None
        self._read_thread: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    async def open(self) -> None:
        """Open the file (WAL mode) and apply the migrations it lacks.

        Raises:
            StoreError: the file cannot be opened or its schema is newer than this library's.
        """
        if self._writer is not None:
            return
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="kiki-history-write")
        self._read_thread = ThreadPoolExecutor(1, thread_name_prefix="kiki-history-read")
        try:
            self._writer = await self._in(self._write_thread, self._connect)
            await self._in(self._write_thread, self._migrate)
            self._reader = await self._in(self._read_thread, self._connect)
        except BaseException:
            await self.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=OFF")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the event store {str(self.path)!r}: {exc}") from exc
        return conn

    def _migrate(self) -> None:
        conn = self._writer
        assert conn is not None
        available = migrations("sqlite")
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(SCHEMA_TABLE)
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            if current > len(available):
                raise StoreError(
                    f"the event store {str(self.path)!r} is at schema version {current}, "
                    f"newer than this library's {len(available)}"
                )
            for version, name, sql in available[current:]:
                for statement in statements(sql):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version VALUES (?, ?, ?)", (version, name, time.time()))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise StoreError(f"cannot migrate the event store {str(self.path)!r}: {exc}") from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        """Close both connections and threads (idempotent)."""
        for pool, name in ((self._read_thread, "_reader"), (self._write_thread, "_writer")):
            conn = getattr(self, name)
            setattr(self, name, None)
            if pool is not None:
                if conn is not None:
                    await self._in(pool, conn.close)
                pool.shutdown(wait=False)
        self._read_thread = self._write_thread = None

    @staticmethod
    async def _in(pool: ThreadPoolExecutor, call: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    # -- the two operations the shared SQL needs -------------------------------------------
    async def _fetch(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        conn, pool = self._reader, self._read_thread
        if conn is None or pool is None:
            raise StoreError("the event store is not open")

        def fetch() -> list[tuple[Any, ...]]:
            try:
                return conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"event store query failed: {exc}") from exc

        return await self._in(pool, fetch)

    async def write(self, batch: Batch) -> None:
        """Store ``batch`` in one transaction; its event rows in statements of up to 500 rows."""
        work: list[tuple[str, Sequence[Sequence[object]]]] = [
            (THREAD_INSERT, batch.threads),
            (RUN_UPSERT, batch.runs),
            (AGENT_INSERT, batch.agents),
        ]
        events = batch.events
        for start in range(0, len(events), _ROWS):
            chunk = events[start : start + _ROWS]
            work.append((_events_insert(len(chunk)), [list(itertools.chain.from_iterable(chunk))]))
        await self._transaction(work)

    async def _transaction(self, work: Sequence[tuple[str, Sequence[Sequence[object]]]]) -> None:
        conn, pool = self._writer, self._write_thread
        if conn is None or pool is None:
            raise StoreError("the event store is not open")

        def run() -> None:
            try:
                conn.execute("BEGIN IMMEDIATE")
                for sql, rows in work:
                    if rows:
                        conn.executemany(sql, rows)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                # Locked, busy, full or unreadable may pass; refused data never will.
                retryable = isinstance(exc, sqlite3.OperationalError)
                raise StoreError(f"event store write failed: {exc}", retryable=retryable) from exc

        await self._in(pool, run)
