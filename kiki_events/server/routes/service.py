"""The service itself: ``GET /graphs`` (registered graph names) and ``GET /healthz``
(liveness and counters, never secrets)."""

# No ``from __future__ import annotations``: FastAPI reads these annotations at runtime.

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from ..auth import Principal
from ..responses import errors
from .context import RouteContext

__all__ = ["add_graphs", "add_healthz", "health"]


def add_graphs(router: APIRouter, ctx: RouteContext) -> None:
    """``GET /graphs``."""
    Caller = Annotated[Principal, Depends(ctx.principal)]

    @router.get("/graphs", operation_id="list_graphs", responses=errors(401))
    async def list_graphs(principal: Caller) -> dict[str, list[str]]:
        """Names of the graphs runs can be started with."""
        return {"graphs": ctx.runtime.graphs.names()}


def health(ctx: RouteContext) -> dict[str, Any]:
    """The body of ``GET /healthz``: state, node, graphs and counters of the bus, runs, SSE and bridge."""
    runtime = ctx.runtime
    store = ctx.store
    runs = ctx.runs
    bus = runtime.bus
    bridge = ctx.bridge
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


def add_healthz(router: APIRouter, ctx: RouteContext) -> None:
    """``GET /healthz``."""

    @router.get("/healthz", operation_id="healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness and counters (no secrets, no principals, no run ids)."""
        return health(ctx)
