"""Prometheus metrics of a runtime, read at scrape time.

:class:`RuntimeCollector` reads the bus and run counters when ``/metrics`` is
scraped, so nothing is updated per event on the hot path. Names follow
OBSERVABILITY.md: prefix ``kiki_``, ``_total`` on counters, no run/thread/user labels.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..runtime import KikiRuntime

__all__ = ["RuntimeCollector"]


class RuntimeCollector(Collector):
    """Bus, run and SSE-client counters of one :class:`KikiRuntime`."""

    def __init__(self, runtime: KikiRuntime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        runtime = self.runtime
        bus, store, runs = runtime.bus, runtime.store, runtime.runs

        yield CounterMetricFamily(
            "kiki_events_published", "Events published on the local bus.", value=bus.stats.published
        )
        dropped = CounterMetricFamily("kiki_events_dropped", "Events not delivered, by reason.", labels=["reason"])
        for reason, count in sorted(bus.stats.dropped.items()):
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

        yield GaugeMetricFamily("kiki_sse_clients_connected", "Streaming clients connected now.", value=store.clients)
        yield CounterMetricFamily("kiki_sse_connections", "Streaming connections accepted.", value=store.connections)
        yield CounterMetricFamily(
            "kiki_sse_slow_clients", "Clients that fell out of a replay window (sse.slow_client).", value=store.lagging
        )
