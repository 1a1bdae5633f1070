"""The SQL both backends share: columns, statements, cursors and rows made into results.

Statements are written with ``?`` placeholders (SQLite's); the PostgreSQL backend
turns them into ``%s``. Null-safe comparison differs (``IS`` / ``IS NOT DISTINCT
FROM``) and is passed in as ``same``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from typing import Any

from ..codec import decode
from ..errors import InvalidArgumentError
from ..events import StreamEvent, Usage
from .base import ANYONE, Anyone, Principal, StoredRun

__all__ = [
    "AGENT_INSERT",
    "EVENT_CONFLICT",
    "EVENT_INSERT",
    "IN_COLUMNS",
    "RUN_COLUMNS",
    "RUN_UPSERT",
    "THREAD_INSERT",
    "EventRow",
    "agent_clause",
    "caused_by",
    "decode_cursor",
    "encode_cursor",
    "event_from_row",
    "event_row",
    "in_list",
    "run_from_row",
    "visible_clause",
]

RUN_COLUMNS: tuple[str, ...] = (
    "run_id",
    "thread_id",
    "graph",
    "principal",
    "node",
    "status",
    "causation_id",
    "caused_by",
    "relayed_into",
    "trace_id",
    "started_at",
    "ended_at",
    "duration_s",
    "last_seq",
    "events",
    "llm_calls",
    "tool_calls",
    "tool_errors",
    "errors",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "reasoning_tokens",
    "cached_tokens",
    "cost_usd",
)
"""The columns of ``runs``, in the order of a :data:`~.base.RunRow`."""

_KEPT = ("thread_id", "graph", "principal", "node", "causation_id", "caused_by", "relayed_into", "trace_id")
"""Columns a later row without a value does not blank out."""
_COUNTED = tuple(c for c in RUN_COLUMNS if c not in _KEPT and c not in ("run_id", "started_at"))

RUN_UPSERT = (
    f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))}) "
    "ON CONFLICT (run_id) DO UPDATE SET "
    + ", ".join([f"{c} = COALESCE(excluded.{c}, runs.{c})" for c in _KEPT] + [f"{c} = excluded.{c}" for c in _COUNTED])
    + " WHERE excluded.last_seq >= runs.last_seq"
)
"""Writes a run's whole row; an older row (a lower ``last_seq``) never overwrites a newer one."""

EVENT_CONFLICT = (
    "ON CONFLICT (run_id, seq) DO UPDATE SET ts = excluded.ts, type = excluded.type, agent = excluded.agent, "
    "body = excluded.body, span = excluded.span WHERE excluded.span > events.span"
)
"""A row already stored with the same first seq stays, unless the new one holds more events."""
EVENT_INSERT = (
    f"INSERT INTO events (run_id, seq, ts, type, agent, body, span) VALUES (?, ?, ?, ?, ?, ?, ?) {EVENT_CONFLICT}"
)
AGENT_INSERT = "INSERT INTO run_agents (run_id, agent) VALUES (?, ?) ON CONFLICT (run_id, agent) DO NOTHING"
THREAD_INSERT = (
    "INSERT INTO threads (thread_id, principal, created_at) VALUES (?, ?, ?) ON CONFLICT (thread_id) DO NOTHING"
)

IN_COLUMNS = {"run_id", "seq", "ts", "type", "agent", "v"}
"""Envelope fields kept in columns of ``events``, so not repeated in its ``body``."""

EventRow = tuple[str, int, float, str, str | None, bytes, int]
"""A row of ``events``: ``(run_id, seq, ts, type, agent, body, span)`` (``span``: the events it
holds, :mod:`.packing`)."""


def event_row(event: StreamEvent) -> EventRow:
    """``event`` as a row of its own: the body holds the fields not in a column, as compact JSON."""
    body = type(event).__pydantic_serializer__.to_json(event, exclude=IN_COLUMNS, exclude_none=True)
    return (event.run_id, event.seq, event.ts, event.type, event.agent, body, 1)


def event_from_row(row: Sequence[Any]) -> StreamEvent:
    """The event in a row of ``events`` holding one (its first six columns), validated as ``codec.decode`` validates."""
    run_id, seq, ts, kind, agent, body = row[:6]
    rest = bytes(body)
    head = f'{{"run_id":{json.dumps(run_id)},"seq":{int(seq)},"ts":{float(ts)!r},"type":{json.dumps(kind)}'
    if agent is not None:
        head += f',"agent":{json.dumps(agent)}'
    return decode(head.encode() + (b"," + rest[1:] if rest != b"{}" else b"}"))


_EVENT_ID = re.compile(r"^(.+):([0-9]+)$")


def caused_by(causation_id: str | None) -> str | None:
    """The run a causation id points at: the run part of an event id (``run:seq``), or the id itself."""
    if causation_id is None:
        return None
    match = _EVENT_ID.match(causation_id)
    return match.group(1) if match else causation_id


def split_event_id(event_id: str) -> tuple[str, int]:
    """``"<run_id>:<seq>"`` → ``(run_id, seq)``.

    Raises:
        InvalidArgumentError: not an event id.
    """
    match = _EVENT_ID.match(event_id)
    if match is None:
        raise InvalidArgumentError(f"not an event id (<run_id>:<seq>): {event_id[:140]!r}")
    return match.group(1), int(match.group(2))


def visible_clause(principal: Principal, same: str, alias: str = "r") -> tuple[str, list[object]]:
    """SQL (and its parameters) that keeps only the runs ``principal`` may see."""
    if isinstance(principal, Anyone):
        return "1 = 1", []
    sql = (
        f"{alias}.principal {same} ? AND ({alias}.thread_id IS NULL OR EXISTS "
        f"(SELECT 1 FROM threads t WHERE t.thread_id = {alias}.thread_id AND t.principal {same} ?))"
    )
    return sql, [principal, principal]


def owner_clause(owner: Principal, same: str) -> tuple[str, list[object]]:
    """SQL keeping the runs of ``owner`` (every run for :data:`ANYONE`)."""
    if owner is ANYONE:
        return "1 = 1", []
    return f"r.principal {same} ?", [owner]


def agent_clause(agent: str, column: str) -> tuple[str, list[object]]:
    """SQL matching ``agent`` and the agents below it (``research`` matches ``research/writer``)."""
    prefix = agent + "/"
    return f"({column} = ? OR substr({column}, 1, ?) = ?)", [agent, len(prefix), prefix]


def in_list(column: str, values: Sequence[object]) -> tuple[str, list[object]]:
    """``column IN (?, ?, …)`` for ``values`` (never empty)."""
    return f"{column} IN ({', '.join('?' * len(values))})", list(values)


def encode_cursor(*key: object) -> str:
    """An opaque cursor holding ``key`` (the sort key of the last item returned)."""
    return base64.urlsafe_b64encode(json.dumps(list(key), separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kinds: Sequence[type]) -> list[Any]:
    """The key in ``cursor``, checked against ``kinds``.

    Raises:
        InvalidArgumentError: the cursor was not made by this query.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (binascii.Error, ValueError):
        raise InvalidArgumentError(f"invalid cursor {cursor[:60]!r}") from None
    valid = isinstance(key, list) and len(key) == len(kinds)
    if valid:
        for value, kind in zip(key, kinds, strict=True):
            number = isinstance(value, int | float) and not isinstance(value, bool)
            valid = valid and (number if kind is float else type(value) is kind)
    if not valid:
        raise InvalidArgumentError(f"invalid cursor {cursor[:60]!r}")
    return list(key)


def run_from_row(row: Sequence[Any], agents: Sequence[str] = ()) -> StoredRun:
    """A :class:`StoredRun` from a row of :data:`RUN_COLUMNS`."""
    values = dict(zip(RUN_COLUMNS, row, strict=True))
    usage = Usage(
        input_tokens=values.pop("input_tokens"),
        output_tokens=values.pop("output_tokens"),
        total_tokens=values.pop("total_tokens"),
        reasoning_tokens=values.pop("reasoning_tokens"),
        cached_tokens=values.pop("cached_tokens"),
    )
    if values["cost_usd"] is not None:
        values["cost_usd"] = float(values["cost_usd"])
    return StoredRun(usage=usage, agents=tuple(sorted(agents)), **values)
