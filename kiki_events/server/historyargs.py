"""The query parameters of the history endpoints (:mod:`.routes.history`, :mod:`.routes.events`).

Times (``since``, ``until``) are Unix seconds (``1767225600``, ``1767225600.5``), ISO 8601
(``2026-01-01T00:00:00Z``; a time without a zone is UTC) or a duration ago (``90s``,
``15m``, ``24h``, ``7d``, ``2w``). A value none of these is a 422 naming the parameter.
"""

# No ``from __future__ import annotations``: FastAPI reads these annotations at runtime.

import math
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from fastapi import HTTPException, Query, Request
from pydantic import StringConstraints

from ..events import EventType
from ..history import StoredStatus
from ..history.queries import MAX_LIMIT

__all__ = [
    "MAX_TYPES",
    "AfterQuery",
    "AgentQuery",
    "CursorQuery",
    "PageFormat",
    "StatusQuery",
    "TimeQuery",
    "TypesQuery",
    "bad_parameter",
    "check_types",
    "limit_query",
    "parse_time",
    "wants_lines",
]

MAX_TYPES = 32
"""Largest number of ``type`` values one request may give."""

_AGO = re.compile(r"^([0-9]{1,9})(s|m|h|d|w)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_NUMBER = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,9})?$")
_TIME_DOC = (
    "Unix seconds, ISO 8601 (`2026-01-01T00:00:00Z`; UTC without a zone) or a duration ago (`90s`, `15m`, `24h`, `7d`)"
)

TimeQuery = Annotated[str | None, Query(description=_TIME_DOC, max_length=64)]
"""``since`` / ``until``; parse with :func:`parse_time`."""
CursorQuery = Annotated[
    str | None,
    Query(description="the `cursor` of the previous page (same filters); omitted: the first page", max_length=512),
]
AgentQuery = Annotated[
    str | None,
    Query(description="an agent path; its sub-agents match too (`research` matches `research/writer`)", max_length=512),
]
TypesQuery = Annotated[
    list[EventType] | None,
    Query(alias="type", description="event types to keep (repeat it for several); omitted: every type"),
]
_STATUS = "(?:" + "|".join(get_args(StoredStatus)) + ")"
_Statuses = Annotated[str, StringConstraints(pattern=rf"^{_STATUS}(?:,{_STATUS})*$", max_length=128)]
StatusQuery = Annotated[
    list[_Statuses] | None,
    Query(
        max_length=16,
        description="runs in one of these statuses, repeated or comma-separated: " + ", ".join(get_args(StoredStatus)),
    ),
]
"""``status`` of ``GET /runs`` and ``GET /stats``; parse with :func:`~kiki_events.history.parse_statuses`."""
AfterQuery = Annotated[int, Query(ge=0, le=10**18, description="only events with a seq above this")]
PageFormat = Annotated[
    Literal["json", "jsonl"] | None,
    Query(
        alias="format",
        description="`json` (a page) or `jsonl` (one event per line); default: by `Accept` (`application/x-ndjson`)",
    ),
]


def bad_parameter(name: str, problem: str) -> HTTPException:
    """The 422 of a query parameter whose value is wrong (``query.<name>: <problem>``)."""
    return HTTPException(422, f"query.{name}: {problem}")


def parse_time(name: str, value: str | None, now: float | None = None) -> float | None:
    """``value`` of the parameter ``name`` as Unix seconds (``None`` when not given); 422 when unreadable."""
    if value is None:
        return None
    text = value.strip()
    if _NUMBER.match(text):
        return float(text)
    ago = _AGO.match(text)
    if ago:
        return (time.time() if now is None else now) - int(ago.group(1)) * _UNIT[ago.group(2)]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise bad_parameter(
            name, f"expected Unix seconds, ISO 8601 or a duration ago like 24h, got {value[:64]!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    stamp = moment.timestamp()
    if not math.isfinite(stamp):
        raise bad_parameter(name, f"not a time: {value[:64]!r}")
    return stamp


def check_types(types: list[EventType] | None) -> list[str]:
    """The ``type`` values (422 when there are more than :data:`MAX_TYPES`)."""
    values: list[str] = list(types or ())
    if len(values) > MAX_TYPES:
        raise bad_parameter("type", f"at most {MAX_TYPES} values")
    return values


def wants_lines(request: Request, fmt: str | None) -> bool:
    """Whether the events are sent as JSON lines: ``format=jsonl``, or ``Accept: application/x-ndjson``."""
    if fmt is not None:
        return fmt == "jsonl"
    accept = request.headers.get("accept", "")
    kinds = {part.split(";")[0].strip() for part in accept.split(",")}
    return bool(kinds & {"application/x-ndjson", "application/jsonl"})


def limit_query(default: int) -> Any:
    """The ``limit`` parameter (1 to :data:`MAX_LIMIT`)."""
    return Query(ge=1, le=MAX_LIMIT, description=f"items per page, 1 to {MAX_LIMIT} (default {default})")
