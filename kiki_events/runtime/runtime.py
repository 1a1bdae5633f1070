"""The composition root: settings in, one object that owns everything running.

:class:`KikiRuntime` builds the event bus, the run store (attached to the bus as a
sink), the graph registry and the run manager from :class:`~kiki_events.config.Settings`.
The server and library users build the same object; nothing is global::

    async with KikiRuntime(settings, graphs={"team": graph}) as runtime:
        handle = runtime.runs.start("team", {"messages": [...]})

With ``eventbus.provider: redis`` (or a shared :class:`~kiki_events.transports.MemoryHub`)
it also owns a :class:`~kiki_events.bridge.Bridge` connecting it to the other
nodes: :meth:`KikiRuntime.follow` then reads a run wherever it executes.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..bridge import Bridge
from ..capture.handler import KikiCallbackHandler
from ..config import Settings
from ..core.bus import EventBus
from ..core.cursors import RunCursor
from ..core.graphs import GraphRegistry, load_graphs
from ..core.manager import RunHandle, RunManager
from ..core.runlog import Frame
from ..core.runrecord import RunRecord
from ..core.store import RunStore
from ..core.tasks import stop_tasks, supervise
from ..core.threads import new_thread_id
from ..errors import KikiEventsError, RunNotFoundError
from ..events import StreamEvent
from ..log import get_logger
from ..sinks import SinkContext
from ..transports import MemoryHub, Transport
from .build import (
    build_sinks,
    create_handoff,
    create_metrics,
    create_parts_metrics,
    create_tracing,
    create_transport,
    history_of,
)
from .checkpoint import open_checkpointer, recorded_owner

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver
    from prometheus_client import CollectorRegistry

    from ..core.tracing import RunTracing
    from ..handoff import Handoff
    from ..redis.types import Redis
    from ..sinks.metrics import KikiMetrics
    from ..sinks.parts import PartsMetrics

__all__ = ["KikiRuntime", "default_node_name"]

logger = get_logger("kiki_events.runtime")


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
        registry: Prometheus registry the runtime defines its ``kiki_`` metrics on
            (with ``metrics.enabled``; default: a new private one, never the global
            registry). Pass your own to serve them from your application's
            ``/metrics``; one runtime per registry.
        base_dir: directory that relative graph paths resolve against.
        redis: Redis client for the bridge (default: one made from
            ``eventbus.redis`` when ``eventbus.provider`` is ``redis``).
        hub: connect to the other runtimes of this process sharing ``hub``
            (with ``eventbus.provider: memory``).
        transport: a transport of your own (overrides ``redis`` and ``hub``).
        tracing: how every run is traced (:class:`~kiki_events.core.tracing.RunTracing`;
            default: as ``langfuse`` asks, or not at all).

    Raises:
        GraphLoadError: a graph reference cannot be loaded.
        ConfigError: the Redis address is invalid; ``registry`` holds kiki metrics
            already; ``PROMETHEUS_MULTIPROC_DIR`` is set but unusable.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        graphs: Mapping[str, object] | None = None,
        registry: CollectorRegistry | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        redis: Redis | None = None,
        hub: MemoryHub | None = None,
        transport: Transport | None = None,
        tracing: RunTracing | None = None,
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
            tracing=tracing if tracing is not None else create_tracing(settings),
            prices=settings.price_table,
        )
        if transport is None and settings.eventbus.enabled:
            transport = create_transport(settings, node=self.node, redis=redis, hub=hub)
        self.bridge: Bridge | None = None
        """Connection to the other nodes; ``None`` without a transport (flag off: nothing changes)."""
        if transport is not None:
            self.bridge = Bridge(transport, bus=self.bus, store=self.store, runs=self.runs, settings=settings.eventbus)
        self._registry = registry
        self.metrics: KikiMetrics | None = None
        """The ``kiki_`` Prometheus metrics on :attr:`metrics_registry` (``None`` with ``metrics.enabled: false``)."""
        self._parts: PartsMetrics | None = None
        if settings.metrics.enabled:
            self.metrics = create_metrics(self.metrics_registry)
            self._parts = create_parts_metrics(
                self.metrics, bus=self.bus, store=self.store, runs=self.runs, bridge=self.bridge
            )
        self._metrics_task: asyncio.Task[None] | None = None
        registry = self._registry if self.metrics is not None else None
        context = SinkContext(
            settings, node=self.node, registry=registry, metrics=self.metrics, lookup_run=self.store.peek
        )
        self.sinks = build_sinks(context)
        """Per-event sinks (:mod:`kiki_events.sinks`), attached to the bus while the runtime runs."""
        self.history = history_of(self.sinks)
        """The event store (:mod:`kiki_events.history`) while running; ``None`` unless ``store.enabled``."""
        # Agents across nodes (kiki_events.handoff): delegate to and serve agents
        # through Redis; None with another provider.
        self.handoff: Handoff | None = create_handoff(
            settings, node=self.node, runs=self.runs, bridge=self.bridge, follow=self.follow
        )
        self._checkpointer = AsyncExitStack()  # closes runs.checkpointer (opened at start)
        self.checkpointer: BaseCheckpointSaver[Any] | None = None
        """The checkpointer of ``runs.checkpointer``, open while the runtime runs."""
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

    def metrics_text(self) -> bytes:
        """The Prometheus text exposition of the metrics (what ``GET /metrics`` answers).

        The parts' counters are copied in first. With ``PROMETHEUS_MULTIPROC_DIR``
        it holds the values of every worker process writing to that directory.

        Raises:
            KikiEventsError: metrics are off (``metrics.enabled: false``).
        """
        if self._parts is None:
            raise KikiEventsError("metrics are off (metrics.enabled: false)")
        from ..sinks.metrics import exposition

        return exposition(self._parts.metrics)

    async def start(self) -> None:
        """Open the checkpointer, start the bus, the run store's sweeper, the sinks, the bridge and the handoff.

        The checkpointer (``runs.checkpointer``) is given to every graph compiled without one.

        Raises:
            KikiEventsError: the runtime was started before.
            MissingDependencyError, ConfigError, CheckpointerError: the checkpointer cannot be opened.
        """
        if self._state != "new":
            raise KikiEventsError(f"this KikiRuntime cannot be started: it is {self._state} (create a new one)")
        try:
            self.checkpointer = await open_checkpointer(self.settings.runs.checkpointer, self._checkpointer)
            self.graphs.use_checkpointer(self.checkpointer)
        except BaseException:
            await self._checkpointer.aclose()
            raise
        await self.bus.start()
        self._remove_sink = self.bus.add_sink(self.store.sink)
        await self.sinks.attach(self.bus)
        await self.store.start()
        if self.bridge is not None:
            await self.bridge.start()  # after the store's sink: it reads run records
        if self.handoff is not None:
            await self.handoff.start()
        if self._parts is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Another worker may answer the scrape: keep this process's copy current.
            self._metrics_task = supervise("kiki-metrics", self._parts.refresh_every)
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
                try:
                    await self.handoff.close()
                finally:
                    await self.handoff.redis.aclose()  # the client create_handoff made
        finally:
            if self.bridge is not None:
                # Every run ended by now: their last events leave before the bridge closes.
                await self.bridge.close(timeout=self.settings.eventbus.publish.timeout or 5.0)
            await self.sinks.detach()
            await self._close_tracing()
            await stop_tasks([self._metrics_task])
            if self._parts is not None:
                self._parts.metrics.refresh()
                self._parts.release()
            if self._remove_sink is not None:
                self._remove_sink()
            await self.store.close()
            await self.bus.close()
            await self._checkpointer.aclose()  # every run ended: nothing writes to it any more
            self._state = "closed"
            logger.info("kiki runtime stopped")

    async def _close_tracing(self) -> None:
        """Send the runs' buffered traces (in a worker thread: it may wait on the network)."""
        tracing = self.runs.tracing
        if tracing is not None:
            try:
                await asyncio.to_thread(tracing.close)
            except Exception:
                logger.exception("closing the tracing (%s) failed", tracing.name)

    async def _check_recorded_owner(self, thread_id: str, principal: str | None) -> None:
        """Refuse a thread not known here whose checkpoints name another owner (e.g. after a restart)."""
        if self.checkpointer is None or self.store.owners.get(thread_id) is not None:
            return
        recorded, owner = await recorded_owner(self.checkpointer, thread_id)
        if recorded and owner != principal:
            raise RunNotFoundError(f"thread {thread_id!r} not found")

    async def start_run(
        self,
        graph_name: str,
        input: Any,
        *,
        thread_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        principal: str | None = None,
        handler_factory: Callable[..., KikiCallbackHandler] = KikiCallbackHandler,
    ) -> RunHandle:
        """:meth:`RunManager.start <kiki_events.core.manager.RunManager.start>`, with the thread's owner
        decided for the whole cluster first (the HTTP API starts runs this way).

        ``runs.start`` checks the owner on this node only. With a bridge, a given
        ``thread_id`` is claimed in the registry (:meth:`.Bridge.claim_thread`), so no
        other node gives the thread to another principal. A thread id made here
        (``thread_id=None``) is unguessable and needs no claim up front: its owner is
        recorded with the run's registry entry, even after a Redis outage.

        Raises:
            UnknownGraphError: no such graph (nothing is claimed).
            RunNotFoundError: the thread belongs to another principal, here or on any node.
            TransportError: ``thread_id`` is not known here to be ``principal``'s and the
                registry cannot be reached to claim it: retry later.
            RunLimitError, RunError: as ``runs.start``.
        """
        self.graphs.get(graph_name)
        if thread_id is None:
            thread_id = new_thread_id()
            self.store.claim_thread(thread_id, principal, confirmed=True)
        else:
            await self._check_recorded_owner(thread_id, principal)
            if self.bridge is not None:
                await self.bridge.claim_thread(thread_id, principal)
        return self.runs.start(
            graph_name,
            input,
            thread_id=thread_id,
            metadata=metadata,
            principal=principal,
            handler_factory=handler_factory,
        )

    async def connected(self, timeout: float | None = None) -> bool:
        """Wait until this node is connected to the other nodes (:meth:`.Bridge.connected`).

        ``True`` at once without a bridge (nothing to connect to); ``False`` if the
        bridge is not connected within ``timeout`` seconds (``None``: no limit).
        """
        if self.bridge is None:
            return True
        return await self.bridge.connected(timeout)

    async def follow(self, run_id: str, *, after: int = 0) -> AsyncIterator[StreamEvent]:
        """Every event of ``run_id`` with ``seq > after``, from whichever node runs it.

        Ends after the run's ``done`` (or when the run is forgotten). A run of
        another node is followed through the bridge: caught up from its stream
        (streams mode) or its node's replay log, then live. Besides the run's
        events, connection-level notices may appear (``StatusEvent`` with
        ``seq == 0``: ``gap`` if ``after`` is older than what is kept, ``lagging``
        if this reader fell out of the replay window, ``missed`` if events were
        lost between nodes); filter on ``event.seq`` if you do not want them.
        No ownership check: this is the trusted, in-process API.

        Raises:
            RunNotFoundError: no node knows the run (after a short registry lookup;
                raised on the first iteration).
            TransportError: the run is not known here and the registry cannot be reached.
        """
        record = await self._resolve(run_id)
        bridge = self.bridge
        lease = bridge.watch_run(run_id) if bridge is not None and not record.ended else None
        cursor = RunCursor(record.log, after, thread_id=record.thread_id, slow_client=self.settings.sse.slow_client)
        try:
            while True:
                items = await cursor.next()
                if not items:
                    return
                for item in items:
                    yield item.event if isinstance(item, Frame) else item
        finally:
            if lease is not None:
                lease.release()

    async def _resolve(self, run_id: str) -> RunRecord:
        record = self.store.peek(run_id)
        if self.bridge is None:
            if record is None:
                raise RunNotFoundError(f"run {run_id!r} not found")
            return record
        return await self.bridge.open_run(run_id, check_owner=False)

    async def __aenter__(self) -> KikiRuntime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
