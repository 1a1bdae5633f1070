"""Helpers for testing code that uses kiki_events.

``capture_run`` runs a graph with a :class:`KikiCallbackHandler` attached and
returns its events; :class:`CapturedEvents` answers the usual questions about
them (text per agent, tool calls, final status) and checks the run's invariants.
:class:`MemoryHub` connects several runtimes of one test like a Redis would
(``KikiRuntime(settings, hub=hub)``), so cross-node code is testable without Redis.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig

from .capture.handler import KikiCallbackHandler
from .errors import CheckFailedError
from .events import DoneEvent, StreamEvent, TokenEvent, ToolCallEvent, ToolResultEvent
from .transports.memory import MemoryHub

__all__ = ["CapturedEvents", "MemoryHub", "capture_run"]


class CapturedEvents(list[StreamEvent]):
    """A list of events with questions a test asks about them."""

    def of_type(self, kind: str) -> list[StreamEvent]:
        """Events whose ``type`` is ``kind``."""
        return [e for e in self if e.type == kind]

    def runs(self) -> list[str]:
        """Run ids in order of first appearance."""
        return list(dict.fromkeys(e.run_id for e in self))

    def for_run(self, run_id: str) -> CapturedEvents:
        return CapturedEvents(e for e in self if e.run_id == run_id)

    def text(self, agent: str | None = None, kind: str = "text") -> str:
        """Concatenated token text (of one agent, if given)."""
        return "".join(
            e.text for e in self if isinstance(e, TokenEvent) and e.kind == kind and (agent is None or e.agent == agent)
        )

    def agents(self) -> list[str]:
        """Agents in order of first appearance."""
        return list(dict.fromkeys(e.agent for e in self if e.agent is not None))

    @property
    def done(self) -> DoneEvent:
        """The run's ``done`` event (the list must hold exactly one run)."""
        dones = [e for e in self if isinstance(e, DoneEvent)]
        if len(dones) != 1:
            raise CheckFailedError(f"expected exactly one done event, found {len(dones)}")
        return dones[0]

    def tool_calls(self) -> dict[str, dict[str, Any]]:
        """``tool_call_id`` → name, streamed args text, final args, output, error."""
        calls: dict[str, dict[str, Any]] = {}
        for e in self:
            if isinstance(e, ToolCallEvent):
                call = calls.setdefault(e.tool_call_id, {"name": None, "args_text": "", "args": None})
                if e.phase == "start":
                    call["name"] = e.name
                elif e.phase == "args":
                    call["args_text"] += e.args_delta or ""
                else:
                    call["args"] = e.args
            elif isinstance(e, ToolResultEvent):
                call = calls.setdefault(e.tool_call_id, {"name": e.name, "args_text": "", "args": None})
                call["output"], call["error"] = e.output, e.error
        return calls

    def check_invariants(self) -> None:
        """Assert what every run guarantees: seq 1..n, ``started`` first, one ``done`` last."""
        for run_id in self.runs():
            events = self.for_run(run_id)
            seqs = [e.seq for e in events]
            if seqs != list(range(1, len(seqs) + 1)):
                raise CheckFailedError(f"run {run_id}: seq is not 1..n without gaps: {seqs[:20]}…")
            if events[0].type != "status":
                raise CheckFailedError(f"run {run_id}: first event is {events[0].type}, not status")
            if [e.type for e in events].count("done") != 1 or events[-1].type != "done":
                raise CheckFailedError(f"run {run_id}: expected exactly one done, last")
            for call_id, call in events.tool_calls().items():
                streamed = call["args_text"]
                if call.get("args") is not None and streamed and json.loads(streamed) != call["args"]:
                    raise CheckFailedError(f"tool call {call_id}: streamed args differ from final args")


async def capture_run(
    graph: Runnable[Any, Any],
    input: Any,
    config: RunnableConfig | None = None,
    *,
    raise_errors: bool = False,
    **handler_options: Any,
) -> CapturedEvents:
    """Run ``graph.ainvoke(input, config)`` with a handler attached; return its events.

    Exceptions of the graph are swallowed (the events record them) unless
    ``raise_errors`` is true.
    """
    events = CapturedEvents()
    handler = KikiCallbackHandler(events.append, **handler_options)
    merged: dict[str, Any] = dict(config or {})
    callbacks: Iterable[Any] = merged.get("callbacks") or []
    merged["callbacks"] = [*callbacks, handler]
    try:
        await graph.ainvoke(input, merged)  # type: ignore[arg-type]
    except Exception:
        if raise_errors:
            raise
    return events
