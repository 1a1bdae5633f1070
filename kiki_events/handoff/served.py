"""What the serving side keeps: the agents served here, the tasks running, their runs' handler."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ..capture.handler import KikiCallbackHandler
from ..core.records import float_of
from ..redaction import redact_error
from ..redis.workqueue import WorkItem, WorkQueue

__all__ = ["ActiveTask", "ResultHandler", "ServedAgent", "deadline_of"]


class ResultHandler(KikiCallbackHandler):
    """The run's handler, also keeping its final output and error for the reply."""

    output: Any = None
    error: str | None = None

    def on_chain_end(self, outputs: Any, **kwargs: Any) -> None:
        if kwargs.get("parent_run_id") is None:
            self.output = outputs
        super().on_chain_end(outputs, **kwargs)

    def finish_run(self, run_id: str, status: Any, error: BaseException | None = None) -> None:
        if error is not None and self.error is None:
            self.error = redact_error(error)
        super().finish_run(run_id, status, error)


@dataclass(eq=False)
class ActiveTask:
    """A task this node is running."""

    item: WorkItem
    agent: str
    request_id: str
    marker: str
    deadline: float
    """When its requester stops waiting (Unix s, the requester's clock)."""
    watch_cancel: bool
    """Whether the heartbeat watches the ``cancel`` key (the requester cannot reach this node's bridge)."""
    run_id: str | None = None
    cancelled: bool = False
    """Cancelled by this node on the requester's behalf (not by a shutdown)."""


@dataclass(eq=False)
class ServedAgent:
    """An agent this node serves: its work queue, consumer loop and the tasks running here."""

    agent: str
    graph: str
    queue: WorkQueue
    task: asyncio.Task[None] | None = None
    ready: bool = False
    """Its group exists and it was advertised since the last Redis error."""
    active: dict[str, ActiveTask] = field(default_factory=dict)
    """Entry id → task being run."""
    running: set[asyncio.Task[None]] = field(default_factory=set)


def deadline_of(value: str | None) -> float:
    """A task's ``deadline`` field (Unix s); none or unreadable: never."""
    try:
        return float_of(value) if value else float("inf")
    except ValueError:
        return float("inf")
