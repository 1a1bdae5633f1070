"""The bodies of the history endpoints: their models (for the OpenAPI schema) and their JSON.

A run is :class:`~kiki_events.history.StoredRun`'s fields except its owner; an event
is exactly its compact JSON (:func:`kiki_events.codec.encode`: no ``null`` fields).
"""

# No ``from __future__ import annotations``: FastAPI reads these models at runtime.

import json
from typing import Any

from fastapi import Response
from pydantic import BaseModel, Field

from ..codec import encode
from ..events import EVENT_TYPES, StreamEvent, Usage
from ..history import Causation, EventPage, Link, StoredRun

__all__ = [
    "CURSOR_HEADER",
    "NDJSON",
    "CausationBody",
    "EventList",
    "HistoryRun",
    "RunList",
    "causation_json",
    "event_page_response",
    "run_json",
]

CURSOR_HEADER = "X-Kiki-Cursor"
"""With JSON lines: the cursor of the next page (absent on the last page)."""
NDJSON = "application/x-ndjson"

_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "an event as its compact JSON (no null fields); `kiki-events schema` has every type",
    "required": ["run_id", "seq", "ts", "type"],
    "properties": {"type": {"enum": list(EVENT_TYPES)}, "run_id": {"type": "string"}, "seq": {"type": "integer"}},
}


class HistoryRun(BaseModel):
    """A stored run with its totals (``GET /runs``)."""

    run_id: str
    thread_id: str | None
    graph: str | None
    node: str | None
    """The node that ran it."""
    status: str
    """``running`` until its ``done`` is stored, then ``success``, ``error``, ``interrupted`` or ``cancelled``."""
    started_at: float
    ended_at: float | None
    duration_s: float | None
    last_seq: int
    events: int
    llm_calls: int
    tool_calls: int
    tool_errors: int
    errors: int
    usage: Usage
    agents: list[str]
    causation_id: str | None
    caused_by: str | None
    relayed_into: str | None
    trace_id: str | None
    cost_usd: float | None


class RunList(BaseModel):
    """``GET /runs``: a page of runs, newest first."""

    runs: list[HistoryRun]
    cursor: str | None = Field(description="pass it as `cursor` (same filters) for the next page; null: the last")


class EventList(BaseModel):
    """A page of events (``format=json``)."""

    events: list[dict[str, Any]] = Field(json_schema_extra={"items": _EVENT_SCHEMA})
    cursor: str | None = Field(description="pass it as `cursor` (same filters) for the next page; null: the last")


class LinkBody(BaseModel):
    """A run in a causation chain."""

    run: HistoryRun
    depth: int = Field(ge=1)
    via: str | None


class CausationBody(BaseModel):
    """``GET /runs/{run_id}/causation`` and ``GET /events/{event_id}/causation``."""

    run: HistoryRun
    event: dict[str, Any] | None = Field(json_schema_extra={"anyOf": [_EVENT_SCHEMA, {"type": "null"}]})
    causes: list[LinkBody]
    """The runs that led to it, nearest first."""
    effects: list[LinkBody]
    """The runs it caused, breadth first."""


def run_json(run: StoredRun) -> dict[str, Any]:
    """``run`` as a JSON object (every field of :class:`HistoryRun`)."""
    return {
        "run_id": run.run_id,
        "thread_id": run.thread_id,
        "graph": run.graph,
        "node": run.node,
        "status": run.status,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "duration_s": run.duration_s,
        "last_seq": run.last_seq,
        "events": run.events,
        "llm_calls": run.llm_calls,
        "tool_calls": run.tool_calls,
        "tool_errors": run.tool_errors,
        "errors": run.errors,
        "usage": run.usage.model_dump(),
        "agents": list(run.agents),
        "causation_id": run.causation_id,
        "caused_by": run.caused_by,
        "relayed_into": run.relayed_into,
        "trace_id": run.trace_id,
        "cost_usd": run.cost_usd,
    }


def _event(event: StreamEvent) -> Any:
    return json.loads(encode(event))


def _link(link: Link) -> dict[str, Any]:
    return {"run": run_json(link.run), "depth": link.depth, "via": link.via}


def causation_json(chain: Causation) -> dict[str, Any]:
    """``chain`` as a JSON object (:class:`CausationBody`)."""
    return {
        "run": run_json(chain.run),
        "event": _event(chain.event) if chain.event is not None else None,
        "causes": [_link(link) for link in chain.causes],
        "effects": [_link(link) for link in chain.effects],
    }


def event_page_response(page: EventPage, *, lines: bool) -> Response:
    """``page`` as ``{"events": [...], "cursor": …}``, or as JSON lines with the cursor in :data:`CURSOR_HEADER`."""
    if lines:
        headers = {CURSOR_HEADER: page.cursor} if page.cursor is not None else {}
        body = b"".join(encode(event) + b"\n" for event in page.events)
        return Response(body, media_type=NDJSON, headers=headers)
    cursor = json.dumps(page.cursor).encode()
    body = b'{"events":[' + b",".join(encode(event) for event in page.events) + b'],"cursor":' + cursor + b"}"
    return Response(body, media_type="application/json")
