"""Statistics over stored runs, aggregated in the database (:class:`StatsQueries`, part of every SQL store).

The runs selected (visible to the principal, started in ``[since, until)``, matching
the filters; a delegate run whose events were relayed into another run is counted
there, not on its own) are a common table expression, materialised once per query; five grouped queries read
it: the runs (counts by status, durations, tool totals), the durations'
percentiles, the ``llm`` events (calls, tokens, time to first token, cost), their
time to first token's percentiles, and (by agent) the ``tool_result`` events. An
``llm`` event's model, usage, ``ttft_s`` and ``cost_usd`` are read from its JSON
``body`` in SQL (``json_extract`` in SQLite, ``jsonb`` in PostgreSQL); partial
indexes (migration 2) find a run's ``llm`` and ``tool_result`` events.

Percentiles are nearest-rank, with window functions both databases have: the value
of rank ``ceil(n * p / 100)`` in each group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

from ..errors import InvalidArgumentError
from ..events import Usage
from .base import ANYONE, Principal, StoredStatus
from .sql import agent_clause, in_list, owner_clause, visible_clause
from .stats import STATS_KEYS, RunStatuses, Stats, StatsCost, StatsGroup, StatsKey, dollars, spread, whole

__all__ = ["MAX_GROUPS", "StatsQueries"]

MAX_GROUPS = 10_000
"""Largest ``limit`` (groups) :meth:`StatsQueries.stats` accepts."""
_STATUSES: tuple[str, ...] = get_args(StoredStatus)
_TOTAL = "'*'"
"""The key of the one group of every run selected (no ``GROUP BY``)."""


@dataclass(frozen=True, slots=True)
class _Dialect:
    integer: str
    """Format of a JSON number read as an integer, from ``{path}`` (``a.b``)."""
    real: str
    text: str
    collate: str
    """Appended to a key in ``ORDER BY`` so that keys sort by code point."""
    parse: str
    """Joined to ``events e`` to parse its body once per row (the fields read it)."""

    def field(self, kind: str, path: str) -> str:
        template = getattr(self, kind)
        return str(template.format(dotted=path, braced="{" + path.replace(".", ",") + "}"))


# SQLite keeps the last bodies it parsed within a statement; PostgreSQL parses each body
# once in a lateral subquery (``OFFSET 0`` keeps it from being inlined into every field).
_SQLITE_JSON = "json_extract(CAST(e.body AS TEXT), '$.{dotted}')"
_PG_JSON = "(b.j #>> '{braced}')"
_PG_PARSE = " CROSS JOIN LATERAL (SELECT convert_from(e.body, 'UTF8')::jsonb AS j OFFSET 0) b"
_DIALECTS = {
    "sqlite": _Dialect(_SQLITE_JSON, _SQLITE_JSON, _SQLITE_JSON, "", ""),
    "postgres": _Dialect(_PG_JSON + "::bigint", _PG_JSON + "::float8", _PG_JSON, ' COLLATE "C"', _PG_PARSE),
}

_RUN_KEYS = {"run": "s.run_id", "thread": "s.thread_id", "graph": "s.graph", "agent": "a.agent", "model": "s.model"}
_CALL_KEYS = {"run": "c.run_id", "thread": "c.thread_id", "graph": "c.graph", "agent": "c.agent", "model": "c.model"}
_TOKENS = ("input_tokens", "output_tokens", "reasoning_tokens", "cached_tokens", "total_tokens")


def _tail(key: str, size: int | None, collate: str) -> str:
    """``GROUP BY`` the key, in key order (``NULL`` first), at most ``size + 1`` groups; none for the total."""
    if size is None:
        return ""
    return f" GROUP BY {key} ORDER BY ({key} IS NULL) DESC, {key}{collate} LIMIT {size + 1}"


def _percentiles(source: str, key: str, value: str, size: int | None, collate: str) -> str:
    """p50 and p95 (nearest rank) of ``value`` per ``key`` over the rows of ``source``."""
    out = "k" if size is not None else _TOTAL
    ranked = (
        "SELECT k, v, ROW_NUMBER() OVER (PARTITION BY k ORDER BY v) AS rn, COUNT(*) OVER (PARTITION BY k) AS n "
        f"FROM (SELECT {key} AS k, {value} AS v FROM {source}) x WHERE v IS NOT NULL"
    )
    return (
        f"SELECT {out}, MAX(CASE WHEN rn = (n * 50 + 99) / 100 THEN v END), "
        f"MAX(CASE WHEN rn = (n * 95 + 99) / 100 THEN v END) FROM ({ranked}) w{_tail('k', size, collate)}"
    )


def _sort_key(key: Any) -> tuple[bool, str]:
    return (key is not None, "" if key is None else str(key))


class StatsQueries:
    """The ``stats`` query of :class:`~kiki_events.history.queries.SqlStore`."""

    backend: str
    same: str

    async def _fetch(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

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
        """Figures over the runs ``principal`` may see that started in ``[since, until)`` and match every filter.

        ``by`` groups them by ``run``, ``thread``, ``agent``, ``graph`` or ``model``
        (at most ``limit`` groups, in key order); the filters are those of
        :meth:`~kiki_events.history.base.EventStore.runs`.

        Raises:
            InvalidArgumentError: an unknown ``by`` or status, or a limit out of 1 to 10,000.
        """
        if by is not None and by not in STATS_KEYS:
            raise InvalidArgumentError(f"by must be one of {', '.join(STATS_KEYS)}, got {by!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_GROUPS:
            raise InvalidArgumentError(f"limit must be an integer from 1 to {MAX_GROUPS}, got {limit!r}")
        where, params = self._selection(principal, thread_id, graph, agent, status, since, until, owner)
        cte = (
            "WITH sel AS MATERIALIZED (SELECT r.run_id, r.thread_id, r.graph, r.status, r.duration_s, r.tool_calls, "
            f"r.tool_errors FROM runs r WHERE {where} AND r.relayed_into IS NULL) "
        )
        total = await self._groups(cte, params, None, None)
        groups = await self._groups(cte, params, by, limit) if by is not None else []
        return Stats(
            by=by,
            since=since,
            until=until,
            total=total[0] if total else StatsGroup(),
            groups=groups[:limit],
            truncated=len(groups) > limit,
        )

    def _selection(
        self,
        principal: Principal,
        thread_id: str | None,
        graph: str | None,
        agent: str | None,
        status: StoredStatus | Sequence[StoredStatus] | None,
        since: float | None,
        until: float | None,
        owner: Principal,
    ) -> tuple[str, list[object]]:
        visible, params = visible_clause(principal, self.same)
        owned, owned_params = owner_clause(owner, self.same)
        where = [visible, owned]
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
            if not statuses or any(s not in _STATUSES for s in statuses):
                raise InvalidArgumentError(f"status must be among {', '.join(_STATUSES)}, got {statuses!r}")
            clause, more = in_list("r.status", statuses)
            where.append(clause)
            params += more
        for bound, time in ((">=", since), ("<", until)):
            if time is not None:
                where.append(f"r.started_at {bound} ?")
                params.append(float(time))
        return " AND ".join(where), params

    def _calls(self, *, ttft_only: bool = False) -> str:
        """The ``llm`` events of the runs selected, one row each with the fields the figures need
        (``ttft_only``: the keys and ``ttft_s``; each JSON field read costs a parse of the body)."""
        dialect = _DIALECTS[self.backend]
        field = dialect.field
        tokens = ", ".join(f"COALESCE({field('integer', 'usage.' + name)}, 0) AS {name}" for name in _TOKENS)
        figures = f"{field('real', 'ttft_s')} AS ttft_s"
        if not ttft_only:
            figures = f"{tokens}, {figures}, {field('real', 'cost_usd')} AS cost_usd"
        return (
            "(SELECT s.run_id, s.thread_id, s.graph, s.status, s.duration_s, s.tool_calls, s.tool_errors, e.agent, "
            f"{field('text', 'model')} AS model, {figures} "
            f"FROM events e JOIN sel s ON s.run_id = e.run_id{dialect.parse} WHERE e.type = 'llm') c"
        )

    def _statements(self, by: StatsKey | None, size: int | None) -> dict[str, str]:
        """The queries, by what they count, for ``by`` (``None``: one group of every run)."""
        collate = _DIALECTS[self.backend].collate
        run_key = _RUN_KEYS[by] if by is not None else _TOTAL
        call_key = _CALL_KEYS[by] if by is not None else _TOTAL
        runs = "sel s"
        if by == "agent":
            runs = "sel s JOIN run_agents a ON a.run_id = s.run_id"
        elif by == "model":
            # Each run once per model it called, with the run's columns (no join back to ``sel``).
            columns = "c.run_id, c.model, c.status, c.duration_s, c.tool_calls, c.tool_errors"
            runs = f"(SELECT DISTINCT {columns} FROM {self._calls(ttft_only=True)}) s"
        counts = ", ".join(f"SUM(CASE WHEN s.status = '{name}' THEN 1 ELSE 0 END)" for name in _STATUSES)
        sums = ", ".join(f"SUM(c.{name})" for name in _TOKENS)
        statements = {
            "runs": (
                f"SELECT {run_key}, COUNT(*), {counts}, COUNT(s.duration_s), SUM(s.duration_s), MAX(s.duration_s), "
                f"SUM(s.tool_calls), SUM(s.tool_errors) FROM {runs}{_tail(run_key, size, collate)}"
            ),
            "durations": _percentiles(runs, run_key, "s.duration_s", size, collate),
            "calls": (
                f"SELECT {call_key}, COUNT(*), {sums}, COUNT(c.ttft_s), SUM(c.ttft_s), MAX(c.ttft_s), "
                "SUM(CASE WHEN c.cost_usd IS NULL THEN 0 ELSE 1 END), SUM(c.cost_usd), "
                "SUM(CASE WHEN c.cost_usd IS NULL THEN c.total_tokens ELSE 0 END) "
                f"FROM {self._calls()}{_tail(call_key, size, collate)}"
            ),
            "ttft": _percentiles(self._calls(ttft_only=True), call_key, "c.ttft_s", size, collate),
        }
        if by == "agent":
            dialect = _DIALECTS[self.backend]
            error = dialect.field("text", "error")
            statements["tools"] = (
                f"SELECT e.agent, COUNT(*), SUM(CASE WHEN {error} IS NULL THEN 0 ELSE 1 END) "
                f"FROM events e JOIN sel s ON s.run_id = e.run_id{dialect.parse} WHERE e.type = 'tool_result'"
                f"{_tail('e.agent', size, collate)}"
            )
        return statements

    async def _groups(self, cte: str, params: list[object], by: StatsKey | None, size: int | None) -> list[StatsGroup]:
        """The groups of ``by`` (at most ``size + 1``), or the one group of every run (``by=None``)."""
        found: dict[str, dict[Any, tuple[Any, ...]]] = {}
        for name, sql in self._statements(by, size).items():
            rows = await self._fetch(cte + sql, params)
            found[name] = {row[0]: row[1:] for row in rows}
        keys = sorted(set().union(*found.values()), key=_sort_key)
        return [_group(key, found, by) for key in keys]


def _group(key: Any, found: dict[str, dict[Any, tuple[Any, ...]]], by: StatsKey | None) -> StatsGroup:
    """One group's figures from the rows of each query (a query without a row for it: zeros)."""
    runs = found["runs"].get(key) or (0,) * 11
    durations = found["durations"].get(key) or (None, None)
    calls = found["calls"].get(key) or (0,) * 13
    ttft = found["ttft"].get(key) or (None, None)
    tool_calls, tool_errors = runs[9], runs[10]
    if by == "agent":
        tool_calls, tool_errors = found["tools"].get(key) or (0, 0)
    input_tokens, output_tokens, reasoning, cached, total = (whole(value) for value in calls[1:6])
    return StatsGroup(
        key=None if key is None or by is None else str(key),
        runs=whole(runs[0]),
        statuses=RunStatuses(**{name: whole(count) for name, count in zip(_STATUSES, runs[1:6], strict=True)}),
        duration_s=spread(runs[6], runs[7], runs[8], *durations),
        llm_calls=whole(calls[0]),
        tokens=Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=total,
            reasoning_tokens=reasoning,
            cached_tokens=cached,
        ),
        ttft_s=spread(calls[6], calls[7], calls[8], *ttft),
        tool_calls=None if by == "model" else whole(tool_calls),
        tool_errors=None if by == "model" else whole(tool_errors),
        cost=StatsCost(
            usd=dollars(calls[10]),
            priced_calls=whole(calls[9]),
            unpriced_calls=whole(calls[0]) - whole(calls[9]),
            unpriced_tokens=whole(calls[11]),
        ),
    )
