"""What the handler keeps per root run, per LLM call and per streamed tool call."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from ..cost import CostTally
from ..events import Usage

__all__ = ["RUNNING_TOOL", "LLMCallState", "NodeState", "RunState", "ToolCallState", "add_usage"]

RUNNING_TOOL: ContextVar[tuple[str, str, str | None] | None] = ContextVar("kiki_running_tool", default=None)
"""(our run id, tool_call_id, agent) of the tool call running in this context.

The handler runs inline, so ``on_tool_start`` sets it in the tool's own context: what
the tool body does next (``adispatch_custom_event``, a stream writer write) sees it.
"""


@dataclass
class ToolCallState:
    """A tool call an LLM is streaming: its id, name and the argument pieces so far."""

    tool_call_id: str
    name: str
    args: list[str] = field(default_factory=list)


@dataclass
class LLMCallState:
    """One LLM call inside a run: where its tokens go and the tool calls it streams."""

    run: RunState
    agent: str | None
    message_id: str
    silent: bool
    started: float
    """``time.perf_counter()`` when the call started."""
    model: str | None = None
    provider: str | None = None
    first_chunk: float = 0.0
    """``time.perf_counter()`` of the first streamed chunk (0.0 until one arrives)."""
    tokens: int = 0
    tool_calls: dict[Any, ToolCallState] = field(default_factory=dict)


@dataclass
class NodeState:
    """A graph node (an agent) that started and has not ended yet."""

    agent: str
    started: float


@dataclass
class RunState:
    """Everything we keep about one root run; dropped when it ends."""

    run_id: str
    root: UUID
    thread_id: str | None
    causation_id: str | None
    started: float
    seq: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    messages: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    members: set[UUID] = field(default_factory=set)
    nodes: dict[UUID, NodeState] = field(default_factory=dict)
    node_namespaces: set[str] = field(default_factory=set)
    llm_calls: dict[UUID, LLMCallState] = field(default_factory=dict)
    tools: dict[UUID, tuple[str, str, str | None, float]] = field(default_factory=dict)
    """Tool runs in progress: (tool_call_id, name, agent, ``perf_counter()`` at start)."""
    pending_tool_calls: list[tuple[str, str, str]] = field(default_factory=list)
    """(tool_call_id, name, canonical args JSON) requested but not yet started."""
    usage: dict[str, int] = field(default_factory=dict)
    """Token counts of the run so far, by :class:`~kiki_events.events.Usage` field."""
    checked: bool = False
    """A validated event of this run was built: its envelope (run, thread, causation, node) is valid."""
    interrupted: bool = False
    failed_agent: str | None = None
    error_sent: bool = False
    relayed_ids: dict[str, str] = field(default_factory=dict)
    """Message ids of relayed runs → message ids in this run (see ``relay``)."""
    relayed_usage: set[str] = field(default_factory=set)
    """Relayed runs whose usage was added to this run's (once each)."""
    cost: CostTally | None = None
    """The run's LLM calls by model, priced (``None``: the handler has no price table)."""
    relayed_calls: dict[str, CostTally] = field(default_factory=dict)
    """Relayed runs still going: their ``llm`` calls seen so far (see ``relay``)."""


def add_usage(run: RunState, usage: Usage) -> None:
    """Add ``usage`` to ``run``'s totals."""
    totals = run.usage
    for name, count in usage.__dict__.items():  # the five counts (no extras: extra="forbid")
        if count:
            totals[name] = totals.get(name, 0) + count
