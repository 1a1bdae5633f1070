"""``GET /stats``: figures over the stored runs the caller may see (docs/history.md, "Statistics")."""

# No ``from __future__ import annotations``: FastAPI reads these annotations at runtime.

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from ...errors import InvalidArgumentError, StoreError
from ...history import Stats, StatsKey, parse_statuses
from ..auth import Principal
from ..historyargs import StatusQuery, TimeQuery, parse_time
from ..requests import MAX_RUN_ID
from ..responses import ERRORS, errors
from .context import RouteContext

__all__ = ["add_stats"]

_NAME = 256
"""Longest graph or agent name accepted as a filter."""
_TEXT = r"^[^\x00]*$"
"""A filter: any text without NUL (which no stored name holds, and PostgreSQL refuses)."""

_RESPONSES: dict[int | str, dict[str, Any]] = {
    **errors(401, 422, 503),
    422: {**errors(422)[422], "description": "an invalid parameter (the message names it)"},
    503: {
        **errors(503)[503],
        "description": "the event store is off (`store.enabled: false`) or its database cannot be reached",
        "headers": ERRORS[429]["headers"],
    },
}


def add_stats(router: APIRouter, ctx: RouteContext) -> None:
    """``GET /stats``."""
    Caller = Annotated[Principal, Depends(ctx.principal)]

    @router.get("/stats", operation_id="run_stats", response_model=Stats, responses=_RESPONSES)
    async def run_stats(
        principal: Caller,
        by: Annotated[StatsKey | None, Query(description="group by this key (none: the total only)")] = None,
        since: TimeQuery = None,
        until: TimeQuery = None,
        graph: Annotated[str | None, Query(max_length=_NAME, pattern=_TEXT)] = None,
        agent: Annotated[
            str | None,
            Query(max_length=_NAME, pattern=_TEXT, description="runs this agent (or one below it) took part in"),
        ] = None,
        thread: Annotated[str | None, Query(max_length=MAX_RUN_ID, pattern=_TEXT)] = None,
        status: StatusQuery = None,
        limit: Annotated[int, Query(ge=1, le=10_000, description="most groups")] = 100,
    ) -> Stats:
        """Runs by status, durations, LLM calls, tokens, time to first token, tool calls and cost of the
        caller's stored runs started in `[since, until)`, in total and grouped `by` run, thread, agent,
        graph or model."""
        start, end = parse_time("since", since), parse_time("until", until)
        store = ctx.runtime.history
        if store is None:
            raise HTTPException(503, "the event store is off (store.enabled: false)", headers={"Retry-After": "60"})
        try:
            statuses = parse_statuses(status)
            return await store.stats(
                principal,
                by=by,
                since=start,
                until=end,
                graph=graph,
                agent=agent,
                thread_id=thread,
                status=statuses,
                limit=limit,
            )
        except InvalidArgumentError as exc:
            raise HTTPException(422, str(exc)) from None
        except StoreError as exc:
            raise HTTPException(503, f"the event store cannot answer: {exc}", headers={"Retry-After": "1"}) from None
