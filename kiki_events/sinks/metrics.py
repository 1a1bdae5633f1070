"""The Prometheus metrics of a runtime: one object holding every metric, on a given registry.

:class:`KikiMetrics` defines every ``kiki_`` metric (the list, with labels and
buckets, is in docs/metrics.md) as real ``prometheus_client`` objects, so they also
work with several worker processes (``PROMETHEUS_MULTIPROC_DIR``). Two things feed
them: the per-event sink (:mod:`.events`) and the copy of the runtime parts'
counters (:mod:`.parts`). :func:`exposition` renders them for ``GET /metrics``.

Nothing here is global: the registry is given (the runtime makes a private one
unless the application passes its own). ``prometheus_client`` is imported by the
composition root only when metrics are on.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ..errors import ConfigError

__all__ = [
    "DISCONNECT_REASONS",
    "LAG_BUCKETS",
    "LLM_BUCKETS",
    "MULTIPROC_ENV",
    "RUN_BUCKETS",
    "KikiMetrics",
    "exposition",
    "multiprocess_dir",
]

LLM_BUCKETS: tuple[float, ...] = tuple(round(0.01 * 2**k, 2) for k in range(14))
"""LLM calls, tools and time to first token: 0.01 s doubling to 81.92 s."""
RUN_BUCKETS: tuple[float, ...] = tuple(round(0.1 * 2**k, 1) for k in range(13))
"""Whole runs and agent steps: 0.1 s doubling to 409.6 s."""
LAG_BUCKETS: tuple[float, ...] = tuple(0.0005 * 2**k for k in range(15))
"""Bridge delivery lag: 0.5 ms doubling to ~8 s."""

LIVE = "livesum"
"""Multiprocess mode of the gauges: the sum over the worker processes alive."""

DISCONNECT_REASONS = ("completed", "client", "slow_client", "stalled", "shutdown", "error")
"""Why a streaming connection ended (``kiki_sse_disconnects_total{reason}``)."""

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set (to an empty directory) before the process starts to aggregate several worker processes."""


def multiprocess_dir() -> str | None:
    """The multiprocess directory when ``PROMETHEUS_MULTIPROC_DIR`` is on, else ``None``.

    Raises:
        ConfigError: the variable was set after ``prometheus_client`` was imported
            (its values would then stay in this process), or is not a directory.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    if values.ValueClass is values.MutexValue:
        raise ConfigError(
            f"{MULTIPROC_ENV} was set after prometheus_client was imported; set it before the process starts"
        )
    if not os.path.isdir(path):
        raise ConfigError(f"{MULTIPROC_ENV}={path!r} is not a directory")
    return path


def exposition(metrics: KikiMetrics) -> bytes:
    """The text of ``GET /metrics``: the metrics' registry, or every worker's values in multiprocess mode."""
    path = multiprocess_dir()
    if path is None:
        return generate_latest(metrics.registry)  # brings the values up to date first (_Refresh)
    metrics.refresh()
    from prometheus_client.multiprocess import MultiProcessCollector

    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=path)  # type: ignore[no-untyped-call]
    return generate_latest(merged)


class _Refresh(Collector):
    """Registered first: brings the values up to date whenever the registry is collected.

    So an application that serves the registry itself (``generate_latest(registry)``)
    gets current values too. It yields no metric.
    """

    def __init__(self, metrics: KikiMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        self.metrics.refresh()
        return iter(())


class KikiMetrics:
    """Every ``kiki_`` metric, defined on ``registry``.

    Some values are kept cheaply elsewhere and brought in by :meth:`refresh` (the
    runtime parts' counters, the token count of the event sink): each keeper adds
    its function with :meth:`add_refresher`. Collecting the registry refreshes.

    Raises:
        ConfigError: ``registry`` holds kiki metrics already (give each runtime its own).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._refreshers: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        refresh = _Refresh(self)
        registry.register(refresh)  # first, so it runs before the metrics are read
        try:
            self._events(registry)
            self._parts(registry)
        except ValueError as exc:  # prometheus_client: "Duplicated timeseries in CollectorRegistry"
            registry.unregister(refresh)
            raise ConfigError(
                f"this Prometheus registry holds kiki metrics already ({exc}); give each runtime its own registry"
            ) from None

    def add_refresher(self, refresh: Callable[[], None]) -> None:
        """Have :meth:`refresh` call ``refresh`` (it copies values kept elsewhere into the metrics)."""
        self._refreshers.append(refresh)

    def refresh(self) -> None:
        """Bring every value kept elsewhere into the metrics (one caller at a time: scrapes may run in threads)."""
        with self._lock:
            for refresh in self._refreshers:
                refresh()

    def _events(self, r: CollectorRegistry) -> None:
        """The metrics the per-event sink updates."""
        self.llm_requests = Counter(
            "kiki_llm_requests", "LLM calls, by outcome.", ["agent", "provider", "model", "status"], registry=r
        )
        self.llm_duration = Histogram(
            "kiki_llm_request_duration_seconds",
            "Wall time of LLM calls.",
            ["provider", "model"],
            buckets=LLM_BUCKETS,
            registry=r,
        )
        self.llm_ttft = Histogram(
            "kiki_llm_time_to_first_token_seconds",
            "Time to the first streamed chunk of LLM calls (streamed calls only).",
            ["provider", "model"],
            buckets=LLM_BUCKETS,
            registry=r,
        )
        self.llm_tokens = Counter(
            "kiki_llm_tokens",
            "Tokens of LLM calls by type (reasoning is part of output, cached part of input).",
            ["agent", "provider", "model", "token_type"],
            registry=r,
        )
        self.llm_cost = Counter(
            "kiki_llm_cost_usd",
            "What priced LLM calls cost, in US dollars (the prices table; unpriced calls add nothing).",
            ["agent", "provider", "model"],
            registry=r,
        )
        self.tool_calls = Counter("kiki_tool_calls", "Tool calls, by outcome.", ["agent", "tool", "status"], registry=r)
        self.tool_duration = Histogram(
            "kiki_tool_call_duration_seconds", "Wall time of tool calls.", ["tool"], buckets=LLM_BUCKETS, registry=r
        )
        self.agent_runs = Counter(
            "kiki_agent_runs", "Agent steps (graph nodes) ended, by outcome.", ["agent", "status"], registry=r
        )
        self.agent_duration = Histogram(
            "kiki_agent_run_duration_seconds", "Wall time of agent steps.", ["agent"], buckets=RUN_BUCKETS, registry=r
        )
        self.agents_in_progress = Gauge(
            "kiki_agent_runs_in_progress",
            "Agent steps executing now.",
            ["agent"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.runs = Counter("kiki_runs", "Runs ended on this node, by final status.", ["graph", "status"], registry=r)
        self.run_duration = Histogram(
            "kiki_run_duration_seconds", "Wall time of runs.", ["graph"], buckets=RUN_BUCKETS, registry=r
        )
        self.runs_in_progress = Gauge(
            "kiki_runs_in_progress",
            "Runs executing on this node now.",
            ["graph"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.errors = Counter(
            "kiki_errors",
            "Failures by component (llm, tool, agent, run, handler, sink); never a cancellation or interrupt.",
            ["component", "error_type"],
            registry=r,
        )
        self.published = Counter("kiki_events_published", "Events of this node's runs, by type.", ["type"], registry=r)

    def _parts(self, r: CollectorRegistry) -> None:
        """The metrics copied from the runtime's parts."""
        self.dropped = Counter("kiki_events_dropped", "Events not delivered, by reason.", ["reason"], registry=r)
        self.sse_clients = Gauge(
            "kiki_sse_clients_connected", "Streaming clients connected now.", multiprocess_mode="livesum", registry=r
        )
        self.sse_connections = Counter("kiki_sse_connections", "Streaming connections accepted.", registry=r)
        self.sse_disconnects = Counter(
            "kiki_sse_disconnects", "Streaming connections ended, by reason.", ["reason"], registry=r
        )
        self.bridge_messages = Counter(
            "kiki_bridge_messages", "Cross-node messages (frames), by direction.", ["direction"], registry=r
        )
        self.bridge_events = Counter(
            "kiki_bridge_events", "Run events sent to and received from other nodes.", ["direction"], registry=r
        )
        self.bridge_lag = Histogram(
            "kiki_bridge_delivery_lag_seconds",
            "Publish (on the producing node) to receipt (here) of live cross-node messages.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.bridge_reconnects = Counter(
            "kiki_bridge_reconnects", "Connections to the transport re-established after a loss.", registry=r
        )
        self.bridge_up = Gauge(
            "kiki_bridge_up",
            "1 while the bridge is connected to its transport (absent on a node without one).",
            ["transport"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self.bridge_gaps = Counter(
            "kiki_bridge_gaps", "Gaps in remote runs, by outcome (repaired or missed).", ["outcome"], registry=r
        )
        self.queue_depth = Gauge(
            "kiki_queue_depth", "Events waiting in a queue.", ["queue"], multiprocess_mode="livesum", registry=r
        )
        self.bus_subscriptions = Gauge(
            "kiki_bus_subscriptions", "Open bus subscriptions.", multiprocess_mode="livesum", registry=r
        )
        self.bus_handler_errors = Counter(
            "kiki_bus_handler_errors", "Exceptions raised by bus sinks and handlers.", registry=r
        )
        self.runs_kept = Gauge(
            "kiki_runs_kept", "Runs kept for join and replay.", multiprocess_mode="livesum", registry=r
        )
        self.runs_evicted = Counter(
            "kiki_runs_evicted", "Runs forgotten after their TTL or over runs.max_runs.", registry=r
        )
        self.thread_owners = Gauge(
            "kiki_thread_owners", "Thread owners remembered.", multiprocess_mode="livesum", registry=r
        )
        self.thread_owners_evicted = Counter(
            "kiki_thread_owners_evicted", "Thread owners forgotten early because of runs.max_threads.", registry=r
        )
        # The fixed label values exist from the start, at 0, so that rates and alerts see them.
        for direction in ("in", "out"):
            self.bridge_messages.labels(direction)
            self.bridge_events.labels(direction)
        for outcome in ("repaired", "missed"):
            self.bridge_gaps.labels(outcome)
        for reason in DISCONNECT_REASONS:
            self.sse_disconnects.labels(reason)
        self.queue_depth.labels("outbox")
