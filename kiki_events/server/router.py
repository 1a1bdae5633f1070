"""The HTTP API of the default format (see DESIGN.md, "HTTP / SSE").

=====================================  ==============================================
``POST /runs/stream``                  start a run and stream it (200, SSE)
``POST /runs``                         start a run, answer at once (202)
``GET  /runs/{run_id}/stream``         join or resume a run (200 SSE, 204 if nothing is left)
``GET  /runs/{run_id}``                run status (200)
``POST /runs/{run_id}/cancel``         cancel (200 when ended, 202 while stopping)
``GET  /threads/{thread_id}/stream``   every run of a thread, live (200, SSE)
``GET  /graphs``                       registered graph names
``GET  /healthz``                      liveness and counters, never secrets
=====================================  ==============================================

Errors, each ``{"detail": "<what was wrong>"}`` and declared in the OpenAPI schema
(:mod:`.responses`): 400 malformed ``Last-Event-ID`` or ``Content-Length``, 401 no
principal (with an auth hook), 404 unknown graph / run / thread (also someone else's),
408 body too slow, 413 body too large, 422 invalid body, 429 too many active runs, 503 shutting down (or, with the
cross-node bridge, Redis unreachable for a run this node does not know, or for a
run on a thread this node cannot tell is the caller's).

Ownership: a thread belongs to the principal that used it first, decided once for
the whole cluster (:meth:`~kiki_events.runtime.KikiRuntime.start_run`); its runs and
its stream are a 404 for anyone else, on every node.

With a bridge (``eventbus.provider: redis``) every run endpoint works for runs
executing on other nodes: the run is found in the registry, followed through the
bridge while a client reads it, and cancelled on the node that runs it.
"""

# No ``from __future__ import annotations``: FastAPI reads these annotations at runtime.

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

from ..bridge import Lease
from ..core.cursors import RunCursor, ThreadCursor
from ..core.runlog import RunLog
from ..core.runs import RunHandle, RunRecord, ThreadRecord
from ..errors import KikiEventsError, RunLimitError, RunNotFoundError, TransportError, UnknownGraphError
from ..runtime import KikiRuntime
from .auth import AuthDependency, Principal, principal_dependency
from .requests import MAX_CURSOR, MAX_RUN_ID, RunRequest, parse_cursor, parse_run_request
from .responses import SSE_OK, CancelResult, RunAccepted, RunStatus, errors
from .sse import cursor_body, sse_response

__all__ = ["create_router"]

_CANCEL_WAIT = 5.0

_RUN_SCHEMA = RunRequest.model_json_schema()
# What parse_cursor accepts, for the schema: ``<run_id>:<seq>`` (a run stream also takes a bare ``<seq>``).
_RUN_CURSOR = rf"^(?:(?:[\s\S]{{1,{MAX_RUN_ID}}}:)?[0-9]{{1,18}})?$"
_THREAD_CURSOR = rf"^(?:[\s\S]{{1,{MAX_RUN_ID}}}:[0-9]{{1,18}})?$"


# What a client can do next with the run ``POST /runs`` started (OpenAPI links, by operation id).
_RUN_LINKS = {
    name: {"operationId": operation, "parameters": {key: f"$response.body#/{key}"}}
    for name, operation, key in (
        ("status", "run_status", "run_id"),
        ("join", "join_run_stream", "run_id"),
        ("cancel", "cancel_run", "run_id"),
        ("thread", "thread_stream", "thread_id"),
    )
}


def _run_body_doc(graphs: list[str]) -> dict[str, Any]:
    """The run body's schema, with an example naming a graph served when the router was built."""
    body: dict[str, Any] = {"schema": _RUN_SCHEMA}
    if graphs:
        body["example"] = {"graph": graphs[0], "message": "Compare Redis streams and pub/sub"}
    return {"requestBody": {"required": True, "content": {"application/json": body}}}


def _raise_http(exc: KikiEventsError) -> NoReturn:
    if isinstance(exc, RunLimitError):
        raise HTTPException(429, str(exc), headers={"Retry-After": "1"}) from None
    if isinstance(exc, RunNotFoundError | UnknownGraphError):
        raise HTTPException(404, str(exc)) from None
    if isinstance(exc, TransportError):
        raise HTTPException(503, "other nodes cannot be reached right now", headers={"Retry-After": "1"}) from None
    raise HTTPException(503, str(exc)) from None


async def _leased(body: AsyncIterator[bytes], acquire: Callable[[], Lease]) -> AsyncIterator[bytes]:
    """``body``, with a bridge lease held while it is being sent (taken on first read)."""
    lease = acquire()
    try:
        async for chunk in body:
            yield chunk
    finally:
        lease.release()


def create_router(runtime: KikiRuntime, *, auth: AuthDependency | None = None) -> APIRouter:
    """The API routes of ``runtime``; include them in any FastAPI app.

    Args:
        runtime: the composition root whose runs are served (started by the app's lifespan).
        auth: optional FastAPI dependency returning the caller's principal or ``None``.
    """
    router = APIRouter()
    settings = runtime.settings
    store = runtime.store
    runs = runtime.runs
    bridge = runtime.bridge
    Caller = Annotated[Principal, Depends(principal_dependency(auth))]
    run_body_doc = _run_body_doc(runtime.graphs.names())
    # Documented, and checked with the rest of the cursor: 400 naming the problem, as for the header.
    RunLastEventId = Annotated[
        str | None,
        Query(
            alias="last_event_id",
            description="resume after this event, `<run_id>:<seq>` or `<seq>` (the `Last-Event-ID` header wins)",
            json_schema_extra={"maxLength": MAX_CURSOR, "pattern": _RUN_CURSOR},
        ),
    ]
    ThreadLastEventId = Annotated[
        str | None,
        Query(
            alias="last_event_id",
            description="resume after this event, `<run_id>:<seq>` (the `Last-Event-ID` header wins)",
            json_schema_extra={"maxLength": MAX_CURSOR, "pattern": _THREAD_CURSOR},
        ),
    ]

    async def start(body: RunRequest, principal: Principal) -> RunHandle:
        if runtime.state != "running":
            raise HTTPException(503, f"the server is not accepting runs (it is {runtime.state})")
        try:
            return await runtime.start_run(
                body.graph, body.graph_input(), thread_id=body.thread_id, metadata=body.metadata, principal=principal
            )
        except TransportError:
            # Never start on a thread whose owner could not be decided: it might be someone else's.
            raise HTTPException(
                503,
                f"cannot check who owns thread {body.thread_id!r}: "
                "other nodes cannot be reached right now; retry later",
                headers={"Retry-After": "1"},
            ) from None
        except KikiEventsError as exc:
            _raise_http(exc)

    def stream(
        request: Request,
        cursor: RunCursor | ThreadCursor,
        location: str,
        run_id: str | None = None,
        on_abandon: Callable[[], object] | None = None,
        lease: Callable[[], Lease] | None = None,
    ) -> Response:
        headers = {"Content-Location": location}
        if run_id is not None:
            headers["X-Kiki-Run-Id"] = run_id
        body: AsyncIterator[bytes] = cursor_body(cursor, retry=settings.sse.retry, store=store, on_abandon=on_abandon)
        if lease is not None:
            body = _leased(body, lease)
        return sse_response(
            body,
            settings.sse,
            headers=headers,
            on_server_exit=runtime.request_shutdown,
            # Enough for runs to finish or be cancelled and for their ``done`` to go out.
            exit_grace=settings.runs.shutdown_grace + 5.0,
            on_stalled=store.count_stalled,
        )

    def run_cursor(log: RunLog, after: int, thread_id: str | None) -> RunCursor:
        return RunCursor(
            log,
            after,
            thread_id=thread_id,
            slow_client=settings.sse.slow_client,
            on_lag=store.count_lagging,
            max_backlog=settings.sse.max_backlog,
        )

    def run_url(request: Request, run_id: str) -> str:
        return request.url_for("join_run_stream", run_id=run_id).path

    def is_remote(record: RunRecord) -> bool:
        return bridge is not None and record.node is not None and record.node != runtime.node

    async def find_run(run_id: str, principal: Principal) -> RunRecord:
        """The run wherever it executes (caught up with what it produced so far)."""
        try:
            if bridge is None:
                return store.get(run_id, principal)
            return await bridge.open_run(run_id, principal)
        except KikiEventsError as exc:
            _raise_http(exc)

    async def find_thread(thread_id: str, principal: Principal) -> ThreadRecord:
        try:
            if bridge is None:
                return store.thread(thread_id, principal)
            return await bridge.open_thread(thread_id, principal)
        except KikiEventsError as exc:
            _raise_http(exc)

    @router.post(
        "/runs/stream",
        operation_id="start_run_stream",
        openapi_extra=run_body_doc,
        response_class=Response,
        responses={**SSE_OK, **errors(400, 401, 404, 408, 413, 422, 429, 503)},
    )
    async def start_run_stream(request: Request, principal: Caller) -> Response:
        """Start a run and stream its events; the last frame is ``done``."""
        body = await parse_run_request(request, settings.sse.max_body_bytes, settings.server.body_timeout)
        handle = await start(body, principal)
        policy = body.on_disconnect or settings.runs.on_disconnect
        on_abandon = (lambda: runs.cancel(handle.run_id, principal)) if policy == "cancel" else None
        cursor = run_cursor(handle.record.log, 0, handle.thread_id)
        return stream(request, cursor, run_url(request, handle.run_id), handle.run_id, on_abandon)

    @router.post(
        "/runs",
        operation_id="start_run",
        openapi_extra=run_body_doc,
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
        handle = await start(body, principal)
        status_url = request.url_for("run_status", run_id=handle.run_id).path
        content = {
            "run_id": handle.run_id,
            "thread_id": handle.thread_id,
            "graph": handle.graph,
            "stream_url": run_url(request, handle.run_id),
            "status_url": status_url,
        }
        return JSONResponse(content, status_code=202, headers={"Location": status_url})

    @router.get(
        "/runs/{run_id}/stream",
        operation_id="join_run_stream",
        name="join_run_stream",
        response_class=Response,
        responses={
            **SSE_OK,
            204: {"description": "the client has every event of the run"},
            **errors(400, 401, 404, 422, 503),
        },
    )
    async def join_run_stream(
        request: Request, run_id: str, principal: Caller, last_event_id: RunLastEventId = None
    ) -> Response:
        """Join a live or recently finished run, resuming after ``Last-Event-ID``."""
        record = await find_run(run_id, principal)
        header = request.headers.get("last-event-id")
        cursor_at = parse_cursor(header) if header else parse_cursor(last_event_id, name="last_event_id")
        after = 0
        if cursor_at is not None:
            cursor_run, after = cursor_at
            if cursor_run and cursor_run != run_id:
                raise HTTPException(400, f"Last-Event-ID points into run {cursor_run!r}, not {run_id!r}")
        if record.ended and after >= record.log.last_seq:
            # Nothing more will ever come: 204 stops a browser's reconnect loop.
            return Response(status_code=204)
        if after > record.log.last_seq:
            raise HTTPException(400, f"Last-Event-ID seq {after} is ahead of the run (last seq {record.log.last_seq})")
        lease = None
        if bridge is not None and is_remote(record) and not record.ended:
            lease = lambda: bridge.watch_run(run_id)  # noqa: E731 - taken when the body starts
        cursor = run_cursor(record.log, after, record.thread_id)
        return stream(request, cursor, run_url(request, run_id), run_id, lease=lease)

    @router.get(
        "/runs/{run_id}",
        operation_id="run_status",
        name="run_status",
        # Documented, not enforced: a status read from the registry is passed on as it is.
        responses={200: {"model": RunStatus}, **errors(401, 404, 422, 503)},
    )
    async def run_status(run_id: str, principal: Caller) -> dict[str, Any]:
        """Status of a run (of any node: the registry knows where it runs)."""
        try:
            record = store.get(run_id, principal)
        except RunNotFoundError as exc:
            if bridge is None:
                _raise_http(exc)
            record = None
        if record is not None and (record.ended or not is_remote(record)):
            return record.info().public()
        try:
            info = await bridge.run_info(run_id, principal)  # type: ignore[union-attr]
        except KikiEventsError as exc:
            if record is not None:
                return record.info().public()
            _raise_http(exc)
        status = info.public()
        if record is not None:
            status["last_seq"] = max(status["last_seq"], record.log.last_seq)
        return status

    @router.post(
        "/runs/{run_id}/cancel",
        operation_id="cancel_run",
        response_model=CancelResult,
        responses={202: {"model": CancelResult, "description": "cancellation requested"}, **errors(401, 404, 422, 503)},
    )
    async def cancel_run(run_id: str, principal: Caller) -> JSONResponse:
        """Cancel a run on whichever node runs it; one that already ended stays ended (200)."""
        try:
            record = store.get(run_id, principal) if bridge is None else await find_run(run_id, principal)
            if not record.ended and runs.is_local(run_id):
                record = await runs.cancel_and_wait(run_id, principal)
            elif not record.ended and bridge is not None and is_remote(record):
                info = await bridge.cancel(run_id, principal)
                if info.ended and not record.ended:
                    return JSONResponse({"run_id": run_id, "status": info.status})
                with bridge.watch_run(run_id):
                    await _ended(record, _CANCEL_WAIT)
        except KikiEventsError as exc:
            _raise_http(exc)
        content: dict[str, Any] = {"run_id": run_id, "status": record.status}
        if record.ended:
            return JSONResponse(content)
        content["detail"] = "cancellation requested"
        return JSONResponse(content, status_code=202)

    @router.get(
        "/threads/{thread_id}/stream",
        operation_id="thread_stream",
        name="thread_stream",
        response_class=Response,
        responses={**SSE_OK, **errors(400, 401, 404, 422, 503)},
    )
    async def thread_stream(
        request: Request, thread_id: str, principal: Caller, last_event_id: ThreadLastEventId = None
    ) -> Response:
        """Every run of a thread (on any node), oldest first, then new runs as they start."""
        thread = await find_thread(thread_id, principal)
        header = request.headers.get("last-event-id")
        resume = parse_cursor(header) if header else parse_cursor(last_event_id, name="last_event_id")
        if resume is not None and not resume[0]:
            raise HTTPException(400, "a thread stream resumes from '<run_id>:<seq>', not a bare seq")
        cursor = ThreadCursor(
            thread_id,
            lambda: store.thread_logs(thread),
            thread.changed,
            resume=resume,
            slow_client=settings.sse.slow_client,
            on_lag=store.count_lagging,
            until=lambda: not store.following,
            max_backlog=settings.sse.max_backlog,
        )
        location = request.url_for("thread_stream", thread_id=thread_id).path
        lease = None
        if bridge is not None:
            lease = lambda: bridge.watch_thread(thread_id)  # noqa: E731 - taken when the body starts
        return stream(request, cursor, location, lease=lease)

    @router.get("/graphs", operation_id="list_graphs", responses=errors(401))
    async def list_graphs(principal: Caller) -> dict[str, list[str]]:
        """Names of the graphs runs can be started with."""
        return {"graphs": runtime.graphs.names()}

    @router.get("/healthz", operation_id="healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness and counters (no secrets, no principals, no run ids)."""
        bus = runtime.bus
        return {
            "status": "ok" if runtime.state == "running" else runtime.state,
            "node": runtime.node,
            "graphs": runtime.graphs.names(),
            "bus": {
                "published": bus.stats.published,
                "dropped": dict(bus.stats.dropped),
                "handler_errors": bus.stats.handler_errors,
                "subscriptions": bus.subscriptions,
            },
            "runs": {
                "active": runs.active,
                "kept": len(store),
                "started": runs.started,
                "thread_owners": len(store.owners),
                "thread_owners_evicted": store.owners.evicted,
            },
            "sse": {
                "clients": store.clients,
                "readers": store.readers,
                "lagging": store.lagging,
                "stalled": store.stalled,
            },
            "bridge": bridge.health() if bridge is not None else None,
        }

    return router


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
