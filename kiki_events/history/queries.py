"""The query API, written once in SQL for every backend (:class:`SqlStore`).

A backend subclasses :class:`SqlStore` and supplies how statements run:
:meth:`SqlStore._fetch` (one read) and :meth:`SqlStore._transaction` (statements,
each with its rows, in one transaction). Everything else — writing a batch,
retention, and every query with its ownership rules — is here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import InvalidArgumentError, RunNotFoundError
from ..events import StreamEvent
from .base import ANYONE, Batch, Causation, Link, Principal, RunPage, StoredRun, StoredStatus
from .eventqueries import MAX_LIMIT, EventQueries, check_limit
from .sql import (
    AGENT_INSERT,
    EVENT_INSERT,
    RUN_COLUMNS,
    RUN_UPSERT,
    THREAD_INSERT,
    agent_clause,
    caused_by,
    decode_cursor,
    encode_cursor,
    in_list,
    owner_clause,
    run_from_row,
    split_event_id,
    visible_clause,
)
from .statsql import StatsQueries

__all__ = ["MAX_LIMIT", "SqlStore"]

_RUN_SELECT = "SELECT " + ", ".join(f"r.{c}" for c in RUN_COLUMNS) + " FROM runs r"
_STATUSES = ("running", "success", "error", "interrupted", "cancelled")


class SqlStore(EventQueries, StatsQueries):
    """The shared part of the SQL backends (see the module docstring)."""

    backend = "sql"
    same = "IS"
    """Null-safe equality in this dialect."""

    # -- what a backend supplies -----------------------------------------------------------
    async def _fetch(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def _transaction(self, statements: Sequence[tuple[str, Sequence[Sequence[object]]]]) -> None:
        raise NotImplementedError

    # -- writing ---------------------------------------------------------------------------
    async def write(self, batch: Batch) -> None:
        """Store ``batch`` in one transaction (idempotent)."""
        await self._transaction(
            [
                (THREAD_INSERT, batch.threads),
                (RUN_UPSERT, batch.runs),
                (AGENT_INSERT, batch.agents),
                (EVENT_INSERT, batch.events),
            ]
        )

    async def delete_finished(self, before: float, *, limit: int = 500) -> int:
        """Delete up to ``limit`` runs that ended before ``before`` (and their events, agents, empty threads)."""
        rows = await self._fetch(
            "SELECT run_id, thread_id FROM runs WHERE ended_at < ? ORDER BY ended_at LIMIT ?",
            [before, check_limit(limit)],
        )
        if not rows:
            return 0
        ids = [[row[0]] for row in rows]
        threads = sorted({row[1] for row in rows if row[1] is not None})
        await self._transaction(
            [
                ("DELETE FROM events WHERE run_id = ?", ids),
                ("DELETE FROM run_agents WHERE run_id = ?", ids),
                ("DELETE FROM runs WHERE run_id = ?", ids),
                (
                    "DELETE FROM threads WHERE thread_id = ? AND NOT EXISTS "
                    "(SELECT 1 FROM runs WHERE runs.thread_id = threads.thread_id)",
                    [[thread] for thread in threads],
                ),
            ]
        )
        return len(rows)

    async def schema_version(self) -> int:
        """The last migration applied."""
        rows = await self._fetch("SELECT MAX(version) FROM schema_version", [])
        return int(rows[0][0] or 0)

    # -- runs ------------------------------------------------------------------------------
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
        """Runs that started in ``[since, until)`` and match every filter given, newest first.

        ``agent`` keeps runs in which that agent (or one below it) produced events;
        ``status`` is one status or several; ``owner`` keeps one principal's runs
        (useful with ``principal=ANYONE``). Pass the page's ``cursor`` back for the next page.
        """
        where, params = self._where_visible(principal)
        owned, owned_params = owner_clause(owner, self.same)
        where.append(owned)
        params += owned_params
        for column, value in (("r.thread_id", thread_id), ("r.graph", graph)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if agent is not None:
            clause, more = agent_clause(agent, "a.agent")
            where.append(f"r.run_id IN (SELECT a.run_id FROM run_agents a WHERE {clause})")
            params += more
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            unknown = [s for s in statuses if s not in _STATUSES]
            if unknown or not statuses:
                raise InvalidArgumentError(f"status must be among {', '.join(_STATUSES)}, got {statuses!r}")
            clause, more = in_list("r.status", statuses)
            where.append(clause)
            params += more
        self._time_range(where, params, "r.started_at", since, until)
        if cursor is not None:
            started, run_id = decode_cursor(cursor, (float, str))
            where.append("(r.started_at < ? OR (r.started_at = ? AND r.run_id < ?))")
            params += [started, started, run_id]
        size = check_limit(limit)
        sql = f"{_RUN_SELECT} WHERE {' AND '.join(where)} ORDER BY r.started_at DESC, r.run_id DESC LIMIT ?"
        rows = await self._fetch(sql, [*params, size + 1])
        runs = await self._with_agents(rows[:size])
        more_left = len(rows) > size
        return RunPage(runs, encode_cursor(runs[-1].started_at, runs[-1].run_id) if more_left else None)

    async def run(self, run_id: str, principal: Principal) -> StoredRun:
        """The run ``run_id`` as ``principal`` sees it.

        Raises:
            RunNotFoundError: not stored, or not ``principal``'s.
        """
        found = await self._find_runs([run_id], principal)
        if not found:
            raise RunNotFoundError(f"run {run_id!r} not found")
        return found[0]

    # -- causation -------------------------------------------------------------------------
    async def causation(
        self, principal: Principal, *, run_id: str | None = None, event_id: str | None = None, depth: int = 16
    ) -> Causation:
        """The causation chain of a run, or of an event (``"<run_id>:<seq>"``), both directions.

        Causes: the event's ``causation_id`` (for an event that has one), else its run's,
        followed up run by run. Effects: the runs whose ``causation_id`` is the event
        (or, for a run, the runs it caused through any of its events), then theirs.
        At most ``depth`` steps each way.

        Raises:
            RunNotFoundError: the run or event is not stored or not ``principal``'s.
            InvalidArgumentError: neither or both of ``run_id`` and ``event_id``.
        """
        if (run_id is None) == (event_id is None):
            raise InvalidArgumentError("causation() needs exactly one of run_id and event_id")
        event: StreamEvent | None = None
        if event_id is not None:
            run_id, seq = split_event_id(event_id)
            run = await self.run(run_id, principal)
            event = await self._event_at(run_id, seq)
            if event is None:
                raise RunNotFoundError(f"event {event_id!r} not found")
            cause = event.causation_id or run.causation_id
        else:
            run = await self.run(str(run_id), principal)
            cause = run.causation_id
        causes = await self._causes(principal, cause, depth)
        if event_id is not None:
            first = await self._fetch("SELECT r.run_id FROM runs r WHERE r.causation_id = ?", [event_id])
            start: list[tuple[str, str]] = [(str(row[0]), event_id) for row in first]
            effects = await self._effects(principal, start, depth)
        else:
            effects = await self._effects(principal, None, depth, root=run.run_id)
        return Causation(run, event, causes, effects)

    async def _causes(self, principal: Principal, cause: str | None, depth: int) -> list[Link]:
        links: list[Link] = []
        seen: set[str] = set()
        while cause is not None and len(links) < depth:
            parent = caused_by(cause)
            if parent is None or parent in seen:
                break
            found = await self._find_runs([parent], principal)
            if not found:
                break
            seen.add(parent)
            links.append(Link(found[0], len(links) + 1, cause))
            cause = found[0].causation_id
        return links

    async def _effects(
        self, principal: Principal, start: list[tuple[str, str]] | None, depth: int, *, root: str | None = None
    ) -> list[Link]:
        links: list[Link] = []
        seen = {root} if root is not None else set()
        frontier = [root] if root is not None else []
        level = 1
        pending = start
        while level <= depth:
            if pending is None:
                if not frontier:
                    break
                clause, params = in_list("r.caused_by", frontier)
                rows = await self._fetch(f"SELECT r.run_id, r.causation_id FROM runs r WHERE {clause}", params)
                pending = [(str(row[0]), str(row[1])) for row in rows]
            fresh = [(run_id, via) for run_id, via in pending if run_id not in seen]
            found = {run.run_id: run for run in await self._find_runs([r for r, _ in fresh], principal)}
            frontier = []
            for run_id, via in sorted(fresh, key=lambda item: item[0]):
                if run_id in found and run_id not in seen:
                    seen.add(run_id)
                    frontier.append(run_id)
                    links.append(Link(found[run_id], level, via))
            pending = None
            level += 1
        return sorted(links, key=lambda link: (link.depth, link.run.started_at, link.run.run_id))

    # -- helpers ---------------------------------------------------------------------------
    def _where_visible(self, principal: Principal) -> tuple[list[str], list[object]]:
        clause, params = visible_clause(principal, self.same)
        return [clause], params

    @staticmethod
    def _time_range(
        where: list[str], params: list[object], column: str, since: float | None, until: float | None
    ) -> None:
        if since is not None:
            where.append(f"{column} >= ?")
            params.append(float(since))
        if until is not None:
            where.append(f"{column} < ?")
            params.append(float(until))

    async def _find_runs(self, run_ids: Sequence[str], principal: Principal) -> list[StoredRun]:
        if not run_ids:
            return []
        visible, params = visible_clause(principal, self.same)
        clause, ids = in_list("r.run_id", list(run_ids))
        rows = await self._fetch(f"{_RUN_SELECT} WHERE {clause} AND {visible}", [*ids, *params])
        return await self._with_agents(rows)

    async def _with_agents(self, rows: Sequence[Sequence[Any]]) -> list[StoredRun]:
        if not rows:
            return []
        clause, ids = in_list("run_id", [row[0] for row in rows])
        agents: dict[str, list[str]] = {}
        for run_id, agent in await self._fetch(f"SELECT run_id, agent FROM run_agents WHERE {clause}", ids):
            agents.setdefault(run_id, []).append(agent)
        return [run_from_row(row, agents.get(row[0], ())) for row in rows]
