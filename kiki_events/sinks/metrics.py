"""Prometheus metrics of a runtime, read at scrape time.

:class:`RuntimeCollector` reads the bus, run, SSE-client and bridge counters when
``/metrics`` is scraped, so nothing is updated per event on the hot path. Names
have the prefix ``kiki_`` and ``_total`` on counters, and no run, thread or user
labels (their number would grow without bound); the list is in docs/config.md.
The composition root builds it (``KikiRuntime.metrics_collector()``) from the
parts it reads; it knows nothing of the runtime itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..core.bus import EventBus
    from ..core.manager import RunManager
    from ..core.store import RunStore
    from ..transports import Transport

__all__ = ["BridgeView", "GapCounts", "RuntimeCollector"]


class GapCounts(Protocol):
    """Gaps in remote runs, by outcome."""

    @property
    def repaired(self) -> int: ...

    @property
    def missed(self) -> int: ...


class BridgeView(Protocol):
    """What the collector reads of the connection to the other nodes."""

    @property
    def state(self) -> str: ...

    @property
    def stats(self) -> GapCounts: ...

    @property
    def transport(self) -> Transport: ...


class RuntimeCollector(Collector):
    """Bus, run and SSE-client counters of one runtime, and its bridge's when it has one.

    Args:
        bus: the node's event bus (published, dropped, handler errors, subscriptions).
        store: the run store (runs and thread owners kept, SSE client counters).
        runs: the run manager (runs in progress and ended, by status).
        bridge: the connection to the other nodes, or ``None`` without one.
    """

    def __init__(self, *, bus: EventBus, store: RunStore, runs: RunManager, bridge: BridgeView | None = None) -> None:
        self.bus, self.store, self.runs, self.bridge = bus, store, runs, bridge

    def collect(self) -> Iterator[Metric]:
        bus, store, runs, bridge = self.bus, self.store, self.runs, self.bridge

        yield CounterMetricFamily(
            "kiki_events_published", "Events published on the local bus.", value=bus.stats.published
        )
        dropped = CounterMetricFamily("kiki_events_dropped", "Events not delivered, by reason.", labels=["reason"])
        reasons = dict(bus.stats.dropped)
        if bridge is not None:
            # Outbox overflow, refused frames (malformed, oversized, unknown_version) …
            for reason, count in bridge.transport.stats.dropped.items():
                reasons[reason] = reasons.get(reason, 0) + count
        for reason, count in sorted(reasons.items()):
            dropped.add_metric([reason], count)
        yield dropped
        yield CounterMetricFamily(
            "kiki_bus_handler_errors", "Exceptions raised by bus sinks and handlers.", value=bus.stats.handler_errors
        )
        yield GaugeMetricFamily("kiki_bus_subscriptions", "Open bus subscriptions.", value=bus.subscriptions)

        yield GaugeMetricFamily("kiki_agent_runs_in_progress", "Runs executing on this node.", value=runs.active)
        finished = CounterMetricFamily(
            "kiki_agent_runs", "Runs ended on this node, by final status.", labels=["status"]
        )
        for status, count in sorted(runs.finished.items()):
            finished.add_metric([status], count)
        yield finished
        yield GaugeMetricFamily("kiki_runs_kept", "Runs kept for join and replay.", value=len(store))
        yield CounterMetricFamily(
            "kiki_runs_evicted", "Runs forgotten after their TTL or over max_runs.", value=store.evicted
        )
        yield GaugeMetricFamily("kiki_thread_owners", "Thread owners remembered on this node.", value=len(store.owners))
        yield CounterMetricFamily(
            "kiki_thread_owners_evicted",
            "Thread owners forgotten before runs.thread_ttl because of runs.max_threads.",
            value=store.owners.evicted,
        )

        yield GaugeMetricFamily("kiki_sse_clients_connected", "Streaming clients connected now.", value=store.clients)
        yield CounterMetricFamily("kiki_sse_connections", "Streaming connections accepted.", value=store.connections)
        yield CounterMetricFamily(
            "kiki_sse_slow_clients", "Clients that fell behind (sse.slow_client applied).", value=store.lagging
        )
        yield CounterMetricFamily(
            "kiki_sse_stalled_clients",
            "Clients reset after accepting nothing for sse.send_timeout.",
            value=store.stalled,
        )
        if bridge is not None:
            yield from _bridge_metrics(bridge)


def _bridge_metrics(bridge: BridgeView) -> Iterator[Metric]:
    stats = bridge.transport.stats
    messages = CounterMetricFamily(
        "kiki_bridge_messages", "Cross-node messages (frames), by direction.", labels=["direction"]
    )
    messages.add_metric(["in"], stats.messages_in)
    messages.add_metric(["out"], stats.messages_out)
    yield messages
    events = CounterMetricFamily(
        "kiki_bridge_events", "Run events sent to and received from other nodes.", labels=["direction"]
    )
    events.add_metric(["in"], stats.events_in)
    events.add_metric(["out"], stats.events_out)
    yield events
    yield CounterMetricFamily(
        "kiki_bridge_lifecycle_events", "Lifecycle events received as broadcasts.", value=stats.lifecycle_in
    )
    yield CounterMetricFamily(
        "kiki_bridge_reconnects", "Connections to the transport re-established after a loss.", value=stats.reconnects
    )
    gaps = CounterMetricFamily(
        "kiki_bridge_gaps", "Gaps in remote runs, by outcome (repaired, or reported as missed).", labels=["outcome"]
    )
    gaps.add_metric(["repaired"], bridge.stats.repaired)
    gaps.add_metric(["missed"], bridge.stats.missed)
    yield gaps
    yield GaugeMetricFamily(
        "kiki_bridge_up", "1 while the bridge is connected to its transport.", value=int(bridge.state == "connected")
    )
    lag = stats.lag
    yield HistogramMetricFamily(
        "kiki_bridge_delivery_lag_seconds",
        "Publish (on the producing node) to receipt (here) of live cross-node messages.",
        buckets=lag.cumulative(),
        sum_value=lag.sum,
    )
    depth = GaugeMetricFamily("kiki_queue_depth", "Events waiting in a queue.", labels=["queue"])
    depth.add_metric(["outbox"], bridge.transport.outbox_depth)
    yield depth
