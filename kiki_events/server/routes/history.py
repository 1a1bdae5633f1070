"""The stored history as resources: ``GET /runs`` (runs, newest first, with their totals),
``GET /runs/{run_id}/causation`` and ``GET /events/{event_id}/causation`` (causation
chains, both directions); docs/history.md, "Over HTTP".

The queries are the event store's (``store.enabled``), asked as the caller: another
principal's run "does not exist" (404) or is missing from a list. Without a store
they are answered from the runs this node keeps in memory (:mod:`..memoryhistory`).
"""

# No ``from __future__ import annotations``: FastAPI reads these annotations at runtime.

from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response

from ...errors import InvalidArgumentError, KikiEventsError, RunNotFoundError, StoreError
from ...history import parse_statuses
from ..auth import Principal
from ..historyargs import AgentQuery, CursorQuery, StatusQuery, TimeQuery, limit_query, parse_time
from ..historyjson import CausationBody, RunList, causation_json, run_json
from ..memoryhistory import MemoryHistory
from ..responses import errors
from .context import RouteContext

__all__ = ["add_event_causation", "add_run_causation", "add_runs", "ask", "history_of"]

T = TypeVar("T")

_MAX_ID = 512
SOURCE_HEADER = "X-Kiki-History"
"""On ``GET /runs``: ``store`` or ``memory`` (no event store: only the runs this node keeps)."""


def history_of(ctx: RouteContext) -> Any:
    """Where the queries go: the event store, or this node's runs in memory when it is off."""
    store = ctx.runtime.history
    return store if store is not None else MemoryHistory(ctx.store)


async def ask(query: Awaitable[T]) -> T:
    """The result of ``query``; its errors as HTTP errors: 404, 422 (bad cursor or argument), 503 (database)."""
    try:
        return await query
    except RunNotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except InvalidArgumentError as exc:
        message = str(exc)
        raise HTTPException(422, f"query.cursor: {message}" if "cursor" in message else message) from None
    except StoreError:
        raise HTTPException(
            503, "the event store cannot be read right now; retry later", headers={"Retry-After": "1"}
        ) from None
    except KikiEventsError as exc:
        raise HTTPException(503, str(exc)) from None


def add_runs(router: APIRouter, ctx: RouteContext) -> None:
    """``GET /runs``."""
    Caller = Annotated[Principal, Depends(ctx.principal)]

    @router.get(
        "/runs",
        operation_id="list_runs",
        name="list_runs",
        response_model=RunList,
        responses={
            200: {
                "headers": {
                    SOURCE_HEADER: {
                        "description": "where the runs come from: `store` (the event store) or `memory` "
                        "(the runs this node keeps, with `store.enabled` off)",
                        "schema": {"type": "string", "enum": ["store", "memory"]},
                    }
                }
            },
            **errors(401, 422, 503),
        },
    )
    async def list_runs(
        response: Response,
        principal: Caller,
        thread: Annotated[str | None, Query(max_length=_MAX_ID, description="runs of this thread")] = None,
        graph: Annotated[str | None, Query(max_length=_MAX_ID, description="runs of this graph")] = None,
        agent: AgentQuery = None,
        status: StatusQuery = None,
        since: TimeQuery = None,
        until: TimeQuery = None,
        limit: Annotated[int, limit_query(50)] = 50,
        cursor: CursorQuery = None,
    ) -> dict[str, Any]:
        """Runs the caller started, newest first, with their totals (tokens, calls, errors, cost)."""
        response.headers[SOURCE_HEADER] = "memory" if ctx.runtime.history is None else "store"
        page = await ask(
            history_of(ctx).runs(
                principal,
                thread_id=thread,
                graph=graph,
                agent=agent,
                status=parse_statuses(status),
                since=parse_time("since", since),
                until=parse_time("until", until),
                limit=limit,
                cursor=cursor,
            )
        )
        return {"runs": [run_json(run) for run in page.runs], "cursor": page.cursor}


DepthQuery = Annotated[int, Query(ge=1, le=64, description="steps followed each way (default 16)")]


def add_run_causation(router: APIRouter, ctx: RouteContext) -> None:
    """``GET /runs/{run_id}/causation``."""
    Caller = Annotated[Principal, Depends(ctx.principal)]

    @router.get(
        "/runs/{run_id}/causation",
        operation_id="run_causation",
        name="run_causation",
        response_model=CausationBody,
        responses=errors(401, 404, 422, 503),
    )
    async def run_causation(run_id: str, principal: Caller, depth: DepthQuery = 16) -> dict[str, Any]:
        """The runs that led to this run (causes) and those it started through hand-offs (effects)."""
        chain = await ask(history_of(ctx).causation(principal, run_id=run_id, depth=depth))
        return causation_json(chain)


def add_event_causation(router: APIRouter, ctx: RouteContext) -> None:
    """``GET /events/{event_id}/causation``."""
    Caller = Annotated[Principal, Depends(ctx.principal)]
    EventId = Annotated[
        str, Path(description="`<run_id>:<seq>`, the `id` of its SSE frame", pattern=r"^[\s\S]+:[0-9]{1,18}$")
    ]

    @router.get(
        "/events/{event_id}/causation",
        operation_id="event_causation",
        name="event_causation",
        response_model=CausationBody,
        responses=errors(401, 404, 422, 503),
    )
    async def event_causation(event_id: EventId, principal: Caller, depth: DepthQuery = 16) -> dict[str, Any]:
        """The runs that led to this event and those it started (a hand-off's request starts its delegate)."""
        chain = await ask(history_of(ctx).causation(principal, event_id=event_id, depth=depth))
        return causation_json(chain)
