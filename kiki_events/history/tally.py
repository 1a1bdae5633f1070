"""What the writer keeps per run while its events are stored: the run's row, counted event by event."""

from __future__ import annotations

from dataclasses import dataclass

from ..events import StreamEvent
from .base import RunRow
from .sql import caused_by

__all__ = ["RunMeta", "RunTally"]


@dataclass(frozen=True, slots=True)
class RunMeta:
    """What the events alone do not say about a run (the run store knows it)."""

    principal: str | None = None
    graph: str | None = None
    node: str | None = None
    thread_id: str | None = None
    relayed_into: str | None = None
    trace_id: str | None = None


class RunTally:
    """A run's ``runs`` row, updated by each of its events (O(1) per event)."""

    __slots__ = (
        "agents",
        "cached",
        "causation_id",
        "cost_usd",
        "duration_s",
        "ended_at",
        "errors",
        "events",
        "graph",
        "input",
        "last_seq",
        "llm_calls",
        "meta",
        "output",
        "reasoning",
        "run_id",
        "started_at",
        "status",
        "thread_id",
        "tool_calls",
        "tool_errors",
        "total",
        "trace_id",
    )

    def __init__(self, event: StreamEvent, meta: RunMeta | None) -> None:
        self.meta = meta or RunMeta()
        self.run_id = event.run_id
        self.thread_id = event.thread_id or self.meta.thread_id
        self.graph = self.meta.graph
        self.causation_id = event.causation_id
        self.trace_id = self.meta.trace_id
        self.started_at = event.ts
        self.status = "running"
        self.ended_at: float | None = None
        self.duration_s: float | None = None
        self.cost_usd: float | None = None
        self.agents: set[str] = set()
        self.last_seq = self.events = self.llm_calls = self.tool_calls = self.tool_errors = self.errors = 0
        self.input = self.output = self.total = self.reasoning = self.cached = 0

    def add(self, event: StreamEvent) -> None:
        """Count ``event`` in."""
        self.events += 1
        if event.seq > self.last_seq:
            self.last_seq = event.seq
        kind = event.type
        if kind == "token":
            return
        if kind == "llm":
            self.llm_calls += 1
            if self.status == "running":
                self._usage(event.usage, add=True)  # type: ignore[union-attr]
        elif kind == "tool_result":
            self.tool_calls += 1
            if event.error is not None:  # type: ignore[union-attr]
                self.tool_errors += 1
        elif kind == "error":
            self.errors += 1
        elif kind == "status" and event.status == "started":  # type: ignore[union-attr]
            self.graph = self.graph or event.graph  # type: ignore[union-attr]
        elif kind == "done":
            self.status = event.status  # type: ignore[union-attr]
            self.ended_at = event.ts
            self.duration_s = event.duration_s  # type: ignore[union-attr]
            self.trace_id = event.trace_id or self.trace_id  # type: ignore[union-attr]
            cost = event.cost  # type: ignore[union-attr]
            self.cost_usd = cost.total_usd if cost is not None else None
            self._usage(event.usage, add=False)  # type: ignore[union-attr]

    def _usage(self, usage: object, *, add: bool) -> None:
        values = (
            usage.input_tokens,  # type: ignore[attr-defined]
            usage.output_tokens,  # type: ignore[attr-defined]
            usage.total_tokens,  # type: ignore[attr-defined]
            usage.reasoning_tokens,  # type: ignore[attr-defined]
            usage.cached_tokens,  # type: ignore[attr-defined]
        )
        if add:
            values = (self.input + values[0], self.output + values[1], self.total + values[2],
                      self.reasoning + values[3], self.cached + values[4])  # fmt: skip
        self.input, self.output, self.total, self.reasoning, self.cached = values

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    def row(self) -> RunRow:
        """The run's row (:data:`~kiki_events.history.sql.RUN_COLUMNS` order)."""
        meta = self.meta
        return (
            self.run_id,
            self.thread_id,
            self.graph,
            meta.principal,
            meta.node,
            self.status,
            self.causation_id,
            caused_by(self.causation_id),
            meta.relayed_into,
            self.trace_id,
            self.started_at,
            self.ended_at,
            self.duration_s,
            self.last_seq,
            self.events,
            self.llm_calls,
            self.tool_calls,
            self.tool_errors,
            self.errors,
            self.input,
            self.output,
            self.total,
            self.reasoning,
            self.cached,
            self.cost_usd,
        )
