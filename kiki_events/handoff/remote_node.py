"""A LangGraph node that hands its work to an agent another node serves, relaying its events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..capture.handler import KikiCallbackHandler, _agent_path
from ..errors import HandoffError
from ..events import StreamEvent
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


@dataclass(frozen=True)
class _Options:
    """How one remote agent node delegates (the arguments of :func:`remote_agent_node`)."""

    agent: str
    handoff: Handoff | None
    to_input: Callable[[Any], Any] | None
    to_update: Callable[[HandoffResult, Any], Any] | None
    agent_prefix: str | None
    timeout: float | None
    relay: bool


@dataclass(frozen=True)
class _Caller:
    """The calling run: its kiki handler and run id (``None`` outside a kiki run), its agent path."""

    handler: KikiCallbackHandler | None
    run_id: str | None
    prefix: str

    @classmethod
    def of(cls, config: Any, options: _Options) -> _Caller:
        handler = kiki_handler(config)
        parent_lc = getattr((config or {}).get("callbacks"), "parent_run_id", None)
        run_id = handler.run_id_of(parent_lc) if handler is not None else None
        metadata = (config or {}).get("metadata") or {}
        prefix = options.agent_prefix if options.agent_prefix is not None else (_agent_path(metadata) or options.agent)
        return cls(handler, run_id, prefix)

    def sync(self, data: dict[str, Any]) -> str | None:
        """Add a ``multiagent:sync`` event to the calling run; returns its id."""
        if self.handler is None or self.run_id is None:
            return None
        event = self.handler.emit_custom(self.run_id, MULTIAGENT_SYNC, data, agent=self.prefix or None)
        return event.id if event is not None else None

    def relay(self, event: StreamEvent) -> None:
        if self.handler is not None and self.run_id is not None:
            self.handler.relay(self.run_id, event, agent_prefix=self.prefix or None)


async def _call(options: _Options, state: Any, config: Any) -> Any:
    """Delegate ``state`` to the agent, relay its run into the calling run, return the state update."""
    agent = options.agent
    runner = options.handoff or Handoff.of(config)
    caller = _Caller.of(config, options)
    thread_id = ((config or {}).get("configurable") or {}).get("thread_id")
    request_id = runner.new_request_id()
    sync = {"agent": agent, "request_id": request_id}
    requested = caller.sync({"phase": "requested", **sync, "from_node": runner.node})
    # The remote run belongs to whoever owns this one (it shares the thread).
    record = runner.context.runs.store.peek(caller.run_id) if caller.run_id is not None else None
    stream = runner.stream(
        agent,
        (options.to_input or _default_input)(state),
        causation_id=requested or caller.run_id,
        thread_id=str(thread_id) if thread_id is not None else None,
        principal=record.principal if record is not None else None,
        timeout=options.timeout,
        request_id=request_id,
        relayed_into=caller.run_id if options.relay and caller.handler is not None else None,
    )
    try:
        async for event in stream:
            if options.relay:
                caller.relay(event)
    except HandoffError as exc:
        caller.sync({"phase": "failed", **sync, "error": str(exc)})
        raise
    result = stream.result
    if result is None:  # pragma: no cover - the stream always ends with a result or an error
        raise HandoffError(f"agent {agent!r} ended without a result")
    phase = "completed" if result.ok else "failed"
    caller.sync({"phase": phase, **sync, "run_id": result.run_id, "node": result.node, "status": result.status})
    result.raise_for_status()
    if options.to_update is not None:
        return options.to_update(result, state)
    return _default_update(result, agent)


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

    options = _Options(agent, handoff, to_input, to_update, agent_prefix, timeout, relay)

    async def call_remote_agent(state: Any, config: Any) -> Any:
        return await _call(options, state, config)

    call_remote_agent.__name__ = f"remote_{agent}"
    # LangGraph passes ``config`` to nodes whose parameter is typed RunnableConfig (a
    # string annotation would make it warn).
    from langchain_core.runnables import RunnableConfig

    call_remote_agent.__annotations__["config"] = RunnableConfig
    return call_remote_agent
