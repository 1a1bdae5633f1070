"""Stored events: ``GET /runs/{run_id}/events``, ``GET /threads/{thread_id}/events`` (one
run's or one thread's, in order) and ``GET /events`` (across runs, by type, agent and
time: "the last 24 h of these types"); docs/history.md, "Over HTTP".

Each answers a page ``{"events": [...], "cursor": …}``, or JSON lines (``format=jsonl``
or ``Accept: application/x-ndjson``) with the next page's cursor in ``X-Kiki-Cursor``.
"""

# No ``from __future__ import annotations``: FastAPI reads these annotations at runtime.

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from ..auth import Principal
from ..historyargs import (
    AfterQuery,
    AgentQuery,
    CursorQuery,
    PageFormat,
    TimeQuery,
    TypesQuery,
    check_types,
    limit_query,
    parse_time,
    wants_lines,
)
from ..historyjson import CURSOR_HEADER, NDJSON, EventList, event_page_response
from ..responses import errors
from .context import RouteContext
from .history import ask, history_of

__all__ = ["add_run_events", "add_search_events", "add_thread_events"]

EventsLimit = Annotated[int, limit_query(1000)]

_PAGE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "a page of events in order, or JSON lines (`format=jsonl` / `Accept: application/x-ndjson`)",
        "headers": {
            CURSOR_HEADER: {
                "description": "with JSON lines: the next page's cursor (absent on the last page)",
                "schema": {"type": "string"},
            }
        },
        "content": {NDJSON: {"schema": {"type": "string", "description": "one event's compact JSON per line"}}},
    }
}


def add_run_events(router: APIRouter, ctx: RouteContext) -> None:
    """``GET /runs/{run_id}/events``."""
    Caller = Annotated[Principal, Depends(ctx.principal)]

    @router.get(
        "/runs/{run_id}/events",
        operation_id="run_events",
        name="run_events",
        response_model=EventList,
        responses={**_PAGE, **errors(401, 404, 422, 503)},
    )
    async def run_events(
        request: Request,
        run_id: str,
        principal: Caller,
        types: TypesQuery = None,
        agent: AgentQuery = None,
        after: AfterQuery = 0,
        limit: EventsLimit = 1000,
        cursor: CursorQuery = None,
        page_format: PageFormat = None,
    ) -> Response:
        """A run's stored events with a seq above `after`, in order (a delegate's relayed work included)."""
        kinds = check_types(types)
        page = await ask(
            history_of(ctx).events(
                principal, run_id=run_id, types=kinds, agent=agent, after=after, limit=limit, cursor=cursor
            )
        )
        return event_page_response(page, lines=wants_lines(request, page_format))


def add_thread_events(router: APIRouter, ctx: RouteContext) -> None:
    """``GET /threads/{thread_id}/events``."""
    Caller = Annotated[Principal, Depends(ctx.principal)]

    @router.get(
        "/threads/{thread_id}/events",
        operation_id="thread_events",
        name="thread_events",
        response_model=EventList,
        responses={**_PAGE, **errors(401, 404, 422, 503)},
    )
    async def thread_events(
        request: Request,
        thread_id: str,
        principal: Caller,
        types: TypesQuery = None,
        agent: AgentQuery = None,
        limit: EventsLimit = 1000,
        cursor: CursorQuery = None,
        page_format: PageFormat = None,
    ) -> Response:
        """A thread's stored events: its runs oldest first, each in order."""
        kinds = check_types(types)
        page = await ask(
            history_of(ctx).events(principal, thread_id=thread_id, types=kinds, agent=agent, limit=limit, cursor=cursor)
        )
        return event_page_response(page, lines=wants_lines(request, page_format))


def add_search_events(router: APIRouter, ctx: RouteContext) -> None:
    """``GET /events``."""
    Caller = Annotated[Principal, Depends(ctx.principal)]

    @router.get(
        "/events",
        operation_id="search_events",
        name="search_events",
        response_model=EventList,
        responses={**_PAGE, **errors(401, 422, 503)},
    )
    async def search_events(
        request: Request,
        principal: Caller,
        types: TypesQuery = None,
        agent: AgentQuery = None,
        since: TimeQuery = None,
        until: TimeQuery = None,
        limit: EventsLimit = 1000,
        cursor: CursorQuery = None,
        page_format: PageFormat = None,
    ) -> Response:
        """Stored events of every run the caller started, with `ts` in [since, until), oldest first."""
        kinds = check_types(types)
        start, end = parse_time("since", since), parse_time("until", until)
        history = history_of(ctx)
        page = await ask(
            history.search(principal, types=kinds, agent=agent, since=start, until=end, limit=limit, cursor=cursor)
        )
        return event_page_response(page, lines=wants_lines(request, page_format))
