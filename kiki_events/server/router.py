"""The HTTP API of the default format (README.md, "Serve it over SSE" and "Cross-node").

=====================================  ==============================================
``POST /runs/stream``                  start a run and stream it (200, SSE)
``POST /runs``                         start a run, answer at once (202)
``GET  /runs/{run_id}/stream``         join or resume a run (200 SSE, 204 if nothing is left)
``GET  /runs/{run_id}``                run status (200)
``POST /runs/{run_id}/cancel``         cancel (200 when ended, 202 while stopping)
``GET  /runs``                         stored runs, newest first, with totals (200)
``GET  /runs/{run_id}/events``         a run's stored events (200, JSON page or lines)
``GET  /runs/{run_id}/causation``      a run's causation chain, both directions (200)
``GET  /threads/{thread_id}/events``   a thread's stored events (200)
``GET  /events``                       stored events across runs by type, agent, time (200)
``GET  /events/{event_id}/causation``  an event's causation chain (200)
``GET  /threads/{thread_id}/stream``   every run of a thread, live (200, SSE)
``GET  /threads/{thread_id}/state``    the thread's latest checkpoint (200)
``POST /ag-ui/{graph}``                an AG-UI agent: ``RunAgentInput`` in, AG-UI events out (200, SSE)
``POST /ai-sdk/{graph}``               an AI SDK ``useChat`` endpoint: UI message stream out (200, SSE)
``GET  /ai-sdk/{graph}/{id}/stream``   the chat's active run, from its start (200 SSE, 204 if none)
``GET  /graphs``                       registered graph names
``GET  /healthz``                      liveness and counters, never secrets
=====================================  ==============================================

Each route lives in the module of its resource under :mod:`.routes`; this module
only puts them together, in the order above.

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

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from .auth import AuthDependency
from .routes import agui, aisdk, events, history, runs, service, streams, threads
from .routes.context import RouteContext

if TYPE_CHECKING:
    from ..runtime import KikiRuntime

__all__ = ["create_router"]

_ROUTES: tuple[Callable[[APIRouter, RouteContext], None], ...] = (
    streams.add_start_run_stream,
    runs.add_start_run,
    history.add_runs,
    streams.add_join_run_stream,
    runs.add_run_status,
    runs.add_cancel_run,
    events.add_run_events,
    history.add_run_causation,
    threads.add_thread_stream,
    threads.add_thread_state,
    events.add_thread_events,
    events.add_search_events,
    history.add_event_causation,
    agui.add_agui_run,
    aisdk.add_aisdk_chat,
    aisdk.add_aisdk_reconnect,
    service.add_graphs,
    service.add_healthz,
)
"""Every route, in the order they are matched and listed in the OpenAPI schema."""


def create_router(runtime: KikiRuntime, *, auth: AuthDependency | None = None) -> APIRouter:
    """The API routes of ``runtime``; include them in any FastAPI app.

    Args:
        runtime: the composition root whose runs are served (started by the app's lifespan).
        auth: optional FastAPI dependency returning the caller's principal or ``None``.
    """
    router = APIRouter()
    context = RouteContext(runtime, auth)
    for add in _ROUTES:
        add(router, context)
    _allow_every_method(router)
    return router


def _allow_every_method(router: APIRouter) -> None:
    """A path served by several routes (``GET /runs`` and ``POST /runs``) answers another method
    with a 405 whose ``Allow`` names them all (each route alone would name only its own)."""
    methods: dict[str, set[str]] = {}
    for route in router.routes:
        if isinstance(route, APIRoute):
            methods.setdefault(route.path, set()).update(route.methods or ())
    for path, allowed in methods.items():
        if len(allowed - {"HEAD"}) < 2:
            continue
        others = sorted({"DELETE", "OPTIONS", "PATCH", "PUT", "POST", "GET"} - allowed)
        router.add_api_route(path, _not_allowed(", ".join(sorted(allowed))), methods=others, include_in_schema=False)


def _not_allowed(allow: str) -> Callable[[], Awaitable[JSONResponse]]:
    async def not_allowed() -> JSONResponse:
        return JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": allow})

    return not_allowed
