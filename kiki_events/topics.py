"""Bus topics: the lifecycle vocabulary other services subscribe to.

Run-scoped traffic (tokens and everything else of one run) is addressed by run or
thread; these topics name the low-volume lifecycle moments that are broadcast.
"""

from __future__ import annotations

from typing import Final

from .events import AgentLifecycleEvent, CustomEvent, StreamEvent, ToolCallEvent, ToolResultEvent

__all__ = [
    "AGENT_COMPLETED",
    "AGENT_FAILED",
    "AGENT_STARTED",
    "AGENT_TOOL_CALL",
    "AGENT_TOOL_RESULT",
    "MULTIAGENT_SYNC",
    "TOPICS",
    "topic_matches",
    "topic_of",
]

AGENT_STARTED: Final = "agent:started"
AGENT_COMPLETED: Final = "agent:completed"
AGENT_FAILED: Final = "agent:failed"
AGENT_TOOL_CALL: Final = "agent:tool_call"
AGENT_TOOL_RESULT: Final = "agent:tool_result"
MULTIAGENT_SYNC: Final = "multiagent:sync"
TOPICS: Final = (
    AGENT_STARTED,
    AGENT_COMPLETED,
    AGENT_FAILED,
    AGENT_TOOL_CALL,
    AGENT_TOOL_RESULT,
    MULTIAGENT_SYNC,
)

_LIFECYCLE = {"started": AGENT_STARTED, "completed": AGENT_COMPLETED, "failed": AGENT_FAILED}


def topic_of(event: StreamEvent) -> str | None:
    """The lifecycle topic of ``event``, or ``None`` for run-scoped traffic."""
    kind = type(event)
    if kind is AgentLifecycleEvent:
        return _LIFECYCLE[event.phase]  # type: ignore[union-attr]
    if kind is ToolCallEvent:
        # One announcement per call, when its arguments are complete.
        return AGENT_TOOL_CALL if event.phase == "end" else None  # type: ignore[union-attr]
    if kind is ToolResultEvent:
        return AGENT_TOOL_RESULT
    if kind is CustomEvent and event.name == MULTIAGENT_SYNC:  # type: ignore[union-attr]
        return MULTIAGENT_SYNC
    return None


def topic_matches(pattern: str, topic: str) -> bool:
    """``"*"`` matches everything; ``"agent:*"`` matches every ``agent:`` topic."""
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return topic.startswith(pattern[:-1])
    return pattern == topic
