"""The sink contract: what the composition root attaches to the event bus.

A :class:`Sink` is called by the bus for every event published on this node (the
same call as :meth:`EventBus.add_sink <kiki_events.core.bus.EventBus.add_sink>`),
and started before the first event and closed after the last one, for sinks that
run tasks of their own (a batching exporter, a file writer). :class:`SinkSet` does
that for the sinks of one runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

from ..events import StreamEvent
from ..log import get_logger

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..config import Settings
    from ..core.bus import EventBus
    from ..core.runrecord import RunRecord
    from .metrics import KikiMetrics

__all__ = ["Sink", "SinkContext", "SinkFactory", "SinkSet"]

logger = get_logger("kiki_events.sinks")


@runtime_checkable
class Sink(Protocol):
    """Receives every event of the local bus.

    ``__call__`` runs synchronously on the event loop for every event: keep it quick
    and never block (hand slow work to a task made in :meth:`start`). An exception
    it raises is logged and counted (``kiki_bus_handler_errors_total``), never passed
    to the publisher. Subclass it to inherit the do-nothing :meth:`start` and :meth:`close`.
    """

    name: str
    """A short name for logs, e.g. ``stdout``."""

    def __call__(self, event: StreamEvent) -> None:
        """Take one event (do not keep it waiting: it is shared and immutable)."""
        ...

    async def start(self) -> None:
        """Start the sink's own tasks, if any; called before the first event."""
        return

    async def close(self) -> None:
        """Flush and stop; called after the last event."""
        return


@dataclass(frozen=True)
class SinkContext:
    """What a sink factory is given by the composition root."""

    settings: Settings
    """The runtime's settings."""
    node: str | None = None
    """This node's name (the ``node`` of the events its runs produce)."""
    registry: CollectorRegistry | None = None
    """The runtime's Prometheus registry, for a sink with metrics of its own (``None``: metrics off)."""
    metrics: KikiMetrics | None = None
    """The runtime's ``kiki_`` metrics on that registry (``None``: metrics off)."""
    lookup_run: Callable[[str], RunRecord | None] | None = None
    """What the run store knows of a run (owner, graph, node, thread), by run id (``None``: nothing)."""


SinkFactory: TypeAlias = "Callable[[SinkContext], Sink | None]"
"""Builds a sink from its context, or ``None`` when the settings turn it off."""


class SinkSet:
    """The sinks of one runtime: started and attached together, detached and closed together."""

    def __init__(self, sinks: Iterable[Sink] = ()) -> None:
        self.sinks = tuple(sinks)
        self._attached: list[tuple[Sink, Callable[[], None]]] = []

    def __len__(self) -> int:
        return len(self.sinks)

    def names(self) -> list[str]:
        """The names of the sinks, in the order they are attached."""
        return [sink.name for sink in self.sinks]

    async def attach(self, bus: EventBus) -> None:
        """Start each sink, then attach it to ``bus`` (in order)."""
        for sink in self.sinks:
            await sink.start()
            # A sink sees replayed events (EventBus.replay) only if it says so.
            replayed = getattr(sink, "replayed", False) is True
            self._attached.append((sink, bus.add_sink(sink, replayed=replayed)))

    async def detach(self) -> None:
        """Detach every attached sink from the bus, then close it (idempotent).

        A sink that fails to close is logged; the others still close.
        """
        attached, self._attached = self._attached, []
        for _, remove in attached:
            remove()
        for sink, _ in attached:
            try:
                await sink.close()
            except Exception:
                logger.exception("sink %s failed to close", sink.name)
