"""The HTTP API of the default format (README.md, "Serve it over SSE" and "Cross-node").

=====================================  ==============================================
``POST /runs/stream``                  start a run and stream it (200, SSE)
``POST /runs``                         start a run, answer at once (202)
``GET  /runs/{run_id}/stream``         join or resume a run (200 SSE, 204 if nothing is left)
``GET  /runs/{run_id}``                run status (200)
``POST /runs/{run_id}/cancel``         cancel (200 when ended, 202 while stopping)
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

from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import APIRouter

from .auth import AuthDependency
from .routes import agui, aisdk, runs, service, stats, streams, threads
from .routes.context import RouteContext

if TYPE_CHECKING:
    from ..runtime import KikiRuntime

__all__ = ["create_router"]

_ROUTES: tuple[Callable[[APIRouter, RouteContext], None], ...] = (
    streams.add_start_run_stream,
    runs.add_start_run,
    streams.add_join_run_stream,
    runs.add_run_status,
    runs.add_cancel_run,
    threads.add_thread_stream,
    threads.add_thread_state,
    agui.add_agui_run,
    aisdk.add_aisdk_chat,
    aisdk.add_aisdk_reconnect,
    service.add_graphs,
    service.add_healthz,
    stats.add_stats,
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
    return router
