"""The composition root: settings in, one object that owns everything running.

:class:`KikiRuntime` builds the event bus, the run store (attached to the bus as a
sink), the graph registry and the run manager from :class:`~kiki_events.config.Settings`.
The server and library users build the same object; nothing is global::

    async with KikiRuntime(settings, graphs={"team": graph}) as runtime:
        handle = runtime.runs.start("team", {"messages": [...]})
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .bus import EventBus
from .config import Settings
from .errors import KikiEventsError
from .graphs import GraphRegistry, load_graphs
from .runs import RunManager, RunStore

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .handoff import Handoff

__all__ = ["KikiRuntime", "default_node_name"]

logger = logging.getLogger("kiki_events.runtime")


def default_node_name() -> str:
    """``<hostname>-<pid>``: unique per process on a network."""
    return f"{socket.gethostname()}-{os.getpid()}"


class KikiRuntime:
    """Owns the bus, run store, graph registry and run manager of one process.

    Graph references in ``settings.graphs`` are loaded when the runtime is built
    (so a bad reference fails before anything starts), relative paths against
    ``base_dir`` (default: the current directory); ``graphs`` adds or replaces
    graphs by name. Use it as an async context manager; it cannot be started twice.

    Args:
        settings: the configuration (default: built-in defaults).
        graphs: graph name → compiled graph, in addition to ``settings.graphs``.
        registry: Prometheus registry for the runtime's metrics (default: a new
            private one, created on first use; never the global registry).
        base_dir: directory that relative graph paths resolve against.

    Raises:
        GraphLoadError: a graph reference cannot be loaded.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        graphs: Mapping[str, object] | None = None,
        registry: CollectorRegistry | None = None,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.settings = settings = settings or Settings()
        self.node = settings.node or default_node_name()
        self.graphs = GraphRegistry(load_graphs(settings.graphs, base_dir=Path(base_dir) if base_dir else None))
        for name, graph in (graphs or {}).items():
            self.graphs.register(name, graph)
        self.bus = EventBus(
            node=self.node, inbox_size=settings.eventbus.inbox_size, queue_size=settings.eventbus.queue_size
        )
        self.store = RunStore.from_settings(settings.runs)
        self.runs = RunManager(
            bus=self.bus,
            store=self.store,
            graphs=self.graphs,
            settings=settings.runs,
            handler_settings=settings.handler,
            node=self.node,
        )
        self._registry = registry
        # Agents across nodes (kiki_events.handoff): delegate to and serve agents
        # through Redis; None with another provider.
        self.handoff: Handoff | None = None
        if settings.eventbus.enabled and settings.eventbus.provider == "redis":
            from .handoff import Handoff

            self.handoff = Handoff(self)
        self._state: Literal["new", "running", "stopping", "closed"] = "new"
        self._remove_sink: Callable[[], None] | None = None
        self._shutdown_task: asyncio.Task[None] | None = None

    @property
    def state(self) -> Literal["new", "running", "stopping", "closed"]:
        """``new`` → ``running`` → ``stopping`` → ``closed``."""
        return self._state

    @property
    def metrics_registry(self) -> CollectorRegistry:
        """The Prometheus registry this runtime's metrics live on."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry(auto_describe=True)
        return self._registry

    async def start(self) -> None:
        """Start the bus and the run store's sweeper.

        Raises:
            KikiEventsError: the runtime was started before.
        """
        if self._state != "new":
            raise KikiEventsError(f"this KikiRuntime cannot be started: it is {self._state} (create a new one)")
        await self.bus.start()
        self._remove_sink = self.bus.add_sink(self.store.sink)
        await self.store.start()
        if self.handoff is not None:
            await self.handoff.start()
        self._state = "running"
        logger.info(
            "kiki runtime started on node %s with graphs %s", self.node, ", ".join(self.graphs.names()) or "(none)"
        )

    def request_shutdown(self) -> asyncio.Task[None]:
        """Begin the graceful shutdown of runs (idempotent); returns its task.

        Runs get ``runs.shutdown_grace`` seconds, then are cancelled, so every
        client receives a final ``done``. Servers call this as soon as they are
        told to stop, while SSE connections are still open.
        """
        if self._shutdown_task is None:
            if self._state == "running":
                self._state = "stopping"
            self._shutdown_task = asyncio.get_running_loop().create_task(self._shutdown(), name="kiki-runs-shutdown")
        return self._shutdown_task

    async def _shutdown(self) -> None:
        if self.handoff is not None:  # take no new tasks from other nodes
            await self.handoff.stop_serving()
        await self.runs.shutdown(self.settings.runs.shutdown_grace)
        self.store.stop_following()

    async def close(self) -> None:
        """Shut runs down gracefully, then stop the store and the bus (idempotent)."""
        if self._state in ("new", "closed"):
            self._state = "closed"
            return
        try:
            await self.request_shutdown()
            if self.handoff is not None:
                await self.handoff.close()
        finally:
            if self._remove_sink is not None:
                self._remove_sink()
            await self.store.close()
            await self.bus.close()
            self._state = "closed"
            logger.info("kiki runtime stopped")

    async def __aenter__(self) -> KikiRuntime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
