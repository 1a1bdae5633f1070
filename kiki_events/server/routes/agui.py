"""``POST /ag-ui/{graph}``: a graph as an AG-UI agent (README.md, "AG-UI frontends").

An AG-UI client (``@ag-ui/client``'s ``HttpAgent``, CopilotKit …) POSTs a
``RunAgentInput`` and reads the run back as AG-UI events (docs/sse.md, section AG-UI):

* ``threadId`` is the run's thread, with the ownership rules of ``POST /runs`` (a
  thread is its first principal's, a 404 for anyone else);
* the graph's input is the LAST user message, ``{"messages": [{"role": "user",
  "content": text}]}`` (text parts joined); earlier turns come from the thread's
  checkpoints (``runs.checkpointer``), so the client's copy of them is not replayed;
* ``resume`` answers the interrupts of the thread's previous run instead:
  ``Command(resume=payload)`` for one entry, ``{interruptId: payload}`` for several.
  Every entry must be ``resolved`` with a payload: a ``cancelled`` entry (or one
  without a payload) is a 422 naming it, since LangGraph has no "declined" answer
  and an empty one would not resume anything; a client that lets a person decline
  sends that as a payload (``"no"``), or sends a new message instead;
* the events' ``runId`` / ``threadId`` on ``RUN_STARTED`` and ``RUN_FINISHED`` are
  the ones the client sent (our run id is in the ``X-Kiki-Run-Id`` header, the
  ``kiki.*`` events and the run's metadata key ``kiki_agui_run_id`` holds the client's);
* ``protocolVersion`` picks the events: absent or 0.x → 0.0.x, else 1.0.

The body is read like a run body (``sse.max_body_bytes``, ``server.body_timeout``)
and validated by ``ag_ui.core.RunAgentInput`` when the ``ag-ui-protocol`` package is
installed; the server only needs :class:`AgentInput`, the fields it reads, and
ignores the rest (``tools``, ``context``, ``state``, ``forwardedProps``).
"""

# No ``from __future__ import annotations``: FastAPI reads these annotations at runtime.

import importlib
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...formats import Encoder, Format
from ...formats.agui import FORMAT as AGUI
from ..auth import Principal
from ..requests import RunRequest, ThreadId, describe_body_error, inlined_schema
from ..responses import errors
from .context import RouteContext
from .stored import backfilled

__all__ = ["AgentInput", "add_agui_run"]


def _official_model() -> Any:
    """``ag_ui.core.RunAgentInput`` when the package is installed (a development dependency), else ``None``."""
    try:
        return importlib.import_module("ag_ui.core").RunAgentInput
    except ImportError:  # pragma: no cover - the server runs without it
        return None


_OFFICIAL = _official_model()


class InputMessage(BaseModel):
    """One message of the conversation as the client has it (only user messages are read)."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    role: str
    content: str | list[dict[str, Any]] | None = None
    """Text, or parts (``{"type": "text", "text": …}``; other parts are skipped)."""


class ResumeEntry(BaseModel):
    """The answer to one interrupt of the thread's previous run."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    interrupt_id: str = Field(alias="interruptId", min_length=1)
    status: Literal["resolved", "cancelled"]
    payload: Any = None


class AgentInput(BaseModel):
    """What the server reads of an AG-UI ``RunAgentInput`` (camelCase; other fields are ignored)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    thread_id: ThreadId = Field(alias="threadId")
    run_id: Annotated[str, Field(alias="runId", min_length=1, max_length=200)]
    messages: list[InputMessage] = Field(default_factory=list)
    protocol_version: str | None = Field(default=None, alias="protocolVersion", max_length=40)
    resume: list[ResumeEntry] | None = None
    parent_run_id: str | None = Field(default=None, alias="parentRunId")
    state: Any = None
    forwarded_props: Any = Field(default=None, alias="forwardedProps")


class _AGUIStream(Format):
    """The AG-UI format for one request: its protocol version and the client's ids."""

    name = AGUI.name
    media_type = AGUI.media_type
    cacheable = False

    def __init__(self, body: AgentInput) -> None:
        self._body = body

    def encoder(self) -> Encoder:
        body = self._body
        return AGUI.encoder_for(body.protocol_version, run_id=body.run_id, thread_id=body.thread_id)


def parse_agent_input(raw: bytes) -> AgentInput:
    """Validate a ``RunAgentInput`` body; 422 naming the field."""
    try:
        if _OFFICIAL is not None:
            _OFFICIAL.model_validate_json(raw)
        return AgentInput.model_validate_json(raw)
    except ValidationError as exc:
        raise HTTPException(422, describe_body_error(exc, "an AG-UI RunAgentInput")) from None


def _text(message: InputMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    parts = message.content or []
    return "".join(part["text"] for part in parts if part.get("type") == "text" and isinstance(part.get("text"), str))


def _resume_value(entries: list[ResumeEntry]) -> Any:
    for index, entry in enumerate(entries):
        if entry.status != "resolved":
            raise HTTPException(
                422,
                f"resume.{index}.status: {entry.status!r} is not supported: answer the interrupt "
                "with status 'resolved' and a payload (e.g. 'no'), or send a new message instead",
            )
        if entry.payload is None:
            raise HTTPException(422, f"resume.{index}.payload: a resolved interrupt needs a payload")
    if len(entries) == 1:
        return entries[0].payload
    return {entry.interrupt_id: entry.payload for entry in entries}


def run_request(graph: str, body: AgentInput) -> RunRequest:
    """The run an AG-UI request asks for (see the module docstring); 422 naming the problem."""
    common: dict[str, Any] = {
        "graph": graph,
        "thread_id": body.thread_id,
        "metadata": {"kiki_agui_run_id": body.run_id},
    }
    if body.resume:
        common["resume"] = _resume_value(body.resume)
    else:
        users = [(index, m) for index, m in enumerate(body.messages) if m.role == "user"]
        if not users:
            raise HTTPException(422, "messages: no user message to answer (and no resume)")
        index, last = users[-1]
        text = _text(last)
        if not text:
            raise HTTPException(422, f"messages.{index}.content: the last user message has no text")
        common["message"] = text
    try:
        return RunRequest.model_validate(common)
    except ValidationError as exc:
        raise HTTPException(422, describe_body_error(exc, "an AG-UI RunAgentInput")) from None


_SSE_AGUI: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "an SSE stream of AG-UI events (`data: <json>` frames): `RUN_STARTED` first, "
        "`RUN_FINISHED` or `RUN_ERROR` last",
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {"data": {"type": "string", "contentMediaType": "application/json"}},
                }
            }
        },
    }
}


_SCHEMA = inlined_schema(AgentInput)

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": _SCHEMA,
                "example": {
                    "threadId": "chat-1",
                    "runId": "run-1",
                    "protocolVersion": "1.0",
                    "messages": [{"id": "m1", "role": "user", "content": "Compare Redis streams and pub/sub"}],
                    "state": {},
                    "tools": [],
                    "context": [],
                    "forwardedProps": {},
                },
            }
        },
    }
}


def add_agui_run(router: APIRouter, ctx: RouteContext) -> None:
    """``POST /ag-ui/{graph}``: run ``graph`` for an AG-UI client and stream AG-UI events (200, SSE)."""
    Caller = Annotated[Principal, Depends(ctx.principal)]

    @router.post(
        "/ag-ui/{graph}",
        operation_id="run_agui_agent",
        openapi_extra=_BODY_DOC,
        response_class=Response,
        responses={**_SSE_AGUI, **errors(400, 401, 404, 408, 413, 422, 429, 503)},
    )
    async def run_agui_agent(request: Request, graph: str, principal: Caller) -> Response:
        """Run ``graph`` on ``threadId`` for an AG-UI ``RunAgentInput`` and stream the AG-UI events."""
        raw = await ctx.read_body_for(request, graph)
        body = parse_agent_input(raw)
        handle = await ctx.start(run_request(graph, body), principal)
        reader = backfilled(ctx, handle.record, 0, principal)
        return ctx.stream_started(request, handle, principal, wire_format=_AGUIStream(body), reader=reader)
