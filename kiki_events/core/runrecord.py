"""What is known about one run: its metadata, its replay buffer, and its state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from ..events import Cost, DoneEvent, Usage
from .records import RunInfo
from .runlog import RunLog

__all__ = ["RunRecord", "RunState"]

RunState: TypeAlias = Literal["pending", "running", "success", "error", "interrupted", "cancelled"]
"""``pending`` (accepted, graph not started yet), ``running``, or a final :data:`RunStatus`."""


@dataclass(eq=False)
class RunRecord:
    """What is known about one run: metadata and its replay buffer."""

    run_id: str
    log: RunLog
    thread_id: str | None = None
    graph: str | None = None
    principal: str | None = None
    node: str | None = None
    created_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    started: bool = False
    """Its ``started`` status event was seen."""
    relayed_into: str | None = None
    """The run that relays this one's events (this run is its delegate): the thread
    shows this run's work there, not as a run of its own."""
    trace_id: str | None = None
    """The run's tracing id (:mod:`.tracing`), or the one its ``done`` carried."""
    usage: Usage | None = None
    """The run's token usage, from its ``done`` (``None`` until it ended)."""
    cost: Cost | None = None
    """What its LLM calls cost, from its ``done`` (``None`` until then, or without a price table)."""

    @property
    def status(self) -> RunState:
        """Current state, derived from the events seen."""
        if self.log.final_status is not None:
            return self.log.final_status
        if self.log.closed:
            return "error"
        return "running" if self.started else "pending"

    @property
    def ended(self) -> bool:
        """Whether the run has finished."""
        return self.log.ended

    def ended_with(self, done: DoneEvent) -> None:
        """Keep what the run's ``done`` tells: when it ended, its usage, cost and trace."""
        self.ended_at = time.time()
        self.usage = done.usage
        self.cost = done.cost
        if self.trace_id is None:
            self.trace_id = done.trace_id

    def info(self) -> RunInfo:
        """This run as the registry and ``GET /runs/{id}`` describe it (:meth:`.RunInfo.public`)."""
        return RunInfo(
            self.run_id,
            self.node or "",
            self.status,
            thread_id=self.thread_id,
            graph=self.graph,
            principal=self.principal,
            created_at=self.created_at,
            ended_at=self.ended_at,
            last_seq=self.log.last_seq,
            relayed_into=self.relayed_into,
            trace_id=self.trace_id,
            usage=self.usage,
            cost=self.cost,
        )
