"""The checkpointer ``runs.checkpointer`` asks for: where threads keep their state.

:func:`open_checkpointer` opens it when the runtime starts; the runtime gives it
to every served graph compiled without a checkpointer
(:meth:`.GraphRegistry.use_checkpointer`) and closes it when it stops::

    memory    → LangGraph's InMemorySaver (this process; lost at exit)
    sqlite    → AsyncSqliteSaver on ``path``      (extra ``kiki-events[sqlite]``)
    postgres  → AsyncPostgresSaver on a pool of ``pool_size`` connections to ``dsn``
                (extra ``kiki-events[postgres]``), its tables created or migrated at start

The database packages are imported only for their kind.

Each run records its principal in its checkpoints' metadata (``kiki_principal``, set
by the run manager after the client's metadata, so a client cannot choose it):
:func:`recorded_owner` reads it back, so a thread's owner outlives a restart of a
node whose checkpointer does.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointerError, ConfigError, MissingDependencyError
from ..redaction import redact_text

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver

    from ..config import CheckpointerSettings

__all__ = ["OWNER_KEY", "open_checkpointer", "recorded_owner"]

_SETUP_LOCK = 0x6B696B69_63707400
"""The PostgreSQL advisory lock key the checkpointer's table setup runs under ("kikicpt")."""

OWNER_KEY = "kiki_principal"
"""The checkpoint metadata key holding the principal of the run that wrote it."""


async def open_checkpointer(settings: CheckpointerSettings, stack: AsyncExitStack) -> BaseCheckpointSaver[Any]:
    """The checkpointer of ``settings``, open; ``stack`` closes it.

    Raises:
        MissingDependencyError: the kind's package is not installed (the message names the extra).
        ConfigError: the SQLite file's directory does not exist.
        CheckpointerError: the database cannot be opened or its tables cannot be set up.
    """
    if settings.kind == "sqlite":
        return await _sqlite(settings.path or "", stack)
    if settings.kind == "postgres":
        return await _postgres(settings.dsn or "", settings.pool_size, stack)
    from langgraph.checkpoint.memory import InMemorySaver

    return InMemorySaver()


def _missing(kind: str, exc: ImportError) -> MissingDependencyError:
    return MissingDependencyError(
        f"runs.checkpointer.kind: {kind} needs the {kind} extra: pip install 'kiki-events[{kind}]' ({exc})"
    )


async def _sqlite(path: str, stack: AsyncExitStack) -> BaseCheckpointSaver[Any]:
    try:
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    except ImportError as exc:
        raise _missing("sqlite", exc) from exc
    file = _sqlite_file(path)
    try:
        saver = await stack.enter_async_context(AsyncSqliteSaver.from_conn_string(file))
        await saver.setup()
    except Exception as exc:
        raise CheckpointerError(f"cannot open the SQLite checkpointer {path!r}: {_raised(exc)}") from exc
    return saver


def _sqlite_file(path: str) -> str:
    """``path`` with ``~`` expanded; its directory must exist (SQLite creates only the file)."""
    if path == ":memory:":
        return path
    file = Path(path).expanduser()
    if not file.parent.is_dir():
        raise ConfigError(f"runs.checkpointer.path: the directory of {path!r} does not exist")
    return str(file)


async def _postgres(dsn: str, pool_size: int, stack: AsyncExitStack) -> BaseCheckpointSaver[Any]:
    try:
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg import AsyncConnection
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool
    except ImportError as exc:
        raise _missing("postgres", exc) from exc
    # Runs of several threads read and write checkpoints at once: one connection each.
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=pool_size,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        open=False,
    )
    try:
        await pool.open(wait=True, timeout=10.0)
        stack.push_async_callback(pool.close)
        saver = AsyncPostgresSaver(conn=pool)
        # LangGraph's migrations are not safe to run twice at once: nodes starting together
        # take turns (a lock on a connection of its own, so a pool of one is not held up).
        async with await AsyncConnection.connect(dsn, autocommit=True) as lock:
            await _take_turn(lock)
            await saver.setup()
    except Exception as exc:
        await pool.close()
        # The message may quote the DSN with its password.
        raise CheckpointerError(f"cannot open the PostgreSQL checkpointer: {_raised(exc)}") from None
    return saver


async def _take_turn(conn: Any, timeout: float = 120.0) -> None:
    """Hold the setup lock on ``conn`` (released when it closes).

    Polled with ``pg_try_advisory_lock``, never waited for in one statement: the setup
    creates indexes ``CONCURRENTLY``, which waits for every statement running meanwhile,
    so a node blocked in ``pg_advisory_lock`` would hold up the node it waits for.
    """
    deadline = time.monotonic() + timeout
    pause = 0.05
    while True:
        row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (_SETUP_LOCK,))).fetchone()
        if row is not None and row[0]:
            return
        if time.monotonic() > deadline:
            raise CheckpointerError(f"another node kept setting up the checkpointer's tables for {timeout:.0f}s")
        await asyncio.sleep(pause)
        pause = min(pause * 2, 1.0)


def _raised(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {redact_text(str(exc))}"


async def recorded_owner(saver: BaseCheckpointSaver[Any], thread_id: str) -> tuple[bool, str | None]:
    """``(True, principal)`` when ``thread_id``'s latest checkpoint names the principal of its run,
    else ``(False, None)`` (no checkpoint, or one written without an owner).

    Raises:
        CheckpointerError: the checkpointer cannot be read.
    """
    try:
        found = await saver.aget_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
    except Exception as exc:
        reason = redact_text(str(exc))
        raise CheckpointerError(f"cannot read the checkpoints of thread {thread_id!r}: {reason}") from exc
    if found is None or OWNER_KEY not in (found.metadata or {}):
        return False, None
    owner = found.metadata[OWNER_KEY]  # type: ignore[literal-required]
    return True, owner if isinstance(owner, str) else None
