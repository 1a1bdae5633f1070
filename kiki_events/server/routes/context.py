"""What the route modules share: the runtime's parts, the caller dependency, run lookup
and the SSE response of a cursor."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

from fastapi import HTTPException, Query, Request, Response

from ...core.cursors import RunCursor
from ...core.manager import RunHandle
from ...core.runlog import RunLog
from ...core.runrecord import RunRecord
from ...core.threadreplay import Reader
from ...errors import (
    KikiEventsError,
    RunLimitError,
    RunNotFoundError,
    TransportError,
    UnknownFormatError,
    UnknownGraphError,
)
from ...formats import DEFAULT_FORMAT, Format, format_for_accept, format_names, get_format
from ..auth import AuthDependency, Principal, principal_dependency
from ..requests import RunRequest, read_body
from ..sse import cursor_body, sse_response

if TYPE_CHECKING:
    from ...bridge import Lease
    from ...runtime import KikiRuntime

__all__ = ["FormatName", "RouteContext", "pick_format", "raise_http"]

_RUN_SCHEMA = RunRequest.model_json_schema()


def _run_body_doc(graphs: list[str]) -> dict[str, Any]:
    """The run body's schema, with an example naming a graph served when the router was built."""
    body: dict[str, Any] = {"schema": _RUN_SCHEMA}
    if graphs:
        body["example"] = {"graph": graphs[0], "message": "Compare Redis streams and pub/sub"}
    return {"requestBody": {"required": True, "content": {"application/json": body}}}


def _list_formats(schema: dict[str, Any]) -> None:
    """Fill the ``format`` parameter's schema when the document is built: every format registered by then."""
    schema["enum"] = format_names()
    schema["maxLength"] = 64


FormatName = Annotated[
    str | None,
    Query(
        alias="format",
        description=(
            f"the wire format of the stream, by name (wins over `Accept`; default `{DEFAULT_FORMAT}`); "
            "an unknown name is a 400 listing the known ones"
        ),
        json_schema_extra=_list_formats,
    ),
]
"""A stream's ``format`` query parameter (resolve it with :func:`pick_format`)."""


def pick_format(request: Request, name: str | None) -> Format:
    """The format a stream request asks for: ``name`` (the query), else its ``Accept`` header.

    An unknown name is a 400, an ``Accept`` no format answers to a 406; both list the known formats.
    """
    if name is not None:
        try:
            return get_format(name)
        except UnknownFormatError as exc:
            raise HTTPException(400, f"format: {exc}") from None
    try:
        return format_for_accept(request.headers.get("accept"))
    except UnknownFormatError as exc:
        raise HTTPException(406, str(exc)) from None


def raise_http(exc: KikiEventsError) -> NoReturn:
    """The HTTP error of a library error: 429, 404 or 503 (each ``{"detail": …}``)."""
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


class RouteContext:
    """One runtime as the routes see it (built once per router).

    Args:
        runtime: the composition root whose runs are served.
        auth: optional FastAPI dependency returning the caller's principal or ``None``.
    """

    def __init__(self, runtime: KikiRuntime, auth: AuthDependency | None) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.store = runtime.store
        self.runs = runtime.runs
        self.bridge = runtime.bridge
        self.principal = principal_dependency(auth)
        """The dependency giving a route its caller: ``Annotated[Principal, Depends(ctx.principal)]``."""
        self.run_body_doc = _run_body_doc(runtime.graphs.names())
        """``openapi_extra`` of the routes that take a run body."""

    async def start(self, body: RunRequest, principal: Principal) -> RunHandle:
        """Start the run ``body`` asks for; 503 unless the runtime is running, else as :func:`raise_http`."""
        runtime = self.runtime
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
            raise_http(exc)

    async def read_body_for(self, request: Request, graph: str) -> bytes:
        """The body of a request to run ``graph`` (``server`` limits: 413, 408); 404 for an unknown graph.

        The graph is checked after the body is read and before it is parsed, so any
        body posted to an unknown graph is a 404.
        """
        raw = await read_body(request, self.settings.sse.max_body_bytes, self.settings.server.body_timeout)
        try:
            self.runtime.graphs.get(graph)
        except UnknownGraphError as exc:
            raise_http(exc)
        return raw

    def stream_started(
        self,
        request: Request,
        handle: RunHandle,
        principal: Principal,
        on_disconnect: str | None = None,
        wire_format: Format | None = None,
        reader: Reader | None = None,
    ) -> Response:
        """The response streaming a run this request just started, from its first event.

        ``on_disconnect`` (default ``runs.on_disconnect``): ``cancel`` cancels the run
        when the client goes away before its end. ``reader``: what reads the run (default:
        its buffer; with the event store on, ``stored.backfilled``'s reader, which turns to
        the store for what a slow client let the buffer drop).
        """
        policy = on_disconnect or self.settings.runs.on_disconnect
        on_abandon = (lambda: self.runs.cancel(handle.run_id, principal)) if policy == "cancel" else None
        cursor = reader or self.run_cursor(handle.record.log, 0, handle.thread_id)
        location = self.run_url(request, handle.run_id)
        return self.stream(request, cursor, location, handle.run_id, on_abandon, wire_format=wire_format)

    def stream(
        self,
        request: Request,
        cursor: Reader,
        location: str,
        run_id: str | None = None,
        on_abandon: Callable[[], object] | None = None,
        lease: Callable[[], Lease] | None = None,
        wire_format: Format | None = None,
    ) -> Response:
        """The response reading ``cursor`` in ``wire_format`` (default: ours), ``lease`` held while it is sent."""
        settings = self.settings
        headers = {"Content-Location": location}
        if run_id is not None:
            headers["X-Kiki-Run-Id"] = run_id
        body: AsyncIterator[bytes] = cursor_body(
            cursor, retry=settings.sse.retry, store=self.store, on_abandon=on_abandon, wire_format=wire_format
        )
        if lease is not None:
            body = _leased(body, lease)
        return sse_response(
            body,
            settings.sse,
            headers=headers,
            wire_format=wire_format,
            on_server_exit=self.runtime.request_shutdown,
            # Enough for runs to finish or be cancelled and for their ``done`` to go out.
            exit_grace=settings.runs.shutdown_grace + 5.0,
            on_stalled=self.store.count_stalled,
            on_end=lambda reason: self.store.count_disconnect(
                "slow_client" if reason == "completed" and cursor.dropped else reason
            ),
        )

    def run_cursor(self, log: RunLog, after: int, thread_id: str | None) -> RunCursor:
        """A reader of ``log`` after seq ``after``, with the SSE settings' slow-client policy."""
        sse = self.settings.sse
        return RunCursor(
            log,
            after,
            thread_id=thread_id,
            slow_client=sse.slow_client,
            on_lag=self.store.count_lagging,
            max_backlog=sse.max_backlog,
        )

    @staticmethod
    def run_url(request: Request, run_id: str) -> str:
        """The path of ``GET /runs/{run_id}/stream``."""
        return request.url_for("join_run_stream", run_id=run_id).path

    def is_remote(self, record: RunRecord) -> bool:
        """Whether ``record``'s run executes on another node."""
        return self.bridge is not None and record.node is not None and record.node != self.runtime.node

    async def find_run(self, run_id: str, principal: Principal) -> RunRecord:
        """The run wherever it executes (caught up with what it produced so far)."""
        try:
            if self.bridge is None:
                return self.store.get(run_id, principal)
            return await self.bridge.open_run(run_id, principal)
        except KikiEventsError as exc:
            raise_http(exc)
