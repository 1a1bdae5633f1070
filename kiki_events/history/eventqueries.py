"""Reading stored events back (:class:`EventQueries`, part of every SQL store).

Rows may hold several events (:mod:`.packing`), so a page is made of rows expanded
into events, taken in order until ``limit + 1`` are found (one more than asked: there
is a next page). A run's rows are read 64 at a time until then; a thread's and a
search's up to ``limit + 1`` at once, and such a page of rows that gives fewer events
(rows another row already covered, or events of a packed row outside a time range)
ends early, with a cursor past those rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InvalidArgumentError, RunNotFoundError
from ..events import StreamEvent
from .base import EventPage, Principal, StoredRun
from .packing import MAX_SPAN, PACK_SECONDS, Expander, expand
from .sql import agent_clause, decode_cursor, encode_cursor, in_list, visible_clause

__all__ = ["MAX_LIMIT", "EventQueries", "check_limit"]

MAX_LIMIT = 10_000
"""Largest ``limit`` a query accepts."""

EVENT_COLUMNS = "e.run_id, e.seq, e.ts, e.type, e.agent, e.body, e.span"
"""The columns :func:`~.packing.expand` reads, first in every event query."""

_CHUNK = 64
"""Rows a run's events are read by at a time."""
_COVERED = (
    "(e.type <> 'token' OR e.span > 1 OR NOT EXISTS (SELECT 1 FROM events g WHERE g.run_id = e.run_id "
    f"AND g.seq < e.seq AND g.seq > e.seq - {MAX_SPAN} AND g.span > 1 AND g.seq + g.span > e.seq))"
)
"""Keeps a token row of its own only when no packed row (another node's) holds its token too."""


def check_limit(limit: int) -> int:
    """``limit`` when it is an integer from 1 to :data:`MAX_LIMIT`.

    Raises:
        InvalidArgumentError: it is not.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgumentError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    return limit


class EventQueries:
    """Events of a run, of a thread, across runs, and one event by id (see the module docstring)."""

    same: str

    async def _fetch(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def run(self, run_id: str, principal: Principal) -> StoredRun:
        raise NotImplementedError

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
        """The events of one run (``seq > after``), or of one thread's runs (oldest run first), in order.

        A thread's events are those of the runs listed on it (a delegate whose events
        were relayed into another run is shown there). Filters: ``types`` (event
        types), ``agent`` (that agent and those below it).

        Raises:
            RunNotFoundError: the run (or thread) is not stored or not ``principal``'s.
            InvalidArgumentError: neither or both of ``run_id`` and ``thread_id``.
        """
        if (run_id is None) == (thread_id is None):
            raise InvalidArgumentError("events() needs exactly one of run_id and thread_id")
        size = check_limit(limit)
        where, params = event_filters(types, agent)
        if run_id is None:
            return await self._thread_events(principal, str(thread_id), where, params, size, cursor)
        await self.run(run_id, principal)
        if cursor is not None:
            (after,) = decode_cursor(cursor, (int,))
        # Rows in chunks (a packed row holds up to MAX_SPAN events): the first chunk starts at the
        # row holding ``after + 1``, each next one after the last row read.
        head = f"SELECT {EVENT_COLUMNS} FROM events e WHERE e.run_id = ?{where} AND "
        chunk = min(size + 1, _CHUNK)
        rows = await self._fetch(
            f"{head}e.seq > ? AND e.seq + e.span > ? ORDER BY e.seq LIMIT ?",
            [run_id, *params, after - MAX_SPAN, after + 1, chunk],
        )
        expander = Expander({run_id: after})
        events: list[StreamEvent] = []
        while True:
            for row in rows:
                events += expander.events(row)
                if len(events) > size:
                    return EventPage(events[:size], encode_cursor(events[size - 1].seq))
            if len(rows) < chunk:
                return EventPage(events, None)
            rows = await self._fetch(f"{head}e.seq > ? ORDER BY e.seq LIMIT ?", [run_id, *params, rows[-1][1], chunk])

    async def _thread_events(
        self, principal: Principal, thread_id: str, where: str, params: list[object], size: int, cursor: str | None
    ) -> EventPage:
        visible, visible_params = visible_clause(principal, self.same)
        listed = await self._fetch(
            f"SELECT COUNT(*) FROM runs r WHERE r.thread_id = ? AND {visible}", [thread_id, *visible_params]
        )
        if not listed[0][0]:
            raise RunNotFoundError(f"thread {thread_id!r} not found")
        key = ""
        key_params: list[object] = []
        expander = Expander()
        if cursor is not None:
            started, run_id, seq = decode_cursor(cursor, (float, str, int))
            key = (
                " AND (r.started_at > ? OR (r.started_at = ? AND (r.run_id > ? "
                "OR (r.run_id = ? AND e.seq > ? AND e.seq + e.span > ?))))"
            )
            key_params = [started, started, run_id, run_id, seq - MAX_SPAN, seq + 1]
            expander = Expander({run_id: seq})
        sql = (
            f"SELECT {EVENT_COLUMNS}, r.started_at FROM events e JOIN runs r ON r.run_id = e.run_id "
            f"WHERE r.thread_id = ? AND r.relayed_into IS NULL AND {visible}{where}{key} "
            "ORDER BY r.started_at, r.run_id, e.seq LIMIT ?"
        )
        rows = await self._fetch(sql, [thread_id, *visible_params, *params, *key_params, size + 1])
        return _page(
            rows,
            size,
            lambda row: [(row[7], event) for event in expander.events(row)],  # keyed by the run's start
            lambda row: encode_cursor(row[7], row[0], expander.given(row[0])),
        )

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
        """Events of every run ``principal`` may see, with ``ts`` in ``[since, until)``, oldest first.

        E.g. the last day's tool results: ``search(p, types=["tool_result"], since=time.time() - 86400)``.
        A message's tokens stored in one row come together, at the time of the first.
        """
        size = check_limit(limit)
        where, params = event_filters(types, agent)
        visible, visible_params = visible_clause(principal, self.same)
        clauses: list[str] = [_COVERED]
        times: list[object] = []
        if since is not None:  # a packed row that began a little earlier may hold later tokens
            clauses.append("e.ts >= ?")
            times.append(float(since) - PACK_SECONDS)
        if until is not None:
            clauses.append("e.ts < ?")
            times.append(float(until))
        after: tuple[float, str, int] | None = None
        if cursor is not None:
            ts, run_id, seq = decode_cursor(cursor, (float, str, int))
            after = (float(ts), run_id, seq)
            clauses.append("(e.ts > ? OR (e.ts = ? AND (e.run_id > ? OR (e.run_id = ? AND e.seq + e.span > ?))))")
            times += [ts, ts, run_id, run_id, seq + 1]
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM events e JOIN runs r ON r.run_id = e.run_id "
            f"WHERE {visible}{where} AND {' AND '.join(clauses)} ORDER BY e.ts, e.run_id, e.seq LIMIT ?"
        )
        rows = await self._fetch(sql, [*visible_params, *params, *times, size + 1])

        def found(row: tuple[Any, ...]) -> list[tuple[float, StreamEvent]]:  # keyed by the row's time
            row_ts, row_run = float(row[2]), row[0]
            return [
                (row_ts, event)
                for event in expand(row)
                if not (after is not None and (row_ts, row_run) == after[:2] and event.seq <= after[2])
                and (since is None or event.ts >= since)
                and (until is None or event.ts < until)
            ]

        return _page(rows, size, found, lambda row: encode_cursor(float(row[2]), row[0], int(row[1]) + int(row[6]) - 1))

    async def _event_at(self, run_id: str, seq: int) -> StreamEvent | None:
        """The stored event ``seq`` of ``run_id`` (no ownership check), or ``None``."""
        rows = await self._fetch(
            f"SELECT {EVENT_COLUMNS} FROM events e WHERE e.run_id = ? AND e.seq > ? AND e.seq <= ? "
            "AND e.seq + e.span > ? ORDER BY e.seq",
            [run_id, seq - MAX_SPAN, seq, seq],
        )
        for row in rows:
            for event in expand(row):
                if event.seq == seq:
                    return event
        return None


def _page(
    rows: list[tuple[Any, ...]],
    size: int,
    events_of: Callable[[tuple[Any, ...]], list[tuple[float, StreamEvent]]],
    past: Callable[[tuple[Any, ...]], str],
) -> EventPage:
    """A page of the events of ``rows`` (read with ``LIMIT size + 1``), each keyed by the time its
    cursor holds; the cursor is past the ``size``-th event, or ``past(last row)`` when the rows
    gave fewer events than a page and more rows may follow."""
    found: list[tuple[float, StreamEvent]] = []
    for row in rows:
        found += events_of(row)
        if len(found) > size:
            key, last = found[size - 1]
            return EventPage([event for _, event in found[:size]], encode_cursor(key, last.run_id, last.seq))
    return EventPage([event for _, event in found], past(rows[-1]) if len(rows) > size else None)


def event_filters(types: Sequence[str], agent: str | None) -> tuple[str, list[object]]:
    """SQL (``" AND …"``) and parameters keeping events of ``types`` by ``agent`` (and those below it)."""
    if isinstance(types, str):
        types = [types]
    where = ""
    params: list[object] = []
    if types:
        clause, more = in_list("e.type", list(types))
        where += f" AND {clause}"
        params += more
    if agent is not None:
        clause, more = agent_clause(agent, "e.agent")
        where += f" AND {clause}"
        params += more
    return where, params
