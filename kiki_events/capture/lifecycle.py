"""Run and agent lifecycle: a run's start and its one ``done``, agents starting and
ending, errors and interrupts.

Per-run state is keyed by the root run and dropped when the root run ends,
whatever happened below (a cancelled LLM call reports neither end nor error).
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from uuid import UUID

from langgraph.callbacks import GraphInterruptEvent

from ..events import (
    AgentLifecycleEvent,
    DoneEvent,
    ErrorEvent,
    InterruptEvent,
    InterruptInfo,
    RunStatus,
    StatusEvent,
    Usage,
)
from ..redaction import redact_error, redact_message
from .base import CANCELLED, CONTROL_FLOW, HIDDEN, HandlerBase, guard
from .ids import agent_path, runnable_name, short_run_id
from .state import NodeState, RunState

__all__ = ["LifecycleMixin"]

# LangGraph's control-flow exceptions (interrupts, Command(graph=PARENT)) are not failures.
_FINISHED_MEMORY = 4096


class LifecycleMixin(HandlerBase):
    """``status`` (started), ``agent`` lifecycle, ``interrupt``, ``error`` and ``done``."""

    def finish_run(self, run_id: str, status: RunStatus, error: BaseException | None = None) -> None:
        """Emit the final ``done`` for ``run_id`` if it was not emitted yet (idempotent).

        Call it when the task that ran the graph ends, whatever happened: a run
        cancelled before LangGraph reported anything still gets its ``done``.
        """
        if run_id in self._finished:
            return
        run = self._runs.get(run_id)
        if run is None:
            run = self._new_run(run_id, uuid.uuid4(), self.thread_id)
            self._send(run, StatusEvent, status="started", graph=self.graph_name)
        self._end_run(run, status, error)

    def _fail_open_nodes(self, root: UUID, error: BaseException) -> None:
        """Report every still-open node of ``root``'s run as failed, innermost first.

        For sources that do not report node errors (``astream_events``).
        """
        run = self._owner.get(root)
        if run is None:
            return
        for node_run in reversed(list(run.nodes)):
            self.on_chain_error(error, run_id=node_run)

    @guard
    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        run = self._owner.get(parent_run_id) if parent_run_id is not None else None
        if run is None:
            self._start_run(run_id, metadata, kwargs.get("name") or runnable_name(serialized))
            return
        self._adopt(run, run_id)
        if not metadata or (tags and HIDDEN in tags):
            return
        node = metadata.get("langgraph_node")
        name = kwargs.get("name") or runnable_name(serialized)
        if not isinstance(node, str) or name != node or node.startswith("__"):
            return
        ns = metadata.get("langgraph_checkpoint_ns") or node
        if ns in run.node_namespaces:
            return  # a subgraph node starts twice: the node, then the compiled graph
        run.node_namespaces.add(ns)
        agent = agent_path(metadata) or node
        run.nodes[run_id] = NodeState(agent, time.monotonic())
        self._send_own(run, AgentLifecycleEvent, {"agent": agent, "phase": "started"})

    @guard
    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._owner.get(run_id)
        if run is None:
            return
        if run_id == run.root:
            self._end_run(run, "interrupted" if run.interrupted else "success")
            return
        self._release(run, run_id)
        node = run.nodes.pop(run_id, None)
        if node is not None:
            duration = round(time.monotonic() - node.started, 6)
            fields = {"agent": node.agent, "phase": "completed", "duration_s": duration}
            self._send_own(run, AgentLifecycleEvent, fields)

    @guard
    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._owner.get(run_id)
        if run is None:
            return
        kind = type(error).__name__
        if run_id == run.root:
            if kind in CANCELLED:
                self._end_run(run, "cancelled")
            elif kind in CONTROL_FLOW:
                self._end_run(run, "interrupted")
            else:
                self._end_run(run, "error", error)
            return
        self._release(run, run_id)
        node = run.nodes.pop(run_id, None)
        if node is None or kind in CANCELLED or kind in CONTROL_FLOW:
            return
        if run.failed_agent is None:
            run.failed_agent = node.agent
        duration = round(time.monotonic() - node.started, 6)
        self._send(
            run, AgentLifecycleEvent, agent=node.agent, phase="failed", duration_s=duration, error=redact_error(error)
        )

    def on_interrupt(self, event: GraphInterruptEvent) -> None:
        """LangGraph paused the run for human input."""
        try:
            run = self._owner.get(event.run_id) if event.run_id is not None else None
            if run is None:
                return
            run.interrupted = True
            infos = tuple(
                InterruptInfo(id=getattr(i, "id", None), value=self._jsonable(getattr(i, "value", None)))
                for i in event.interrupts
            )
            agent = "/".join(p.split(":", 1)[0] for p in event.checkpoint_ns) or None
            self._send(run, InterruptEvent, agent=agent, interrupts=infos)
        except Exception:
            self._failed("on_interrupt")

    def _start_run(self, root: UUID, metadata: dict[str, Any] | None, name: str | None) -> None:
        run_id = short_run_id(root)
        thread_id = self.thread_id
        if thread_id is None and metadata:
            found = metadata.get("thread_id")
            thread_id = str(found) if found is not None else None
        run = self._new_run(run_id, root, thread_id)
        run.members.add(root)
        self._runs[run_id] = run
        self._owner[root] = run
        self._send(run, StatusEvent, status="started", graph=self.graph_name or name)

    def _end_run(self, run: RunState, status: RunStatus, error: BaseException | None = None) -> None:
        for member in run.members:
            self._owner.pop(member, None)
        for member in run.llm_calls:
            self._llm_calls.pop(member, None)
        self._runs.pop(run.run_id, None)
        self._finished[run.run_id] = None
        if len(self._finished) > _FINISHED_MEMORY:
            self._finished.popitem(last=False)
        if error is not None and not run.error_sent:
            run.error_sent = True
            self._send(
                run, ErrorEvent, agent=run.failed_agent, message=redact_message(error), error_type=type(error).__name__
            )
        usage = Usage(**run.usage)
        duration = round(time.monotonic() - run.started, 6)
        cost = run.cost.cost() if run.cost is not None else None
        self._send(run, DoneEvent, status=status, usage=usage, duration_s=duration, trace_id=self.trace_id, cost=cost)
