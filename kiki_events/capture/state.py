"""What the handler keeps per root run, per LLM call and per streamed tool call."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

__all__ = ["LLMCallState", "NodeState", "RunState", "ToolCallState"]


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
    tools: dict[UUID, tuple[str, str, str | None]] = field(default_factory=dict)
    pending_tool_calls: list[tuple[str, str, str]] = field(default_factory=list)
    """(tool_call_id, name, canonical args JSON) requested but not yet started."""
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    interrupted: bool = False
    failed_agent: str | None = None
    error_sent: bool = False
    relayed_ids: dict[str, str] = field(default_factory=dict)
    """Message ids of relayed runs → message ids in this run (see ``relay``)."""
    relayed_usage: set[str] = field(default_factory=set)
    """Relayed runs whose usage was added to this run's (once each)."""
