"""What the API answers, for its OpenAPI schema: bodies, status codes and headers.

The routes build their responses by hand (SSE bodies, ``JSONResponse``); these
models only document them, so ``/openapi.json`` describes every response a
client can get and a schema-driven fuzzer can check them.
"""

# No ``from __future__ import annotations``: FastAPI reads these models at runtime.

from typing import Any

from pydantic import BaseModel, Field

from ..core.runrecord import RunState
from ..events import EVENT_TYPES, Cost, Usage

__all__ = [
    "ERRORS",
    "SSE_EVENT",
    "SSE_OK",
    "CancelResult",
    "ErrorBody",
    "PendingInterrupt",
    "RunAccepted",
    "RunStatus",
    "ThreadState",
    "errors",
]


class ErrorBody(BaseModel):
    """The body of every 4xx and 5xx answer."""

    detail: str = Field(min_length=1)
    """What was wrong, naming the field, header or limit."""


class RunAccepted(BaseModel):
    """``202`` of ``POST /runs``."""

    run_id: str
    thread_id: str
    graph: str
    stream_url: str
    """``GET`` it to watch the run (SSE)."""
    status_url: str
    """``GET`` it for the run's status (also in ``Location``)."""


class RunStatus(BaseModel):
    """``GET /runs/{run_id}``: where a run executes and how it is doing."""

    run_id: str
    thread_id: str | None
    graph: str | None
    status: RunState
    node: str | None
    created_at: float
    ended_at: float | None
    last_seq: int = Field(ge=0)
    """Seq of the last event produced so far."""
    trace_id: str | None = None
    """The run's trace id (with ``langfuse`` tracing on, as on its ``done``); null when it is not traced."""
    usage: Usage | None = None
    """The run's token usage, as on its ``done``; null until it ended."""
    cost: Cost | None = None
    """What its LLM calls cost, as on its ``done``; null until it ended, or when the node has no ``prices``."""


class CancelResult(BaseModel):
    """``POST /runs/{run_id}/cancel``: 200 once the run ended, 202 while it stops."""

    run_id: str
    status: RunState
    detail: str | None = None


class PendingInterrupt(BaseModel):
    """An ``interrupt()`` of the thread's graph waiting for an answer."""

    id: str
    value: Any = None
    """What the graph passed to ``interrupt()`` (JSON-safe)."""


class ThreadState(BaseModel):
    """``GET /threads/{thread_id}/state``: the thread's latest checkpoint (``runs.checkpointer``)."""

    thread_id: str
    graph: str
    """The graph of the thread's latest run, whose checkpointer was read."""
    values: Any = Field(default_factory=dict)
    """The state's values; messages as dicts (``type``, ``content``, ``id``, ``name``, …)."""
    next: list[str] = Field(default_factory=list)
    """Nodes that run next when the thread continues (empty: the last run finished)."""
    interrupts: list[PendingInterrupt] = Field(default_factory=list)
    checkpoint_id: str | None = None
    """The checkpoint read; null if the thread has none yet."""
    created_at: str | None = None
    """When that checkpoint was written (ISO 8601)."""


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "string"}}}

ERRORS: dict[int, dict[str, Any]] = {
    400: {"description": "malformed `Last-Event-ID` (header or `last_event_id`) or `Content-Length`, unknown `format`"},
    401: {
        "description": "no principal (only with an auth hook)",
        "headers": {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    },
    404: {"description": "unknown graph, run or thread (also someone else's)"},
    406: {"description": "no wire format answers to `Accept` (the message lists the known formats)"},
    408: {"description": "the body did not arrive within `server.body_timeout` (the connection is closed)"},
    413: {"description": "the body is larger than `sse.max_body_bytes`"},
    422: {
        "description": "the body is not a valid run request, or a query or path parameter is invalid "
        "(the message names the field or parameter, e.g. `query.since: …`)"
    },
    429: {"description": "too many runs executing at once (`runs.max_active`)", "headers": _RETRY_AFTER},
    503: {
        "description": "shutting down, other nodes cannot be reached (with the cross-node bridge), "
        "or the event store cannot be read (history endpoints)"
    },
}
"""Every error status of the API, each with an :class:`ErrorBody`."""

SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "description": "one frame; `data` is compact JSON (README, wire format; `kiki-events schema` for the events)",
    "required": ["event", "data"],
    "properties": {
        "event": {"enum": list(EVENT_TYPES)},
        "id": {"type": "string", "pattern": "^.+:[0-9]+$", "description": "`<run_id>:<seq>` (notices have none)"},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": {"type": "object"}},
        "retry": {"type": "integer", "minimum": 0},
    },
}
"""Schema of one SSE frame as a client parses it (``event``, ``id``, ``data``, ``retry``)."""

SSE_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "an SSE stream: `retry:`, then one frame per event, `done` last",
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
    }
}
"""The ``200`` of the streaming endpoints."""


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entries of ``statuses``, each with an :class:`ErrorBody`."""
    return {status: {**ERRORS[status], "model": ErrorBody} for status in statuses}
