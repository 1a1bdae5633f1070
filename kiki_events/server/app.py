"""The ready-made FastAPI application: API routes, metrics, the live dashboard.

``create_app()`` builds (or is given) a :class:`~kiki_events.runtime.KikiRuntime`;
the app's lifespan starts and stops it. CORS is off unless ``sse.cors_origins``
lists origins.
"""

# No ``from __future__ import annotations``: FastAPI reads these annotations at runtime.

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from ..config import Settings
from ..errors import ConfigError
from ..log import get_logger
from ..runtime import KikiRuntime
from .auth import AuthDependency, bearer_tokens
from .router import create_router
from .sse import keep_transport

__all__ = ["STATIC_DIR", "create_app"]

logger = get_logger("kiki_events.server")

STATIC_DIR = Path(__file__).parent / "static"
"""Files of the live dashboard (``index.html`` is served at ``/``)."""

_PLACEHOLDER = """<!doctype html>
<html><head><meta charset="utf-8"><title>kiki-events</title></head>
<body><h1>kiki-events</h1>
<p>The dashboard files are not installed. The API is live: try <code>GET /graphs</code>,
<code>POST /runs/stream</code> and <code>GET /healthz</code>.</p></body></html>
"""


class _App(FastAPI):
    """FastAPI, noting each connection's transport so stalled streams can be reset."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            keep_transport(scope, send)
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    runtime: KikiRuntime | None = None,
    auth: AuthDependency | None = None,
    graphs: Mapping[str, object] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> FastAPI:
    """A FastAPI app serving one runtime.

    Args:
        settings: configuration (ignored when ``runtime`` is given; default: built-in defaults).
        runtime: an existing runtime; if it is not started yet the app starts and
            stops it, otherwise its owner does.
        auth: FastAPI dependency returning the caller's principal or ``None`` (see
            :mod:`kiki_events.server.auth`); default: the ``server.auth.bearer_tokens``
            of the settings, and without those every request is anonymous.
        graphs: graph name → compiled graph, in addition to ``settings.graphs``.
        base_dir: directory that relative graph paths in ``settings.graphs`` resolve against.

    Raises:
        GraphLoadError: a graph reference cannot be loaded.
        ConfigError: both ``settings`` and ``runtime`` were given (a ``ValueError``).
    """
    runtime = _runtime(settings, runtime, graphs, base_dir)
    owned = runtime.state == "new"
    cfg = runtime.settings
    tokens = cfg.server.auth.bearer_tokens
    if auth is None and tokens:
        auth = bearer_tokens({token: principal for principal, token in tokens.items()})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await runtime.start()
        try:
            yield
        finally:
            if owned:
                await runtime.close()

    app = _App(title="kiki-events", lifespan=lifespan)
    app.state.kiki_runtime = runtime
    if cfg.sse.cors_origins:
        _add_cors(app, cfg.sse.cors_origins)
    app.include_router(create_router(runtime, auth=auth))
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    if runtime.metrics is not None:
        _add_metrics(app, runtime, cfg.metrics.path)
    if cfg.server.dashboard:
        _add_dashboard(app)
    return app


def _runtime(
    settings: Settings | None,
    runtime: KikiRuntime | None,
    graphs: Mapping[str, object] | None,
    base_dir: str | os.PathLike[str] | None,
) -> KikiRuntime:
    """The runtime to serve: ``runtime`` with ``graphs`` added, or a new one built from ``settings``."""
    if runtime is None:
        return KikiRuntime(settings, graphs=graphs, base_dir=base_dir)
    if settings is not None:
        raise ConfigError("give either settings or a runtime (which has its own settings), not both")
    for name, graph in (graphs or {}).items():
        runtime.graphs.register(name, graph)
    return runtime


def _add_cors(app: FastAPI, origins: Sequence[str]) -> None:
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_methods=["GET", "POST"],
        allow_headers=["Content-Type", "Authorization", "Last-Event-ID"],
        expose_headers=["Content-Location", "X-Kiki-Run-Id", "X-Kiki-Cursor", "X-Kiki-History"],
    )


async def _invalid(request: Request, exc: Exception) -> Response:
    # Every error body is ``{"detail": "<message>"}``; FastAPI's own would be a list of dicts.
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return JSONResponse({"detail": (problems[0] if problems else "invalid request") + more}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    # A 405 names every method of its path (``GET /runs`` and ``POST /runs`` are two
    # routes; the router alone would name only the first one's).
    if not isinstance(exc, StarletteHTTPException):
        return await _unexpected(request, exc)
    if exc.status_code == 405:
        item = request.app.openapi().get("paths", {}).get(request.url.path, {})
        methods = sorted(method.upper() for method in item if method in _METHODS)
        if methods:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(methods)}
    return await http_exception_handler(request, exc)


_METHODS = ("get", "post", "put", "patch", "delete")


async def _unexpected(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log (the server re-raises after this handler);
    # the client learns only that something failed, and of which type.
    return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)


def _add_metrics(app: FastAPI, runtime: KikiRuntime, path: str) -> None:
    # An explicit route: mounting prometheus' ASGI app answers ``/metrics`` with a redirect.
    @app.get(path, include_in_schema=False)
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(runtime.metrics_text(), media_type=CONTENT_TYPE_LATEST)


class _DashboardFiles(StaticFiles):
    """The dashboard's files, revalidated (ETag) on every load: a page never mixes
    modules of two versions after an upgrade."""

    def file_response(
        self, full_path: "os.PathLike[str] | str", stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response


def _add_dashboard(app: FastAPI) -> None:
    if STATIC_DIR.is_dir():
        app.mount("/static", _DashboardFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> Response:
        index = STATIC_DIR / "index.html"
        if index.is_file():
            return FileResponse(index, headers={"Cache-Control": "no-cache"})
        return HTMLResponse(_PLACEHOLDER)
