"""The event store's contract: what a backend does, and what its queries return.

An :class:`EventStore` keeps runs and their events in a database. Its writes come
from :class:`~kiki_events.history.writer.HistoryWriter` in batches (one transaction
each, idempotent on ``(run_id, seq)``); its reads are the query methods below, each
taking the ``principal`` who asks and applying the ownership rules of streams:

* a run is visible to the principal that started it, and only while its thread (if
  any) belongs to that principal too; anyone else is told it does not exist
  (:class:`~kiki_events.errors.RunNotFoundError`) or does not see it in a list;
* a thread belongs to the principal whose run used it first;
* :data:`ANYONE` as the principal skips these checks (trusted callers only, such as an
  operator's command line reading the database).

Every timestamp is Unix time in seconds; every list is bounded by a ``limit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeAlias, runtime_checkable

from ..events import StreamEvent, Usage

if TYPE_CHECKING:
    from .stats import Stats, StatsKey

__all__ = [
    "ANYONE",
    "Anyone",
    "Batch",
    "Causation",
    "EventPage",
    "EventStore",
    "Link",
    "Principal",
    "RunPage",
    "RunRow",
    "StoredRun",
    "StoredStatus",
]


class Anyone:
    """The type of :data:`ANYONE`."""

    _instance: Anyone | None = None

    def __new__(cls) -> Anyone:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ANYONE"


ANYONE: Final = Anyone()
"""As a principal: see every run (no ownership checks); as an ``owner`` filter: any owner."""

Principal: TypeAlias = "str | Anyone | None"
"""Who asks: a principal name, ``None`` (anonymous: sees only anonymous runs) or :data:`ANYONE`."""

StoredStatus: TypeAlias = Literal["running", "success", "error", "interrupted", "cancelled"]
"""A stored run's status: ``running`` until its ``done`` is stored, then the ``done``'s status."""


@dataclass(frozen=True, slots=True)
class StoredRun:
    """One stored run with its totals (over the events stored for it)."""

    run_id: str
    thread_id: str | None
    graph: str | None
    principal: str | None
    """Who started it (the owner)."""
    node: str | None
    """The node that ran it."""
    status: StoredStatus
    started_at: float
    """``ts`` of its first stored event."""
    ended_at: float | None
    """``ts`` of its ``done`` (``None`` while running, or when the node stopped before it ended)."""
    duration_s: float | None
    """Its ``done``'s ``duration_s``."""
    last_seq: int
    events: int
    """Events stored."""
    llm_calls: int
    tool_calls: int
    """Tool results seen (calls that ran)."""
    tool_errors: int
    """Tool results carrying an error."""
    errors: int
    """``error`` events."""
    usage: Usage
    """Its ``done``'s usage; while running, the sum of its ``llm`` events' usage."""
    agents: tuple[str, ...] = ()
    """Agent paths that produced events, sorted."""
    causation_id: str | None = None
    """What caused it (its first event's ``causation_id``: an event id or a run id)."""
    caused_by: str | None = None
    """The run of ``causation_id`` (the run whose agent started this one), if any."""
    relayed_into: str | None = None
    """The run its events were relayed into (a delegate of a hand-off)."""
    trace_id: str | None = None
    cost_usd: float | None = None
    """Its ``done``'s ``cost.total_usd`` (priced calls only); ``None`` when the node that ran it has no price table."""


@dataclass(frozen=True, slots=True)
class RunPage:
    """A page of runs, newest first; pass ``cursor`` back to get the next one (``None``: no more)."""

    runs: list[StoredRun]
    cursor: str | None


@dataclass(frozen=True, slots=True)
class EventPage:
    """A page of events; pass ``cursor`` back to get the next one (``None``: no more)."""

    events: list[StreamEvent]
    cursor: str | None


@dataclass(frozen=True, slots=True)
class Link:
    """A run in a causation chain, ``depth`` steps from the run or event asked about."""

    run: StoredRun
    depth: int
    """1: directly caused (or caused directly); 2: one run in between …"""
    via: str | None
    """The causation id linking it: the id of the event (or run) that caused the later run."""


@dataclass(frozen=True, slots=True)
class Causation:
    """The causation chain of a run or event, both directions.

    ``causes``: the runs that led to it, nearest first (the run whose agent started
    it, that run's own cause …). ``effects``: the runs it caused, breadth first, and
    theirs. Only runs the principal may see are included (a chain stops at one they
    may not see).
    """

    run: StoredRun
    """The run asked about (or the run of the event asked about)."""
    event: StreamEvent | None
    """The event asked about, if one was."""
    causes: list[Link] = field(default_factory=list)
    effects: list[Link] = field(default_factory=list)


RunRow: TypeAlias = tuple[object, ...]
"""One row of the ``runs`` table, in :data:`~kiki_events.history.sql.RUN_COLUMNS` order."""


@dataclass(slots=True)
class Batch:
    """What one write stores, in one transaction (:meth:`EventStore.write`).

    ``events``: ``(run_id, seq, ts, type, agent, body, span)`` rows (``body``: the
    event's other fields as compact JSON; ``span``: the events the row holds, several
    for a message's packed tokens, :mod:`.packing`); ``count``: the events in them;
    ``runs``: whole rows of runs, written over older rows of the same run unless those
    have seen a later seq; ``agents``: ``(run_id, agent)`` pairs; ``threads``:
    ``(thread_id, principal, created_at)``, kept from the first write (the thread's owner).
    """

    events: list[tuple[str, int, float, str, str | None, bytes, int]] = field(default_factory=list)
    runs: list[RunRow] = field(default_factory=list)
    agents: list[tuple[str, str]] = field(default_factory=list)
    threads: list[tuple[str, str | None, float]] = field(default_factory=list)
    count: int | None = None
    """Events in ``events`` (``None``: one per row)."""

    def __len__(self) -> int:
        return len(self.events) if self.count is None else self.count


@runtime_checkable
class EventStore(Protocol):
    """A database of runs and events (SQLite: :mod:`.sqlite`, PostgreSQL: :mod:`.postgres`).

    Writes are idempotent: a batch written twice, or the same events written by
    several nodes, is stored once. Failing database operations raise
    :class:`~kiki_events.errors.StoreError`.
    """

    backend: str
    """``sqlite`` or ``postgres``."""

    async def open(self) -> None:
        """Connect, and create or migrate the schema (raises :class:`StoreError` when it cannot)."""
        ...

    async def close(self) -> None:
        """Close every connection (idempotent)."""
        ...

    async def write(self, batch: Batch) -> None:
        """Store ``batch`` in one transaction (all of it or nothing)."""
        ...

    async def delete_finished(self, before: float, *, limit: int = 500) -> int:
        """Delete up to ``limit`` runs that ended before ``before``, with their events; returns how many."""
        ...

    async def schema_version(self) -> int:
        """The migration the database is at."""
        ...

    async def runs(
        self,
        principal: Principal,
        *,
        thread_id: str | None = None,
        graph: str | None = None,
        agent: str | None = None,
        status: StoredStatus | Sequence[StoredStatus] | None = None,
        since: float | None = None,
        until: float | None = None,
        owner: Principal = ANYONE,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Runs started in ``[since, until)`` matching every filter given, newest first."""
        ...

    async def run(self, run_id: str, principal: Principal) -> StoredRun:
        """One run (raises :class:`~kiki_events.errors.RunNotFoundError` when unknown or not theirs)."""
        ...

    async def events(
        self,
        principal: Principal,
        *,
        run_id: str | None = None,
        thread_id: str | None = None,
        types: Sequence[str] = (),
        agent: str | None = None,
        after: int = 0,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> EventPage:
        """The events of one run (``seq > after``) or one thread (its runs oldest first), in order."""
        ...

    async def search(
        self,
        principal: Principal,
        *,
        types: Sequence[str] = (),
        agent: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> EventPage:
        """Events across runs with ``ts`` in ``[since, until)``, by type and agent, oldest first."""
        ...

    async def causation(
        self, principal: Principal, *, run_id: str | None = None, event_id: str | None = None, depth: int = 16
    ) -> Causation:
        """The causation chain of a run or of an event (``"<run_id>:<seq>"``), both directions."""
        ...

    async def stats(
        self,
        principal: Principal,
        *,
        by: StatsKey | None = None,
        thread_id: str | None = None,
        graph: str | None = None,
        agent: str | None = None,
        status: StoredStatus | Sequence[StoredStatus] | None = None,
        since: float | None = None,
        until: float | None = None,
        owner: Principal = ANYONE,
        limit: int = 100,
    ) -> Stats:
        """Figures over the runs started in ``[since, until)`` matching every filter, grouped ``by`` a key."""
        ...
