"""HTTP/SSE server: FastAPI routes, SSE framing, the ready-made app.

Needs the ``server`` extra (``pip install kiki-events[server]``)::

    from kiki_events.server import create_app
    app = create_app(graphs={"team": graph})

or, in an existing app, :func:`create_router` / :func:`stream_agent_sse`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["bearer_tokens", "create_app", "create_router", "stream_agent_sse"]

if TYPE_CHECKING:
    from .app import create_app
    from .auth import bearer_tokens
    from .router import create_router
    from .sse import stream_agent_sse

_WHERE = {
    "create_app": ".app",
    "create_router": ".router",
    "stream_agent_sse": ".sse",
    "bearer_tokens": ".auth",
}


def __getattr__(name: str) -> Any:
    # Lazy: ``kiki_events`` and its wire formats (``kiki_events.formats``) must
    # import without FastAPI installed.
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    try:
        return getattr(importlib.import_module(module, __name__), name)
    except ImportError as exc:
        if exc.name in ("fastapi", "sse_starlette", "starlette", "uvicorn", "prometheus_client"):
            from ..errors import MissingDependencyError

            raise MissingDependencyError(
                f"kiki_events.server needs {exc.name}: pip install 'kiki-events[server]'"
            ) from exc
        raise
