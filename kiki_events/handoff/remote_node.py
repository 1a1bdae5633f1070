"""A LangGraph node that hands its work to an agent another node serves, relaying its events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..capture.handler import _agent_path
from ..errors import HandoffError
from ..topics import MULTIAGENT_SYNC
from .results import HandoffResult
from .service import Handoff, kiki_handler

__all__ = ["remote_agent_node"]


def _default_input(state: Any) -> Any:
    if isinstance(state, Mapping) and "messages" in state:
        return {"messages": list(state["messages"])}
    return state


def _default_update(result: HandoffResult, agent: str) -> dict[str, Any]:
    from langchain_core.messages import AIMessage

    return {"messages": [AIMessage(content=result.text or "", name=agent)]}


def remote_agent_node(
    agent: str,
    *,
    handoff: Handoff | None = None,
    to_input: Callable[[Any], Any] | None = None,
    to_update: Callable[[HandoffResult, Any], Any] | None = None,
    agent_prefix: str | None = None,
    timeout: float | None = None,
    relay: bool = True,
) -> Callable[[Any, Any], Awaitable[Any]]:
    """A LangGraph node that hands its work to ``agent`` on whichever node serves it.

    While the remote run goes on, its events (tokens, tool calls, agents) are relayed
    into this run, under this node's agent path (or ``agent_prefix``; ``""`` keeps the
    remote names), so a client watching this run on any node sees them live; its
    usage is added to this run's. Two ``multiagent:sync`` custom events frame the
    hand-off (``requested``, then ``completed`` or ``failed``); the remote run's
    ``causation_id`` is the id of the ``requested`` event. A relayed remote run is
    marked ``relayed_into`` this run: a thread stream shows its work only here.

    Args:
        agent: the agent (graph name) to delegate to.
        handoff: the Handoff to use (default: :meth:`Handoff.of` the node's config).
        to_input: parent state → the agent's input (default: ``{"messages": state["messages"]}``).
        to_update: (result, parent state) → this node's state update (default: the
            result text as an AI message named ``agent``).
        timeout: seconds to wait (default ``handoff.timeout``).
        relay: relay the remote run's events into this run.

    The node raises :class:`~kiki_events.errors.HandoffFailedError`,
    :class:`~kiki_events.errors.NoAgentError` or
    :class:`~kiki_events.errors.HandoffTimeoutError` like :meth:`Handoff.delegate`.
    """

    async def call_remote_agent(state: Any, config: Any) -> Any:
        runner = handoff or Handoff.of(config)
        handler = kiki_handler(config)
        parent_lc = getattr((config or {}).get("callbacks"), "parent_run_id", None)
        run_id = handler.run_id_of(parent_lc) if handler is not None else None
        metadata = (config or {}).get("metadata") or {}
        prefix = agent_prefix if agent_prefix is not None else (_agent_path(metadata) or agent)
        thread_id = ((config or {}).get("configurable") or {}).get("thread_id")
        request_id = runner.new_request_id()
        causation_id: str | None = run_id
        if handler is not None and run_id is not None:
            sync = {"phase": "requested", "agent": agent, "request_id": request_id, "from_node": runner.node}
            requested = handler.emit_custom(run_id, MULTIAGENT_SYNC, sync, agent=prefix or None)
            if requested is not None:
                causation_id = requested.id
        # The remote run belongs to whoever owns this one (it shares the thread).
        record = runner.runtime.store.peek(run_id) if run_id is not None else None
        principal = record.principal if record is not None else None
        graph_input = (to_input or _default_input)(state)
        stream = runner.stream(
            agent,
            graph_input,
            causation_id=causation_id,
            thread_id=str(thread_id) if thread_id is not None else None,
            principal=principal,
            timeout=timeout,
            request_id=request_id,
            relayed_into=run_id if relay and handler is not None else None,
        )
        try:
            async for event in stream:
                if relay and handler is not None and run_id is not None:
                    handler.relay(run_id, event, agent_prefix=prefix or None)
        except HandoffError as exc:
            if handler is not None and run_id is not None:
                failed = {"phase": "failed", "agent": agent, "request_id": request_id, "error": str(exc)}
                handler.emit_custom(run_id, MULTIAGENT_SYNC, failed, agent=prefix or None)
            raise
        result = stream.result
        if result is None:  # pragma: no cover - the stream always ends with a result or an error
            raise HandoffError(f"agent {agent!r} ended without a result")
        if handler is not None and run_id is not None:
            done = {
                "phase": "completed" if result.ok else "failed",
                "agent": agent,
                "request_id": request_id,
                "run_id": result.run_id,
                "node": result.node,
                "status": result.status,
            }
            handler.emit_custom(run_id, MULTIAGENT_SYNC, done, agent=prefix or None)
        result.raise_for_status()
        return (to_update or (lambda r, _s: _default_update(r, agent)))(result, state)

    call_remote_agent.__name__ = f"remote_{agent}"
    # LangGraph passes ``config`` to nodes whose parameter is typed RunnableConfig (a
    # string annotation would make it warn).
    from langchain_core.runnables import RunnableConfig

    call_remote_agent.__annotations__["config"] = RunnableConfig
    return call_remote_agent
