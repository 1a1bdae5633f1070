"""The PostgreSQL event store: psycopg 3 (async) through a connection pool.

Several nodes can share one database: writes are idempotent (``ON CONFLICT``), and
migrations take an advisory lock so two nodes starting together migrate once.
A batch's events go in one ``INSERT … SELECT FROM json_array_elements(…)`` with
the whole batch as one JSON parameter (one statement, one round trip, and no
per-value adaptation on the client, whatever the batch's size). ``psycopg`` and
``psycopg_pool`` come with the ``postgres`` extra; they are imported when the store
is made.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..core.tasks import stop_tasks
from ..errors import MissingDependencyError, StoreError
from .base import Batch
from .migrations import SCHEMA_TABLE, migrations, statements
from .queries import SqlStore
from .sql import AGENT_INSERT, EVENT_CONFLICT, RUN_UPSERT, THREAD_INSERT, EventRow

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

__all__ = ["PostgresStore"]

_T = TypeVar("_T")

_CONFLICT = EVENT_CONFLICT.replace("?", "%s")
_EVENTS_JSON = (
    "INSERT INTO events (run_id, seq, ts, type, agent, body, span) "
    "SELECT e->>0, (e->>1)::bigint, (e->>2)::float8, e->>3, e->>4, convert_to((e->5)::text, 'UTF8'), "
    "(e->>6)::int FROM jsonb_array_elements(%s::jsonb) AS e " + _CONFLICT
)
"""A batch's event rows as one JSON parameter: ``[[run_id, seq, ts, type, agent, {body}, span], …]``,
each element parsed once (a body comes back with the same fields, written ``jsonb``'s
way; numbers are kept exactly)."""
_EVENTS_UNNEST = (
    "INSERT INTO events (run_id, seq, ts, type, agent, body, span) "
    "SELECT * FROM unnest(%s::text[], %s::bigint[], %s::float8[], %s::text[], %s::text[], %s::bytea[], %s::int[]) "
    + _CONFLICT
)
"""A batch's event rows as seven arrays: for a batch holding ``\\u0000``, which ``jsonb`` refuses."""


def _events_json(rows: Sequence[EventRow]) -> str:
    """The parameter of :data:`_EVENTS_JSON` for ``rows`` (one join, no per-value adaptation)."""
    dumps = json.dumps
    return (
        "["
        + ",".join(
            f"[{dumps(run_id)},{seq},{ts!r},{dumps(kind)},{dumps(agent)},{body.decode()},{span}]"
            for run_id, seq, ts, kind, agent, body, span in rows
        )
        + "]"
    )


_LOCK = "SELECT pg_advisory_xact_lock(7345012699)"
"""Serialises migrations of nodes starting at once (the key is this library's own)."""


def _events_insert(rows: Sequence[EventRow]) -> tuple[str | None, Sequence[Any]]:
    """The statement writing ``rows`` and its parameters (``None`` for no rows)."""
    if not rows:
        return None, ()
    text = _events_json(rows)
    if "\\u0000" not in text:
        return _EVENTS_JSON, (text,)
    return _EVENTS_UNNEST, [list(column) for column in zip(*rows, strict=True)]


def _retryable(exc: Exception) -> bool:
    """Whether a failed write may succeed later (not when the server refused the data itself)."""
    from psycopg import errors

    return not isinstance(exc, errors.DataError | errors.IntegrityError)


def _dialect(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresStore(SqlStore):
    """An :class:`~kiki_events.history.base.EventStore` in the PostgreSQL database ``dsn``.

    Args:
        dsn: a libpq connection string or URL.
        pool_size: most connections open at once.
        timeout: seconds an operation waits for a connection before failing.
    """

    backend = "postgres"
    same = "IS NOT DISTINCT FROM"

    def __init__(self, dsn: str, *, pool_size: int = 10, timeout: float = 15.0) -> None:
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError as exc:  # pragma: no cover - the extra is installed in tests
            raise MissingDependencyError(
                "store.backend: postgres needs psycopg 3 and psycopg_pool: pip install 'kiki-events[postgres]'"
            ) from exc
        self._dsn = dsn
        self.pool_size = pool_size
        self.timeout = timeout
        self._pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]] | None = None
        self._running: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return "PostgresStore(<dsn>)"

    async def open(self) -> None:
        """Open the pool and apply the migrations the database lacks.

        Raises:
            StoreError: the database cannot be reached or its schema is newer than this library's.
        """
        import psycopg
        from psycopg_pool import AsyncConnectionPool

        if self._pool is not None:
            return
        pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]] = AsyncConnectionPool(
            self._dsn,
            min_size=0,
            max_size=self.pool_size,
            open=False,
            timeout=self.timeout,
            check=AsyncConnectionPool.check_connection,
            kwargs={"connect_timeout": max(1, int(min(self.timeout, 5.0)))},
            name="kiki-history",
        )
        await pool.open(wait=False)
        try:
            async with pool.connection() as conn, conn.transaction():
                await self._migrate(conn)
        except psycopg.Error as exc:
            await pool.close()
            raise StoreError(f"cannot open the event store's database: {exc}") from exc
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    @staticmethod
    async def _migrate(conn: AsyncConnection[tuple[Any, ...]]) -> None:
        available = migrations("postgres")
        await conn.execute(_LOCK)
        await conn.execute(SCHEMA_TABLE)
        cursor = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        row = await cursor.fetchone()
        current = int(row[0]) if row is not None else 0
        if current > len(available):
            raise StoreError(
                f"the event store's database is at schema version {current}, newer than this library's {len(available)}"
            )
        for version, name, sql in available[current:]:
            for statement in statements(sql):
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_version VALUES (%s, %s, %s)", (version, name, time.time()))

    async def close(self) -> None:
        """Let the statements under way finish (for up to 5 s), then close the pool (idempotent)."""
        await stop_tasks(list(self._running), grace=5.0)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _apart(self, work: Coroutine[Any, Any, _T]) -> _T:
        """``work``'s result, ``work`` running in a task of its own.

        A caller cancelled mid-statement (an SSE client gone: anyio cancels every await
        after that, psycopg's clean-up included) is released at once, while the statement
        finishes in its task and hands its connection back to the pool whole. Cancelled
        inside, psycopg's clean-up is cancelled too and the connection comes back broken or
        not at all (seen as requests that waited out the pool's timeout: a 503).
        """
        task = asyncio.get_running_loop().create_task(work)
        self._running.add(task)
        task.add_done_callback(self._settled)
        return await asyncio.shield(task)

    def _settled(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here too: the caller may be gone

    def _require(self) -> AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]]:
        if self._pool is None:
            raise StoreError("the event store is not open")
        return self._pool

    async def _fetch(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        return await self._apart(self._fetch_now(sql, params))

    async def _fetch_now(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        import psycopg

        pool = self._require()
        try:
            async with pool.connection() as conn:
                cursor = await conn.execute(_dialect(sql), tuple(params))
                return await cursor.fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"event store query failed: {exc}") from exc

    async def _transaction(self, work: Sequence[tuple[str, Sequence[Sequence[object]]]]) -> None:
        await self._apart(self._transaction_now(work))

    async def _transaction_now(self, work: Sequence[tuple[str, Sequence[Sequence[object]]]]) -> None:
        import psycopg

        pool = self._require()
        try:
            async with pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
                for sql, rows in work:
                    if rows:
                        await cursor.executemany(_dialect(sql), rows)
        except psycopg.Error as exc:
            raise StoreError(f"event store write failed: {exc}", retryable=_retryable(exc)) from exc

    async def write(self, batch: Batch) -> None:
        """Store ``batch`` in one transaction; its events in one statement."""
        await self._apart(self._write_now(batch))

    async def _write_now(self, batch: Batch) -> None:
        import psycopg

        pool = self._require()
        statement, params = _events_insert(batch.events)
        try:
            async with pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
                small = ((THREAD_INSERT, batch.threads), (RUN_UPSERT, batch.runs), (AGENT_INSERT, batch.agents))
                for sql, rows in small:
                    if rows:
                        await cursor.executemany(_dialect(sql), rows)
                if statement is not None:
                    await cursor.execute(statement, params)
        except psycopg.Error as exc:
            raise StoreError(f"event store write failed: {exc}", retryable=_retryable(exc)) from exc
