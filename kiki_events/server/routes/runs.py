"""A run as a resource: ``POST /runs`` (start, answer at once), ``GET /runs/{run_id}``
(status) and ``POST /runs/{run_id}/cancel``; README.md, "Watch, join, resume and
cancel a run from any node"."""

# No ``from __future__ import annotations``: FastAPI reads these annotations at runtime.

import asyncio
import contextlib
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ...core.runrecord import RunRecord
from ...errors import KikiEventsError, RunNotFoundError
from ..auth import Principal
from ..requests import parse_run_request
from ..responses import CancelResult, RunAccepted, RunStatus, errors
from .context import RouteContext, raise_http

__all__ = ["add_cancel_run", "add_run_status", "add_start_run"]

_CANCEL_WAIT = 5.0

# What a client can do next with the run ``POST /runs`` started (OpenAPI links, by operation id).
_RUN_LINKS = {
    name: {"operationId": operation, "parameters": {key: f"$response.body#/{key}"}}
    for name, operation, key in (
        ("status", "run_status", "run_id"),
        ("join", "join_run_stream", "run_id"),
        ("cancel", "cancel_run", "run_id"),
        ("thread", "thread_stream", "thread_id"),
        ("state", "thread_state", "thread_id"),
    )
}


def add_start_run(router: APIRouter, ctx: RouteContext) -> None:
    """``POST /runs``: start a run, answer at once (202)."""
    Caller = Annotated[Principal, Depends(ctx.principal)]
    settings = ctx.settings

    @router.post(
        "/runs",
        operation_id="start_run",
        openapi_extra=ctx.run_body_doc,
        status_code=202,
        response_model=RunAccepted,
        responses={
            202: {
                "headers": {"Location": {"description": "the status URL", "schema": {"type": "string"}}},
                "links": _RUN_LINKS,
            },
            **errors(400, 401, 404, 408, 413, 422, 429, 503),
        },
    )
    async def start_run(request: Request, principal: Caller) -> JSONResponse:
        """Start a run without streaming; open ``stream_url`` to watch it."""
        body = await parse_run_request(request, settings.sse.max_body_bytes, settings.server.body_timeout)
        handle = await ctx.start(body, principal)
        status_url = request.url_for("run_status", run_id=handle.run_id).path
        content = {
            "run_id": handle.run_id,
            "thread_id": handle.thread_id,
            "graph": handle.graph,
            "stream_url": ctx.run_url(request, handle.run_id),
            "status_url": status_url,
        }
        return JSONResponse(content, status_code=202, headers={"Location": status_url})


async def _status(ctx: RouteContext, run_id: str, principal: Principal) -> dict[str, Any]:
    """A run's public status: this node's record, or the registry's for a run executing elsewhere."""
    bridge = ctx.bridge
    try:
        record = ctx.store.get(run_id, principal)
    except RunNotFoundError as exc:
        if bridge is None:
            raise_http(exc)
        record = None
    if record is not None and (record.ended or not ctx.is_remote(record)):
        return record.info().public()
    try:
        info = await bridge.run_info(run_id, principal)  # type: ignore[union-attr]
    except KikiEventsError as exc:
        if record is not None:
            return record.info().public()
        raise_http(exc)
    status = info.public()
    if record is not None:
        status["last_seq"] = max(status["last_seq"], record.log.last_seq)
    return status


def add_run_status(router: APIRouter, ctx: RouteContext) -> None:
    """``GET /runs/{run_id}``: run status (200)."""
    Caller = Annotated[Principal, Depends(ctx.principal)]

    @router.get(
        "/runs/{run_id}",
        operation_id="run_status",
        name="run_status",
        # Documented, not enforced: a status read from the registry is passed on as it is.
        responses={200: {"model": RunStatus}, **errors(401, 404, 422, 503)},
    )
    async def run_status(run_id: str, principal: Caller) -> dict[str, Any]:
        """Status of a run (of any node: the registry knows where it runs)."""
        return await _status(ctx, run_id, principal)


async def _cancel(ctx: RouteContext, run_id: str, principal: Principal) -> JSONResponse:
    """Cancel ``run_id`` here or on its node: 200 once it ended, 202 while it stops."""
    bridge = ctx.bridge
    runs = ctx.runs
    try:
        record = ctx.store.get(run_id, principal) if bridge is None else await ctx.find_run(run_id, principal)
        if not record.ended and runs.is_local(run_id):
            record = await runs.cancel_and_wait(run_id, principal)
        elif not record.ended and bridge is not None and ctx.is_remote(record):
            info = await bridge.cancel(run_id, principal)
            if info.ended and not record.ended:
                return JSONResponse({"run_id": run_id, "status": info.status})
            with bridge.watch_run(run_id):
                await _ended(record, _CANCEL_WAIT)
    except KikiEventsError as exc:
        raise_http(exc)
    content: dict[str, Any] = {"run_id": run_id, "status": record.status}
    if record.ended:
        return JSONResponse(content)
    content["detail"] = "cancellation requested"
    return JSONResponse(content, status_code=202)


def add_cancel_run(router: APIRouter, ctx: RouteContext) -> None:
    """``POST /runs/{run_id}/cancel``: cancel (200 when ended, 202 while stopping)."""
    Caller = Annotated[Principal, Depends(ctx.principal)]

    @router.post(
        "/runs/{run_id}/cancel",
        operation_id="cancel_run",
        response_model=CancelResult,
        responses={202: {"model": CancelResult, "description": "cancellation requested"}, **errors(401, 404, 422, 503)},
    )
    async def cancel_run(run_id: str, principal: Caller) -> JSONResponse:
        """Cancel a run on whichever node runs it; one that already ended stays ended (200)."""
        return await _cancel(ctx, run_id, principal)


async def _ended(record: RunRecord, timeout: float) -> bool:
    """Wait up to ``timeout`` for ``record``'s run to end; whether it did."""
    deadline = time.monotonic() + timeout
    while not record.ended:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(record.log.changed.wait(), remaining)
    return True
