"""``GET /threads/{thread_id}/stream``: every run of a thread, live (200, SSE); README.md,
"Watch, join, resume and cancel a run from any node". ``GET /threads/{thread_id}/state``:
the thread's latest checkpoint (README.md, "HTTP API")."""

# No ``from __future__ import annotations``: FastAPI reads these annotations at runtime.

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from ...core.cursors import ThreadCursor
from ...core.threadreplay import Reader
from ...core.threads import ThreadRecord
from ...core.threadstate import read_thread_state
from ...errors import KikiEventsError
from ..auth import Principal
from ..requests import MAX_CURSOR, MAX_RUN_ID, parse_cursor
from ..responses import SSE_OK, ThreadState, errors
from .context import FormatName, RouteContext, pick_format, raise_http
from .stored import stored_thread

__all__ = ["add_thread_state", "add_thread_stream"]

# What parse_cursor accepts on a thread stream, for the schema: ``<run_id>:<seq>`` only.
_THREAD_CURSOR = rf"^(?:[\s\S]{{1,{MAX_RUN_ID}}}:[0-9]{{1,18}})?$"

ThreadLastEventId = Annotated[
    str | None,
    Query(
        alias="last_event_id",
        description="resume after this event, `<run_id>:<seq>` (the `Last-Event-ID` header wins)",
        json_schema_extra={"maxLength": MAX_CURSOR, "pattern": _THREAD_CURSOR},
    ),
]


async def _find_thread(ctx: RouteContext, thread_id: str, principal: Principal) -> ThreadRecord:
    """The thread with its runs on every node; 404 if it is unknown or someone else's."""
    try:
        if ctx.bridge is None:
            return ctx.store.thread(thread_id, principal)
        return await ctx.bridge.open_thread(thread_id, principal)
    except KikiEventsError as exc:
        raise_http(exc)


def add_thread_stream(router: APIRouter, ctx: RouteContext) -> None:
    """``GET /threads/{thread_id}/stream``."""
    Caller = Annotated[Principal, Depends(ctx.principal)]
    store = ctx.store
    settings = ctx.settings

    @router.get(
        "/threads/{thread_id}/stream",
        operation_id="thread_stream",
        name="thread_stream",
        response_class=Response,
        responses={**SSE_OK, **errors(400, 401, 404, 406, 422, 503)},
    )
    async def thread_stream(
        request: Request,
        thread_id: str,
        principal: Caller,
        last_event_id: ThreadLastEventId = None,
        wire_format: FormatName = None,
    ) -> Response:
        """Every run of a thread (on any node), oldest first, then new runs as they start, in the format asked for."""
        fmt = pick_format(request, wire_format)
        history = ctx.runtime.history
        thread: ThreadRecord | None = None
        try:
            thread = await _find_thread(ctx, thread_id, principal)
        except HTTPException as exc:
            if exc.status_code != 404 or history is None:
                raise
        header = request.headers.get("last-event-id")
        resume = parse_cursor(header) if header else parse_cursor(last_event_id, name="last_event_id")
        if resume is not None and not resume[0]:
            raise HTTPException(400, "a thread stream resumes from '<run_id>:<seq>', not a bare seq")

        def follow(keep: Callable[[str], bool] | None, at: tuple[str, int] | None) -> ThreadCursor:
            assert thread is not None
            known = thread
            return ThreadCursor(
                thread_id,
                lambda: [log for log in store.thread_logs(known) if keep is None or keep(log.run_id)],
                known.changed,
                resume=at,
                slow_client=settings.sse.slow_client,
                on_lag=store.count_lagging,
                until=lambda: not store.following,
                max_backlog=settings.sse.max_backlog,
            )

        cursor: Reader
        if history is None and thread is not None:
            cursor = follow(None, resume)
        else:
            # With the store on: the thread's runs that left memory first, from the store.
            then = follow if thread is not None else None
            cursor = await stored_thread(ctx, thread_id, thread, principal, resume, then)
        location = request.url_for("thread_stream", thread_id=thread_id).path
        bridge = ctx.bridge
        lease = None
        if bridge is not None and thread is not None:
            lease = lambda: bridge.watch_thread(thread_id)  # noqa: E731 - taken when the body starts
        return ctx.stream(request, cursor, location, lease=lease, wire_format=fmt)


def _latest_graph(ctx: RouteContext, thread: ThreadRecord) -> str:
    """The graph of the thread's latest run still known (its owner's); 404 if none is served here."""
    for run_id in reversed(thread.runs):
        record = ctx.store.peek(run_id)
        if record is not None and record.principal == thread.principal and record.graph is not None:
            if record.graph not in ctx.runtime.graphs:
                raise HTTPException(404, f"thread {thread.thread_id!r} ran graph {record.graph!r}, not served here")
            return record.graph
    raise HTTPException(404, f"thread {thread.thread_id!r} has no run whose graph is known here")


def add_thread_state(router: APIRouter, ctx: RouteContext) -> None:
    """``GET /threads/{thread_id}/state``."""
    Caller = Annotated[Principal, Depends(ctx.principal)]

    @router.get(
        "/threads/{thread_id}/state",
        operation_id="thread_state",
        name="thread_state",
        response_model=ThreadState,
        responses=errors(401, 404, 422, 503),
    )
    async def thread_state(thread_id: str, principal: Caller) -> dict[str, Any]:
        """The thread's state as its checkpointer keeps it: values, next nodes and pending interrupts."""
        thread = await _find_thread(ctx, thread_id, principal)
        graph = _latest_graph(ctx, thread)
        try:
            state = await read_thread_state(ctx.runtime.graphs.get(graph), thread_id)
        except KikiEventsError as exc:
            raise_http(exc)
        return {"thread_id": thread_id, "graph": graph, **state}
