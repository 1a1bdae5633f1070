"""The routes of the HTTP API, one module per resource.

:func:`kiki_events.server.router.create_router` builds a :class:`.context.RouteContext`
from the runtime and adds each route to one ``APIRouter``:

* :mod:`.streams` – ``POST /runs/stream`` and ``GET /runs/{run_id}/stream`` (SSE);
* :mod:`.runs` – ``POST /runs``, ``GET /runs/{run_id}``, ``POST /runs/{run_id}/cancel``;
* :mod:`.history_list` – ``GET /runs`` (the runs kept in the event store);
* :mod:`.threads` – ``GET /threads/{thread_id}/stream`` (SSE) and ``GET /threads/{thread_id}/state``;
* :mod:`.agui` – ``POST /ag-ui/{graph}`` (an AG-UI agent, SSE);
* :mod:`.service` – ``GET /graphs`` and ``GET /healthz``.
"""
