"""``GET /runs``: the runs kept in the event store (:mod:`kiki_events.history`), newest first.

A thin adapter over :meth:`~kiki_events.history.base.EventStore.runs`, with the
caller's ownership rules: ``{"runs": [run, ...], "cursor": str | null}``; pass
``cursor`` back for the next (older) page. 503 while the store is off
(``store.enabled: false``), 400 for a filter or cursor the store refuses.
"""

# No ``from __future__ import annotations``: FastAPI reads these annotations at runtime.

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query

from ...errors import InvalidArgumentError, KikiEventsError
from ...history.base import StoredRun
from ..auth import Principal
from ..responses import errors
from .context import RouteContext, raise_http

__all__ = ["add_list_runs", "run_json"]

Status = Literal["running", "success", "error", "interrupted", "cancelled"]


def run_json(run: StoredRun) -> dict[str, Any]:
    """One run of the list, as the JSON the dashboard reads (the owner is not part of it)."""
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
        "usage": {
            key: getattr(run.usage, key)
            for key in ("input_tokens", "output_tokens", "total_tokens", "reasoning_tokens", "cached_tokens")
        },
        "agents": list(run.agents),
        "causation_id": run.causation_id,
        "caused_by": run.caused_by,
        "relayed_into": run.relayed_into,
        "trace_id": run.trace_id,
        "cost_usd": run.cost_usd,
    }


def add_list_runs(router: APIRouter, ctx: RouteContext) -> None:
    """``GET /runs``."""
    Caller = Annotated[Principal, Depends(ctx.principal)]

    @router.get("/runs", operation_id="list_runs", responses=errors(400, 401, 422, 503))
    async def list_runs(
        principal: Caller,
        thread: str | None = None,
        graph: str | None = None,
        agent: str | None = None,
        status: Annotated[list[Status] | None, Query()] = None,
        since: float | None = None,
        until: float | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Stored runs matching every filter given (``status`` may repeat), newest first."""
        store = ctx.runtime.history
        if store is None:
            raise HTTPException(503, "history is off on this server (store.enabled: false)")
        try:
            page = await store.runs(
                principal,
                thread_id=thread,
                graph=graph,
                agent=agent,
                status=status or None,
                since=since,
                until=until,
                limit=limit,
                cursor=cursor,
            )
        except InvalidArgumentError as exc:
            raise HTTPException(400, str(exc)) from None
        except KikiEventsError as exc:
            raise_http(exc)
        return {"runs": [run_json(run) for run in page.runs], "cursor": page.cursor}
