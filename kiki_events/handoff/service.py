"""The :class:`Handoff` of one node: lifecycle, serving and delegating in one object."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from ..capture.handler import KikiCallbackHandler
from ..errors import HandoffError, KikiEventsError
from .common import HandoffContext
from .requesting import HandoffStream, Requester, Task
from .results import HandoffResult
from .serving import Server

__all__ = ["CONFIG_KEY", "Handoff", "client_name", "kiki_handler"]

CONFIG_KEY = "__kiki_handoff"
"""The key of a node's Handoff in the ``configurable`` of every run of that node.

The composition root adds it to :attr:`RunManager.configurable
<kiki_events.core.manager.RunManager.configurable>`; :meth:`Handoff.of` reads it back
in a graph node. (LangGraph keeps keys starting with ``__`` out of checkpoint metadata.)
"""


def client_name(node: str) -> str:
    """The name a Handoff's own Redis connections carry (``CLIENT LIST`` shows it)."""
    return "kiki-handoff:" + re.sub(r"[^A-Za-z0-9_.:-]", "_", node)


def kiki_handler(config: Mapping[str, Any] | None) -> KikiCallbackHandler | None:
    """The :class:`KikiCallbackHandler` among the callbacks of a graph node's ``config``."""
    callbacks = (config or {}).get("callbacks")
    handlers = getattr(callbacks, "handlers", None)
    if handlers is None and isinstance(callbacks, list):
        handlers = callbacks
    for handler in handlers or ():
        if isinstance(handler, KikiCallbackHandler):
            return handler
    return None


class Handoff:
    """Delegate tasks to agents on other nodes, and serve this node's agents to them.

    :class:`~kiki_events.runtime.KikiRuntime` builds one when the event bus
    provider is Redis (``runtime.handoff``) and starts and closes it with itself;
    otherwise use it as an async context manager, or call :meth:`start` and :meth:`close`.

    Args:
        context: what it uses of its node (settings, Redis client, run manager, how
            to follow a run, bridge); the Redis client stays the caller's to close.
    """

    def __init__(self, context: HandoffContext) -> None:
        self.context = context
        self.node = context.node
        self.settings = context.settings
        self.keys = context.keys
        self.redis = context.redis
        self.stats = context.stats
        """Counters: tasks delegated from here, run here, skipped as already done, …"""
        self._state: Literal["new", "running", "draining", "closed"] = "new"
        self._server = Server(context)
        self._requester = Requester(context, lambda: self._state)

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self._state

    async def start(self) -> None:
        """Start heartbeats and serve ``handoff.serve`` agents.

        Raises:
            UnknownGraphError: a served agent is not a registered graph.
            KikiEventsError: started twice.
        """
        if self._state != "new":
            raise KikiEventsError(f"this Handoff cannot be started: it is {self._state}")
        self._state = "running"
        self._server.start()
        self._requester.start()
        for agent in self.settings.serve:
            await self.serve(agent)

    async def stop_serving(self) -> None:
        """Stop taking new tasks and stop advertising; tasks already running go on."""
        if self._state != "running":
            return
        self._state = "draining"
        await self._server.stop()

    async def close(self) -> None:
        """Stop serving and wait for the tasks running here (idempotent); the Redis client stays open."""
        if self._state == "closed":
            return
        if self._state == "new":
            self._state = "closed"
            return
        await self.stop_serving()
        await self._server.close()
        await self._requester.close()
        self._state = "closed"

    async def __aenter__(self) -> Handoff:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @classmethod
    def of(cls, config: Mapping[str, Any] | None) -> Handoff:
        """The started Handoff of the node running the graph that ``config`` belongs to.

        For graph nodes: every run a runtime starts carries its node's Handoff in its
        ``configurable`` (under :data:`CONFIG_KEY`).

        Raises:
            HandoffError: the run was not started by a runtime with a running Handoff (a
                graph run some other way, e.g. by :func:`~kiki_events.server.stream_agent_sse`,
                needs ``handoff=`` given to :func:`remote_agent_node`).
        """
        handoff = ((config or {}).get("configurable") or {}).get(CONFIG_KEY)
        if isinstance(handoff, Handoff):
            if handoff.state == "running":
                return handoff
            raise HandoffError(f"node {handoff.node!r} has no running Handoff (it is {handoff.state})")
        handler = kiki_handler(config)
        where = f"node {handler.node!r}" if handler is not None else "this graph"
        raise HandoffError(
            f"{where} has no running Handoff (agents across nodes need eventbus.provider: redis and a run "
            "started by that node's KikiRuntime; elsewhere pass handoff= explicitly)"
        )

    # -- serving ------------------------------------------------------------------------------
    async def serve(self, agent: str, *, graph: str | None = None) -> None:
        """Run tasks for ``agent`` on this node with graph ``graph`` (default: the same name).

        Raises:
            UnknownGraphError: no such graph is registered.
            HandoffError: the Handoff is not running.
        """
        if self._state != "running":
            raise HandoffError(f"cannot serve {agent!r}: the Handoff is {self._state}")
        await self._server.serve(agent, graph or agent)

    def serving(self) -> list[str]:
        """Agents this node serves."""
        return self._server.serving()

    async def serving_nodes(self, agent: str) -> list[str]:
        """Nodes whose advertisement for ``agent`` is live."""
        return await self.context.serving_nodes(agent)

    # -- delegating ---------------------------------------------------------------------------
    @staticmethod
    def new_request_id() -> str:
        """A fresh, unguessable request id (pass it to :meth:`delegate` or :meth:`stream`)."""
        return Requester.new_request_id()

    async def delegate(
        self,
        agent: str,
        input: Any,
        *,
        causation_id: str | None = None,
        thread_id: str | None = None,
        principal: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> HandoffResult:
        """Run ``input`` on a node serving ``agent`` and wait for the result.

        ``input`` is the agent graph's input (a state mapping; LangChain messages
        inside are kept), or a string, which becomes one user message.

        Raises:
            NoAgentError: no node serves ``agent`` (checked before sending, and again
                whenever nobody picks the task up within ``handoff.pickup_timeout``).
            HandoffTimeoutError: no result within ``timeout`` (default ``handoff.timeout``);
                the task is cancelled.
            HandoffFailedError: the run ended in error, was cancelled or interrupted, or
                the task was dead-lettered (message redacted).
        """
        task = Task(agent, input, causation_id, thread_id, principal, timeout, request_id)
        return await self._requester.delegate(task)

    def stream(
        self,
        agent: str,
        input: Any,
        *,
        causation_id: str | None = None,
        thread_id: str | None = None,
        principal: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        relayed_into: str | None = None,
    ) -> HandoffStream:
        """Like :meth:`delegate`, but yields the run's events as they happen (``done`` included).

        If the task is run again (its first node died), the events of the new run
        follow. ``stream.result`` holds the outcome once iteration ended. Pass
        ``relayed_into`` (a run id) when those events are relayed into that run
        (as :func:`~kiki_events.handoff.remote_agent_node` does): the remote run is
        then marked as its delegate and not listed on the thread, which shows its
        work once, inside ``relayed_into``.
        """
        task = Task(agent, input, causation_id, thread_id, principal, timeout, request_id, relayed_into)
        return self._requester.stream(task)
