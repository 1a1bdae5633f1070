"""The counters the runtime's parts keep, copied into the Prometheus metrics.

The bus, the run store (with the SSE counters), the run manager and the bridge
count in plain integers on their own hot paths. :class:`PartsMetrics` copies them
into the metric objects: when ``/metrics`` is scraped in the process that answers,
and, in multiprocess mode, every :data:`REFRESH_INTERVAL` seconds in every worker
(another worker may answer the scrape). Counters advance by the difference since
the last copy, so they add up across processes. The bridge's delivery lag is not
copied: the bridge observes it into the histogram as frames arrive
(:meth:`PartsMetrics.connect`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..core.bus import EventBus
    from ..core.manager import RunManager
    from ..core.store import RunStore
    from ..transports import Transport
    from .metrics import KikiMetrics

__all__ = ["REFRESH_INTERVAL", "BridgeView", "GapCounts", "PartsMetrics"]

REFRESH_INTERVAL = 1.0
"""Seconds between copies in multiprocess mode."""


class GapCounts(Protocol):
    """Gaps in remote runs, by outcome."""

    @property
    def repaired(self) -> int: ...

    @property
    def missed(self) -> int: ...


class BridgeView(Protocol):
    """What is read of the connection to the other nodes."""

    @property
    def state(self) -> str: ...

    @property
    def stats(self) -> GapCounts: ...

    @property
    def transport(self) -> Transport: ...


class PartsMetrics:
    """Copies the counters of one runtime's parts into ``metrics``.

    Args:
        metrics: the metric objects.
        bus: the node's event bus (drops, handler errors, subscriptions).
        store: the run store (runs and thread owners kept, SSE clients).
        runs: the run manager (callback handler failures).
        bridge: the connection to the other nodes, or ``None`` without one.
    """

    def __init__(
        self, metrics: KikiMetrics, *, bus: EventBus, store: RunStore, runs: RunManager, bridge: BridgeView | None
    ) -> None:
        self.metrics, self.bus, self.store, self.runs, self.bridge = metrics, bus, store, runs, bridge
        self._last: dict[tuple[str, ...], float] = {}

    def connect(self) -> None:
        """Copy on every refresh of the metrics; have the bridge's transport observe its delivery lag."""
        self.metrics.add_refresher(self.refresh)
        if self.bridge is not None:
            self.bridge.transport.stats.on_lag = self.metrics.bridge_lag.observe

    def _advance(self, counter: Any, value: float, *labels: str) -> None:
        """Move ``counter`` (with ``labels``) up to ``value``, the part's running total."""
        key = (counter._name, *labels)
        delta = value - self._last.get(key, 0)
        if delta > 0:
            (counter.labels(*labels) if labels else counter).inc(delta)
            self._last[key] = value

    def _advance_all(self, counter: Any, counts: Mapping[str, float]) -> None:
        for label, value in counts.items():
            self._advance(counter, value, label)

    def refresh(self) -> None:
        """Copy every part's current values (cheap: a few dozen numbers)."""
        m, bus, store = self.metrics, self.bus, self.store
        dropped = dict(bus.stats.dropped)
        bridge = self.bridge
        if bridge is not None:
            for reason, count in bridge.transport.stats.dropped.items():
                dropped[reason] = dropped.get(reason, 0) + count
        self._advance_all(m.dropped, dropped)
        self._advance(m.bus_handler_errors, bus.stats.handler_errors)
        self._advance_all(_Errors(m.errors, "sink"), bus.stats.handler_error_types)
        self._advance_all(_Errors(m.errors, "handler"), self.runs.handler_errors)
        m.bus_subscriptions.set(bus.subscriptions)
        m.runs_kept.set(len(store))
        self._advance(m.runs_evicted, store.evicted)
        m.thread_owners.set(len(store.owners))
        self._advance(m.thread_owners_evicted, store.owners.evicted)
        m.sse_clients.set(store.clients)
        self._advance(m.sse_connections, store.connections)
        self._advance_all(m.sse_disconnects, store.disconnects)
        if bridge is not None:
            self._bridge(bridge)

    def _bridge(self, bridge: BridgeView) -> None:
        m, stats = self.metrics, bridge.transport.stats
        self._advance_all(m.bridge_messages, {"in": stats.messages_in, "out": stats.messages_out})
        self._advance_all(m.bridge_events, {"in": stats.events_in, "out": stats.events_out})
        self._advance(m.bridge_reconnects, stats.reconnects)
        self._advance_all(m.bridge_gaps, {"repaired": bridge.stats.repaired, "missed": bridge.stats.missed})
        m.bridge_up.labels(bridge.transport.name).set(int(bridge.state == "connected"))
        m.queue_depth.labels("outbox").set(bridge.transport.outbox_depth)

    def release(self) -> None:
        """Set this process's gauges to zero (the runtime stopped)."""
        m = self.metrics
        for gauge in (m.bus_subscriptions, m.runs_kept, m.thread_owners, m.sse_clients):
            gauge.set(0)
        m.queue_depth.labels("outbox").set(0)
        if self.bridge is not None:
            m.bridge_up.labels(self.bridge.transport.name).set(0)

    async def refresh_every(self, interval: float = REFRESH_INTERVAL) -> None:
        """Refresh the metrics (this copy and every other) every ``interval`` seconds until cancelled."""
        while True:
            self.metrics.refresh()
            await asyncio.sleep(interval)


class _Errors:
    """``kiki_errors_total`` of one component, looking like a counter labelled by error type."""

    __slots__ = ("_component", "_counter", "_name")

    def __init__(self, counter: Any, component: str) -> None:
        self._counter, self._component = counter, component
        self._name = f"errors:{component}"

    def labels(self, error_type: str) -> Any:
        return self._counter.labels(self._component, error_type)
