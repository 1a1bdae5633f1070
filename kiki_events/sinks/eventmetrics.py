"""The per-event sink that keeps the event-fed Prometheus metrics.

It runs on the event loop for every event of the local bus, tokens included, so a
token costs one dict lookup (is its run one of this node's?) and one integer
increment: tokens are added to ``kiki_events_published_total{type="token"}`` when
the metrics are refreshed (every scrape) and at each run's end, not one by one.
Every label child is resolved once and kept in a dict.

What is counted, so that a sum over the nodes of a cluster counts each thing once:

* only events of runs started on this node: a run is known from its ``status
  started`` (``node`` = this node); events of other nodes' runs that the bridge
  delivers here for a reader are not counted (their own node counts them);
* ``kiki_events_published_total`` counts every event of those runs, relayed copies
  included (each is an event of its own, with its own id and readers);
* the LLM, tool, agent and error metrics skip relayed copies: a relayed copy
  carries the original event's id as ``causation_id``, which differs from the
  run's own ``causation_id`` (the one its ``status started`` carries); the run
  that produced the original counts it where it ran.

A run's bookkeeping is dropped at its ``done`` (which also closes the agent steps
it left open, e.g. when it was cancelled), and at most :data:`MAX_RUNS` runs are
kept: past that the oldest is forgotten and its in-progress gauges released.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..events import (
    AgentLifecycleEvent,
    DoneEvent,
    ErrorEvent,
    LLMCallEvent,
    StatusEvent,
    StreamEvent,
    ToolResultEvent,
)
from ..log import get_logger
from .base import Sink, SinkContext

if TYPE_CHECKING:
    from .metrics import KikiMetrics

__all__ = ["MAX_RUNS", "NOT_ERRORS", "EventMetrics", "create"]

logger = get_logger("kiki_events.sinks")

MAX_RUNS = 10_000
"""Runs tracked at once; past that the oldest is forgotten (its gauges released)."""

NOT_ERRORS = frozenset(
    {"CancelledError", "GeneratorExit", "KeyboardInterrupt", "GraphInterrupt", "NodeInterrupt", "ParentCommand"}
)
"""Exception names that mean cancelled or interrupted, never an error."""

_TOOL_MESSAGE_ERROR = "ToolMessage"
"""``error_type`` of a tool that reported its failure as a ToolMessage with status error."""


class _Run:
    """What the sink remembers of one live run of this node."""

    __slots__ = ("agents", "causation", "error_type", "graph")

    def __init__(self, graph: str, causation: str | None) -> None:
        self.graph = graph
        self.causation = causation
        self.agents: dict[str, int] = {}
        """Agent steps started and not ended yet, by agent."""
        self.error_type: str | None = None


class EventMetrics(Sink):
    """Updates the event-fed metrics of ``metrics`` for the runs of node ``node``.

    Args:
        metrics: the metric objects (on the runtime's registry).
        node: this node's name (``None``: runs whose events carry no node).
        max_runs: runs tracked at once.
    """

    name = "metrics"

    def __init__(self, metrics: KikiMetrics, *, node: str | None, max_runs: int = MAX_RUNS) -> None:
        self.metrics = metrics
        self.node = node
        self.max_runs = max_runs
        self.forgotten = 0
        """Runs forgotten without their ``done`` because of ``max_runs``."""
        self._runs: dict[str, _Run] = {}
        published = metrics.published
        self._token = published.labels("token")
        self._tokens = 0
        """Token events counted (on the loop only)."""
        self._tokens_added = 0
        """Of those, added to the counter (by :meth:`flush` only)."""
        self._published: dict[str, Any] = {}
        self._handlers: dict[str, Callable[[Any, _Run], None]] = {
            "llm": self._llm,
            "tool_result": self._tool_result,
            "agent_lifecycle": self._agent,
            "error": self._error,
            "done": self._done,
        }
        self._children: dict[tuple[Any, ...], Any] = {}
        self._published_child = published.labels
        metrics.add_refresher(self.flush)

    def __call__(self, event: StreamEvent) -> None:
        run = self._runs.get(event.run_id)
        if run is None:
            if type(event) is StatusEvent and event.status == "started" and event.seq and event.node == self.node:
                self._start(event)
            return
        kind = event.type
        if kind == "token":
            self._tokens += 1
            return
        child = self._published.get(kind)
        if child is None:
            child = self._published[kind] = self._published_child(kind)
        child.inc()
        handler = self._handlers.get(kind)
        # A relayed copy (another causation) counts as published only; ``done`` is never relayed.
        if handler is not None and (event.causation_id == run.causation or kind == "done"):
            handler(event, run)

    def flush(self) -> None:
        """Add the token events counted since the last flush (any thread; the metrics serialise refreshes)."""
        seen = self._tokens
        if seen > self._tokens_added:
            self._token.inc(seen - self._tokens_added)
            self._tokens_added = seen

    def _child(self, metric: Any, *labels: str) -> Any:
        """The child of ``metric`` with ``labels``, resolved once."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _start(self, event: StatusEvent) -> None:
        runs = self._runs
        if len(runs) >= self.max_runs:
            oldest = next(iter(runs))
            self._close(runs.pop(oldest))
            self.forgotten += 1
            if self.forgotten == 1:
                logger.warning("metrics: more than %d runs in progress; the oldest is no longer tracked", self.max_runs)
        run = runs[event.run_id] = _Run(event.graph or "", event.causation_id)
        self._child(self.metrics.published, "status").inc()
        self._child(self.metrics.runs_in_progress, run.graph).inc()

    def _close(self, run: _Run) -> None:
        """Release the in-progress gauges a run holds (its steps and itself)."""
        gauge = self.metrics.agents_in_progress
        for agent, open_steps in run.agents.items():
            if open_steps:
                self._child(gauge, agent).dec(open_steps)
        run.agents.clear()
        self._child(self.metrics.runs_in_progress, run.graph).dec()

    def _llm(self, event: LLMCallEvent, run: _Run) -> None:
        m = self.metrics
        agent, provider, model = event.agent or "", event.provider or "", event.model or ""
        self._child(m.llm_requests, agent, provider, model, event.status).inc()
        self._child(m.llm_duration, provider, model).observe(event.duration_s)
        if event.ttft_s is not None:
            self._child(m.llm_ttft, provider, model).observe(event.ttft_s)
        usage = event.usage
        for token_type, count in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("reasoning", usage.reasoning_tokens),
            ("cached", usage.cached_tokens),
        ):
            if count > 0:
                self._child(m.llm_tokens, agent, provider, model, token_type).inc(count)
        if event.cost_usd is not None:
            self._child(m.llm_cost, agent, provider, model).inc(event.cost_usd)
        if event.status == "error":
            self._fail("llm", event.error_type)

    def _tool_result(self, event: ToolResultEvent, run: _Run) -> None:
        m = self.metrics
        failed = event.error is not None or event.error_type is not None
        if failed and event.error_type in NOT_ERRORS:
            return  # interrupted inside the tool: it runs again when the run resumes
        tool = event.name or ""
        self._child(m.tool_calls, event.agent or "", tool, "error" if failed else "success").inc()
        if event.duration_s is not None:
            self._child(m.tool_duration, tool).observe(event.duration_s)
        if failed:
            self._fail("tool", event.error_type or _TOOL_MESSAGE_ERROR)

    def _agent(self, event: AgentLifecycleEvent, run: _Run) -> None:
        m = self.metrics
        agent = event.agent or ""
        if event.phase == "started":
            run.agents[agent] = run.agents.get(agent, 0) + 1
            self._child(m.agents_in_progress, agent).inc()
            return
        open_steps = run.agents.get(agent, 0)
        if open_steps:
            run.agents[agent] = open_steps - 1
            self._child(m.agents_in_progress, agent).dec()
        failed = event.phase == "failed"
        self._child(m.agent_runs, agent, "error" if failed else "success").inc()
        if event.duration_s is not None:
            self._child(m.agent_duration, agent).observe(event.duration_s)
        if failed:
            self._fail("agent", (event.error or "").split(":", 1)[0].strip() or None)

    def _error(self, event: ErrorEvent, run: _Run) -> None:
        run.error_type = event.error_type

    def _done(self, event: DoneEvent, run: _Run) -> None:
        m = self.metrics
        self._runs.pop(event.run_id, None)
        self._close(run)
        self.flush()
        self._child(m.runs, run.graph, event.status).inc()
        self._child(m.run_duration, run.graph).observe(event.duration_s)
        if event.status == "error":
            self._fail("run", run.error_type)

    def _fail(self, component: str, error_type: str | None) -> None:
        if error_type not in NOT_ERRORS:
            self._child(self.metrics.errors, component, error_type or "unknown").inc()

    @property
    def tracked(self) -> int:
        """Runs of this node in progress that the sink tracks."""
        return len(self._runs)


def create(context: SinkContext) -> EventMetrics | None:
    """The metrics sink, when the runtime has metrics (``metrics.enabled``)."""
    if context.metrics is None:
        return None
    return EventMetrics(context.metrics, node=context.node)
