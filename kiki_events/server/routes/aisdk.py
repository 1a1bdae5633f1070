"""``POST /ai-sdk/{graph}`` and ``GET /ai-sdk/{graph}/{chat_id}/stream``: a graph as the
chat endpoint of the Vercel AI SDK's ``useChat`` (README.md, "AI SDK frontends").

``useChat`` (``DefaultChatTransport``, ``ai`` 5, 6 and 7) POSTs ``{id, messages, trigger,
messageId?, …}`` and reads the answer as a UI message stream (docs/sse.md, section
Vercel AI SDK):

* ``id`` (the chat id) is the run's thread, with the ownership rules of ``POST /runs``
  (a thread is its first principal's, a 404 for anyone else);
* the graph's input is the LAST message's text when it is a user message,
  ``{"messages": [{"role": "user", "content": text}]}`` (text parts joined); earlier
  turns come from the thread's checkpoints (``runs.checkpointer``), so the client's
  copy of them is not replayed;
* a ``resume`` field in the body (``useChat`` sends the app's extra ``body`` fields)
  answers the thread's pending interrupt instead: ``Command(resume=resume)``, as in
  ``POST /runs``;
* a last message from the assistant with tool parts in state ``approval-responded``
  (the SDK's tool approval answers, ``addToolApprovalResponse``) resumes too: one with
  ``Command(resume={"approved": bool, "reason": text})`` (``reason`` only when given),
  several with ``Command(resume={approval id: answer, ...})`` (the approval ids are the
  interrupt ids the stream sent in ``tool-approval-request``; one without an id is a 422).
  The answer continues that message: the stream's ``start`` carries its id (not the
  run id) and its tool calls get their outputs without being announced again, so the
  client goes on with the message and updates the parts it has.

``GET /ai-sdk/{graph}/{chat_id}/stream`` is the SDK's reconnect request
(``resumeStream()``, ``useChat({resume: true})``): the thread's latest run that has not
ended, from its start, or a 204 when none is running (also for a chat id never used);
a thread that is someone else's is a 404.
"""

# No ``from __future__ import annotations``: FastAPI reads these annotations at runtime.

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...core.runrecord import RunRecord
from ...errors import KikiEventsError, RunNotFoundError
from ...formats.aisdk import FORMAT as AISDK
from ...formats.aisdk import STREAM_HEADER, AISDKFormat
from ..auth import Principal
from ..requests import RunRequest, ThreadId, describe_body_error, inlined_schema
from ..responses import errors
from .context import RouteContext, raise_http
from .stored import backfilled

__all__ = ["ChatRequest", "add_aisdk_chat", "add_aisdk_reconnect"]


class Approval(BaseModel):
    """A person's answer to a tool approval request."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    approved: bool
    reason: str | None = None


class UIPart(BaseModel):
    """One part of a message (``text``, ``tool-<name>``, ``dynamic-tool`` …; only some fields are read)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    type: Annotated[str, Field(min_length=1)]
    text: str | None = None
    state: str | None = None
    tool_call_id: str | None = Field(default=None, alias="toolCallId")
    approval: Approval | None = None


class UIMessage(BaseModel):
    """One message of the chat as the client has it."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    role: Literal["user", "assistant", "system"]
    parts: list[UIPart]


class ChatRequest(BaseModel):
    """What the server reads of a ``useChat`` request body (other fields are ignored)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: ThreadId
    """The chat id: the thread the run goes on."""
    messages: list[UIMessage] = Field(min_length=1)
    """The whole conversation as the client has it; only the last message is read."""
    trigger: Literal["submit-message", "regenerate-message"] | None = None
    message_id: str | None = Field(default=None, alias="messageId")
    resume: Any = None
    """An app's answer to the thread's pending interrupt (an extra ``body`` field): ``Command(resume=resume)``."""


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Validate a ``useChat`` body; 422 naming the field."""
    try:
        return ChatRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise HTTPException(422, describe_body_error(exc, "a useChat request")) from None


def _approval_answer(body: ChatRequest) -> Any:
    """The resume value of the ``approval-responded`` tool parts of the last message, if it is the assistant's."""
    index = len(body.messages) - 1
    last = body.messages[index]
    if last.role != "assistant":
        return None
    answered = [part.approval for part in last.parts if part.state == "approval-responded" and part.approval]
    answers: dict[str, dict[str, Any]] = {}
    for approval in answered:
        answer: dict[str, Any] = {"approved": approval.approved}
        if approval.reason is not None:
            answer["reason"] = approval.reason
        if len(answered) == 1:
            return answer
        if not approval.id:
            raise HTTPException(
                422,
                f"messages.{index}.parts: {len(answered)} tool approvals answered at once and one has no "
                "approval id; answer one at a time, or send 'resume' with the answers",
            )
        answers[approval.id] = answer
    return answers or None


def answer_format(body: ChatRequest, resumes: bool) -> AISDKFormat:
    """The stream's format: plain, or continuing the client's last (assistant) message when the run resumes."""
    last = body.messages[-1]
    if not resumes or last.role != "assistant":
        return AISDK
    calls = frozenset(part.tool_call_id for part in last.parts if part.tool_call_id)
    return AISDKFormat(calls, last.id)


def run_request(graph: str, body: ChatRequest) -> RunRequest:
    """The run a ``useChat`` request asks for (see the module docstring); 422 naming the problem."""
    common: dict[str, Any] = {"graph": graph, "thread_id": body.id}
    answer = body.resume if body.resume is not None else _approval_answer(body)
    if answer is not None:
        common["resume"] = answer
    else:
        index = len(body.messages) - 1
        last = body.messages[index]
        if last.role != "user":
            raise HTTPException(
                422, f"messages.{index}.role: the last message is the {last.role}'s; nothing to answer (and no resume)"
            )
        text = "".join(part.text for part in last.parts if part.type == "text" and part.text)
        if not text:
            raise HTTPException(422, f"messages.{index}.parts: the last user message has no text part")
        common["message"] = text
    try:
        return RunRequest.model_validate(common)
    except ValidationError as exc:
        raise HTTPException(422, describe_body_error(exc, "a useChat request")) from None


_STREAM_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the AI SDK UI message stream (`data: <json>` chunks, `start` first, `finish` or `abort` "
        "last, then `data: [DONE]`), with the header `x-vercel-ai-ui-message-stream: v1`",
        "headers": {STREAM_HEADER: {"schema": {"type": "string", "const": "v1"}}},
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {"data": {"type": "string"}},
                }
            }
        },
    }
}


_SCHEMA = inlined_schema(ChatRequest)

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": _SCHEMA,
                "example": {
                    "id": "chat-1",
                    "trigger": "submit-message",
                    "messages": [
                        {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "Compare Redis streams"}]}
                    ],
                },
            }
        },
    }
}


def add_aisdk_chat(router: APIRouter, ctx: RouteContext) -> None:
    """``POST /ai-sdk/{graph}``: run ``graph`` for ``useChat`` and stream the UI message stream (200, SSE)."""
    Caller = Annotated[Principal, Depends(ctx.principal)]

    @router.post(
        "/ai-sdk/{graph}",
        operation_id="run_aisdk_chat",
        openapi_extra=_BODY_DOC,
        response_class=Response,
        responses={**_STREAM_OK, **errors(400, 401, 404, 408, 413, 422, 429, 503)},
    )
    async def run_aisdk_chat(request: Request, graph: str, principal: Caller) -> Response:
        """Run ``graph`` on the chat's thread for a ``useChat`` request and stream the AI SDK UI message stream."""
        raw = await ctx.read_body_for(request, graph)
        body = parse_chat_request(raw)
        run = run_request(graph, body)
        handle = await ctx.start(run, principal)
        wire_format = answer_format(body, run.resume is not None)
        reader = backfilled(ctx, handle.record, 0, principal)
        return ctx.stream_started(request, handle, principal, wire_format=wire_format, reader=reader)


async def _active_run(ctx: RouteContext, chat_id: str, principal: Principal) -> RunRecord | None:
    """The thread's latest run that has not ended (``None``: none); 404 if the thread is someone else's."""
    try:
        if ctx.bridge is None:
            thread = ctx.store.thread(chat_id, principal)
        else:
            thread = await ctx.bridge.open_thread(chat_id, principal)
    except RunNotFoundError:
        if not ctx.store.threads.owns(chat_id, principal):
            raise HTTPException(404, f"chat {chat_id!r} not found") from None
        return None  # never used (or forgotten): nothing is running
    except KikiEventsError as exc:
        raise_http(exc)
    for run_id in reversed(thread.runs):
        record = ctx.store.peek(run_id)
        if record is not None and record.principal == thread.principal and not record.ended:
            return await ctx.find_run(run_id, principal)
    return None


def add_aisdk_reconnect(router: APIRouter, ctx: RouteContext) -> None:
    """``GET /ai-sdk/{graph}/{chat_id}/stream``: the chat's running answer from its start (200 SSE, 204 if none)."""
    Caller = Annotated[Principal, Depends(ctx.principal)]

    @router.get(
        "/ai-sdk/{graph}/{chat_id}/stream",
        operation_id="reconnect_aisdk_chat",
        response_class=Response,
        responses={
            **_STREAM_OK,
            204: {"description": "no run of the chat is active: nothing to reconnect to"},
            **errors(401, 404, 422, 503),
        },
    )
    async def reconnect_aisdk_chat(request: Request, graph: str, chat_id: ThreadId, principal: Caller) -> Response:
        """The chat's active run, streamed from its start as a UI message stream; 204 when none is running."""
        if graph not in ctx.runtime.graphs.names():
            raise HTTPException(404, f"unknown graph {graph!r}")
        record = await _active_run(ctx, chat_id, principal)
        if record is None:
            return Response(status_code=204)
        bridge = ctx.bridge
        lease = None
        if bridge is not None and ctx.is_remote(record) and not record.ended:
            run_id = record.run_id
            lease = lambda: bridge.watch_run(run_id)  # noqa: E731 - taken when the body starts
        cursor = backfilled(ctx, record, 0, principal) or ctx.run_cursor(record.log, 0, record.thread_id)
        location = ctx.run_url(request, record.run_id)
        return ctx.stream(request, cursor, location, record.run_id, lease=lease, wire_format=AISDK)
