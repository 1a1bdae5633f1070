"""History: a durable store of runs and their events, and the queries on it.

The bus feeds it through a sink (:mod:`kiki_events.sinks.history`): a
:class:`HistoryWriter` buffers events and writes them in batches to an
:class:`EventStore` — :class:`SqliteStore` (one file, the default) or
:class:`PostgresStore` (one database several nodes may share) — whose schema the
versioned SQL files of :mod:`.migrations` create and migrate. The store's query
methods (runs, events of a run or thread, events across runs, causation chains,
statistics) take
the principal who asks and apply the ownership rules of streams.

Use: ``create_store(settings.store)`` for a store from the settings; with
``store.enabled`` the runtime builds, starts and closes one, and offers it as
:attr:`KikiRuntime.history <kiki_events.runtime.KikiRuntime.history>`.
Reference: ``docs/history.md``.
"""

from __future__ import annotations

from ..config import StoreSettings
from .base import (
    ANYONE,
    Anyone,
    Batch,
    Causation,
    EventPage,
    EventStore,
    Link,
    Principal,
    RunPage,
    StoredRun,
    StoredStatus,
)
from .postgres import PostgresStore
from .replay import republish
from .sqlite import SqliteStore
from .stats import STATS_KEYS, RunStatuses, Spread, Stats, StatsCost, StatsGroup, StatsKey, parse_statuses
from .tally import RunMeta
from .writer import HistoryWriter

__all__ = [
    "ANYONE",
    "STATS_KEYS",
    "Anyone",
    "Batch",
    "Causation",
    "EventPage",
    "EventStore",
    "HistoryWriter",
    "Link",
    "PostgresStore",
    "Principal",
    "RunMeta",
    "RunPage",
    "RunStatuses",
    "Spread",
    "SqliteStore",
    "Stats",
    "StatsCost",
    "StatsGroup",
    "StatsKey",
    "StoredRun",
    "StoredStatus",
    "create_store",
    "create_writer",
    "parse_statuses",
    "republish",
]


def create_store(settings: StoreSettings) -> EventStore:
    """The (unopened) store ``settings`` describe: SQLite at ``path`` or PostgreSQL at ``dsn``."""
    if settings.backend == "postgres":
        return PostgresStore(str(settings.dsn), pool_size=settings.pool_size)
    return SqliteStore(settings.path)


def create_writer(settings: StoreSettings, store: EventStore | None = None, **options: object) -> HistoryWriter:
    """A :class:`HistoryWriter` sized by ``settings`` (on ``store``, default :func:`create_store`'s).

    ``options`` go to :class:`HistoryWriter` (``lookup``, ``on_drop``, ``retention_interval`` …).
    """
    retention = settings.retention_days * 86400.0 if settings.retention_days is not None else None
    # Packed rows are for runs only this node stores (scope "local": the node that ran them).
    options.setdefault("pack_tokens", settings.scope == "local")
    if retention is not None:
        # Hourly, or more often for a retention shorter than 10 hours.
        options.setdefault("retention_interval", min(3600.0, max(retention / 10, 1.0)))
    return HistoryWriter(
        store if store is not None else create_store(settings),
        batch_size=settings.batch_size,
        flush_interval=settings.flush_interval,
        buffer_size=settings.buffer_size,
        retention=retention,
        **options,  # type: ignore[arg-type]
    )
