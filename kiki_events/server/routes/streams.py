"""The SSE endpoints of one run: ``POST /runs/stream`` (start and stream) and
``GET /runs/{run_id}/stream`` (join or resume); README.md, "Serve it over SSE"."""

# No ``from __future__ import annotations``: FastAPI reads these annotations at runtime.

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from ..auth import Principal
from ..requests import MAX_CURSOR, MAX_RUN_ID, parse_cursor, parse_run_request
from ..responses import SSE_OK, errors
from .context import FormatName, RouteContext, pick_format
from .stored import backfilled, ended_in_store, stored_run_stream

__all__ = ["add_join_run_stream", "add_start_run_stream"]

# What parse_cursor accepts, for the schema: ``<run_id>:<seq>`` or a bare ``<seq>``.
_RUN_CURSOR = rf"^(?:(?:[\s\S]{{1,{MAX_RUN_ID}}}:)?[0-9]{{1,18}})?$"

# Documented, and checked with the rest of the cursor: 400 naming the problem, as for the header.
RunLastEventId = Annotated[
    str | None,
    Query(
        alias="last_event_id",
        description="resume after this event, `<run_id>:<seq>` or `<seq>` (the `Last-Event-ID` header wins)",
        json_schema_extra={"maxLength": MAX_CURSOR, "pattern": _RUN_CURSOR},
    ),
]


def add_start_run_stream(router: APIRouter, ctx: RouteContext) -> None:
    """``POST /runs/stream``: start a run and stream it (200, SSE)."""
    Caller = Annotated[Principal, Depends(ctx.principal)]
    settings = ctx.settings

    @router.post(
        "/runs/stream",
        operation_id="start_run_stream",
        openapi_extra=ctx.run_body_doc,
        response_class=Response,
        responses={**SSE_OK, **errors(400, 401, 404, 406, 408, 413, 422, 429, 503)},
    )
    async def start_run_stream(request: Request, principal: Caller, wire_format: FormatName = None) -> Response:
        """Start a run and stream its events, in the format asked for; the last frame is ``done``'s."""
        fmt = pick_format(request, wire_format)  # before the run starts: a refused format starts nothing
        body = await parse_run_request(request, settings.sse.max_body_bytes, settings.server.body_timeout)
        handle = await ctx.start(body, principal)
        reader = backfilled(ctx, handle.record, 0, principal)  # a slow client reads what the buffer dropped
        return ctx.stream_started(request, handle, principal, body.on_disconnect, wire_format=fmt, reader=reader)


def _resume_after(request: Request, run_id: str, last_event_id: str | None) -> int:
    """The seq a join resumes after (``Last-Event-ID`` header, else the query); 400 if it is of another run."""
    header = request.headers.get("last-event-id")
    cursor_at = parse_cursor(header) if header else parse_cursor(last_event_id, name="last_event_id")
    if cursor_at is None:
        return 0
    cursor_run, after = cursor_at
    if cursor_run and cursor_run != run_id:
        raise HTTPException(400, f"Last-Event-ID points into run {cursor_run!r}, not {run_id!r}")
    return after


def add_join_run_stream(router: APIRouter, ctx: RouteContext) -> None:
    """``GET /runs/{run_id}/stream``: join or resume a run (200 SSE, 204 if nothing is left)."""
    Caller = Annotated[Principal, Depends(ctx.principal)]

    @router.get(
        "/runs/{run_id}/stream",
        operation_id="join_run_stream",
        name="join_run_stream",
        response_class=Response,
        responses={
            **SSE_OK,
            204: {"description": "the client has every event of the run"},
            **errors(400, 401, 404, 406, 422, 503),
        },
    )
    async def join_run_stream(
        request: Request,
        run_id: str,
        principal: Caller,
        last_event_id: RunLastEventId = None,
        wire_format: FormatName = None,
    ) -> Response:
        """Join a live or recently finished run, resuming after ``Last-Event-ID``, in the format asked for."""
        fmt = pick_format(request, wire_format)
        if ctx.bridge is not None and run_id not in ctx.store and await ended_in_store(ctx, run_id, principal):
            # An ended run not in memory here: the store has all of it, whether or not its node still runs.
            after = _resume_after(request, run_id, last_event_id)
            return await stored_run_stream(ctx, request, run_id, principal, after, fmt)
        try:
            record = await ctx.find_run(run_id, principal)
        except HTTPException as exc:
            if exc.status_code != 404 or ctx.runtime.history is None:
                raise
            # Not in memory on any node reachable from here: the event store may still have it.
            after = _resume_after(request, run_id, last_event_id)
            return await stored_run_stream(ctx, request, run_id, principal, after, fmt)
        after = _resume_after(request, run_id, last_event_id)
        if record.ended and after >= record.log.last_seq and ctx.runtime.history is not None and record.log.closed:
            # Closed before its end reached this node (its node is gone, say): the store may hold more.
            return await stored_run_stream(ctx, request, run_id, principal, after, fmt, ended=True)
        if record.ended and after >= record.log.last_seq:
            # Nothing more will ever come: 204 stops a browser's reconnect loop.
            return Response(status_code=204)
        if after > record.log.last_seq:
            raise HTTPException(400, f"Last-Event-ID seq {after} is ahead of the run (last seq {record.log.last_seq})")
        bridge = ctx.bridge
        lease = None
        if bridge is not None and ctx.is_remote(record) and not record.ended:
            lease = lambda: bridge.watch_run(run_id)  # noqa: E731 - taken when the body starts
        # Events the bounded buffer no longer holds come from the store first, when it is on.
        cursor = backfilled(ctx, record, after, principal) or ctx.run_cursor(record.log, after, record.thread_id)
        return ctx.stream(request, cursor, ctx.run_url(request, run_id), run_id, lease=lease, wire_format=fmt)
