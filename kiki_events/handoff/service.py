"""The :class:`Handoff` of one runtime: lifecycle, serving and delegating in one object."""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from ..capture.handler import KikiCallbackHandler
from ..config import resolve_concurrency
from ..errors import HandoffError, KikiEventsError
from ..redis.client import Keys, create_redis
from .common import Shared
from .requesting import Follow, HandoffStream, Requester, Task
from .results import HandoffResult
from .serving import Server

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..config import HandoffSettings
    from ..runtime import KikiRuntime

__all__ = ["Handoff", "client_name", "kiki_handler"]

_handoffs: dict[str, weakref.ref[Handoff]] = {}
"""Node name → its running Handoff, for :meth:`Handoff.of`."""


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

    Build one per runtime (:class:`~kiki_events.runtime.KikiRuntime` does when the
    event bus provider is Redis) and use it as an async context manager, or call
    :meth:`start` and :meth:`close`.

    Args:
        runtime: the runtime whose run manager executes served agents.
        redis: asyncio Redis client (default: one from ``eventbus.redis``, owned and
            closed by this object).
        keys: key names (default: from ``eventbus.redis.channel_prefix``).
        settings: the ``handoff`` section (default: the runtime's).
        follow: how to follow a run from its id (default: the runtime's ``follow``,
            else this node's own run store).
    """

    def __init__(
        self,
        runtime: KikiRuntime,
        redis: Redis | None = None,
        keys: Keys | None = None,
        settings: HandoffSettings | None = None,
        *,
        follow: Follow | None = None,
    ) -> None:
        self.runtime = runtime
        self.node = runtime.node
        self.settings = settings or runtime.settings.handoff
        self.keys = keys or Keys(runtime.settings.eventbus.redis.channel_prefix)
        self._owns_redis = redis is None
        self.redis: Redis = (
            redis
            if redis is not None
            else create_redis(runtime.settings.eventbus.redis, client_name=client_name(self.node))
        )
        self._state: Literal["new", "running", "draining", "closed"] = "new"
        self.stats: dict[str, int] = {
            "delegated": 0,
            "handled": 0,
            "duplicates": 0,
            "reclaimed": 0,
            "dead_lettered": 0,
            "released": 0,
            "redis_errors": 0,
        }
        """Counters: tasks delegated from here, run here, skipped as already done, …"""
        concurrency = resolve_concurrency(self.settings, runtime.settings.eventbus)
        shared = Shared(runtime, self.node, self.settings, self.keys, self.redis, self.stats, concurrency)
        self._server = Server(shared)
        self._requester = Requester(shared, lambda: self._state, follow)

    @property
    def follow(self) -> Follow | None:
        """How runs are followed (``None``: the runtime's ``follow``, else the local store)."""
        return self._requester.follow

    @follow.setter
    def follow(self, value: Follow | None) -> None:
        self._requester.follow = value

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
        _handoffs[self.node] = weakref.ref(self)
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
        """Stop serving, wait for tasks running here, release the Redis client (idempotent)."""
        if self._state == "closed":
            return
        if self._state == "new":
            self._state = "closed"
            return
        await self.stop_serving()
        await self._server.close()
        await self._requester.close()
        if _handoffs.get(self.node) is not None and _handoffs[self.node]() is self:
            del _handoffs[self.node]
        self._state = "closed"
        if self._owns_redis:
            await self.redis.aclose()

    async def __aenter__(self) -> Handoff:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @classmethod
    def of(cls, config: Mapping[str, Any] | None) -> Handoff:
        """The started Handoff of the runtime running the graph that ``config`` belongs to.

        For graph nodes: it finds the run's :class:`KikiCallbackHandler` in the
        node's ``config`` and the Handoff of that handler's node.

        Raises:
            HandoffError: the run has no kiki handler, or its node has no started Handoff.
        """
        handler = kiki_handler(config)
        if handler is None:
            raise HandoffError("this graph does not run under a KikiCallbackHandler; pass handoff= explicitly")
        ref = _handoffs.get(handler.node or "")
        handoff = ref() if ref is not None else None
        if handoff is None or handoff.state != "running":
            raise HandoffError(
                f"node {handler.node!r} has no running Handoff (agents across nodes need eventbus.provider: redis)"
            )
        return handoff

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
        return await self._server.shared.serving_nodes(agent)

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
