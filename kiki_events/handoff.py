"""Agents across nodes: hand a task to an agent that another node serves.

A node *serves* agents (graph names it has registered): it advertises them in
Redis and consumes their work streams. Any node can *delegate* a task to an
agent: the task goes to exactly one serving node, runs there through that node's
:class:`~kiki_events.runs.RunManager` (so its events flow like any run's), and
its result comes back. :func:`remote_agent_node` makes a LangGraph node that
delegates and relays the remote run's events into the calling run, so a browser
watching that run sees the remote agent's tokens.

Redis keys (under the deployment prefix; see :class:`~kiki_events.redis_client.Keys`):

=========================  ===========================================================
``agents:<agent>``         sorted set: serving node → advertisement expiry (Unix s)
``work:<agent>``           work stream; consumer group ``kiki-agents``, one consumer per node
``dead:<agent>``           dead-letter stream: tasks given up, with the reason
``reply:{<request>}``      reply stream: ``started`` (child run id, node), then ``result``
``handled:{<request>}``    done marker: a lease while a node runs it, ``done`` after
``cancel:{<request>}``     set when the requester gave up; the serving node cancels the run
=========================  ===========================================================

Failures: a node that dies while running a task stops touching it; after
``handoff.claim_idle`` another node reclaims it (``XAUTOCLAIM``) and runs it again
(the requester follows the new run). A task delivered more than
``handoff.max_attempts`` times moves to the dead-letter stream and its requester
gets :class:`~kiki_events.errors.HandoffFailedError`. A task whose done marker says
``done`` is acknowledged without running again. A run that ends in error is a
result, not a failure: it is not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from .config import HandoffSettings
from .errors import (
    HandoffError,
    HandoffFailedError,
    HandoffTimeoutError,
    KikiEventsError,
    NoAgentError,
    RunError,
    RunNotFoundError,
    UnknownGraphError,
)
from .events import StreamEvent
from .handler import KikiCallbackHandler, _agent_path
from .redaction import redact_error, redact_text
from .redis_client import Keys, create_redis
from .replay import Frame, RunCursor
from .topics import MULTIAGENT_SYNC
from .workqueue import WorkItem, WorkQueue

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .runtime import KikiRuntime

__all__ = [
    "GROUP",
    "Follow",
    "Handoff",
    "HandoffResult",
    "HandoffStatus",
    "HandoffStream",
    "dump_payload",
    "load_payload",
    "remote_agent_node",
]

logger = logging.getLogger("kiki_events.handoff")

GROUP = "kiki-agents"
"""Consumer group of every work stream."""
WIRE_VERSION = "1"

HandoffStatus: TypeAlias = Literal["success", "error", "interrupted", "cancelled", "dead_letter", "expired"]
"""Final status of a handed-off task: its run's status, or why it never ran to the end."""

Follow: TypeAlias = Callable[..., AsyncIterator[StreamEvent]]
"""``follow(run_id, *, after=0)``: every event of a run from whichever node runs it."""

_MESSAGE_TAG = "__kiki_message__"
_handoffs: dict[str, weakref.ref[Handoff]] = {}


# -- payloads: task inputs and results as JSON (messages kept faithfully) -----------------
def dump_payload(value: Any) -> Any:
    """``value`` as JSON-safe data; LangChain messages survive :func:`load_payload`."""
    from langchain_core.messages import BaseMessage, message_to_dict
    from pydantic import BaseModel

    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, BaseMessage):
        return {_MESSAGE_TAG: message_to_dict(value)}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): dump_payload(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [dump_payload(v) for v in value]
    return str(value)


def load_payload(value: Any) -> Any:
    """Inverse of :func:`dump_payload`."""
    if isinstance(value, dict):
        if len(value) == 1 and _MESSAGE_TAG in value:
            from langchain_core.messages import messages_from_dict

            return messages_from_dict([value[_MESSAGE_TAG]])[0]
        return {k: load_payload(v) for k, v in value.items()}
    if isinstance(value, list):
        return [load_payload(v) for v in value]
    return value


def _last_text(state: Any) -> str | None:
    messages = state.get("messages") if isinstance(state, Mapping) else None
    if not isinstance(messages, list):
        return None
    from langchain_core.messages import AIMessage

    for message in reversed(messages):
        if isinstance(message, AIMessage):
            return message.text if isinstance(message.text, str) else str(message.content)
    return None


# -- results ------------------------------------------------------------------------------
@dataclass(frozen=True)
class HandoffResult:
    """What a handed-off task produced."""

    request_id: str
    agent: str
    status: HandoffStatus
    run_id: str | None = None
    """The run on the serving node (the last one, if the task was run again)."""
    node: str | None = None
    """The node that ran it."""
    output: Any = None
    """The run's final state (messages restored), or ``None`` when it was too large."""
    text: str | None = None
    """Text of the last AI message of the final state."""
    error: str | None = None
    """Redacted error message when the run did not succeed."""
    truncated: bool = False
    """The final state was too large to send back (only ``text`` is given)."""

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def raise_for_status(self) -> HandoffResult:
        """Return ``self`` on success; otherwise raise :class:`HandoffFailedError`."""
        if self.status != "success":
            detail = f": {self.error}" if self.error else ""
            raise HandoffFailedError(
                f"agent {self.agent!r} ended with status {self.status}{detail}", status=self.status, run_id=self.run_id
            )
        return self


def _result_from(request: _Request, fields: Mapping[str, str]) -> HandoffResult:
    output: Any = None
    raw = fields.get("output")
    if raw:
        try:
            output = load_payload(json.loads(raw))
        except (ValueError, TypeError):  # a foreign writer: keep what we can
            output = None
    status = fields.get("status", "error")
    known = ("success", "error", "interrupted", "cancelled", "dead_letter", "expired")
    return HandoffResult(
        request_id=request.request_id,
        agent=request.agent,
        status=status if status in known else "error",  # type: ignore[arg-type]
        run_id=fields.get("run_id") or None,
        node=fields.get("node") or None,
        output=output,
        text=fields.get("text") if "text" in fields else None,
        error=fields.get("error") or None,
        truncated=fields.get("truncated") == "1",
    )


# -- the requesting side ------------------------------------------------------------------
@dataclass(eq=False)
class _Request:
    request_id: str
    agent: str
    deadline: float
    entry_id: str
    reply_key: str
    last_reply: str = "0-0"
    run_id: str | None = None
    node: str | None = None


class HandoffStream:
    """The events of a handed-off task's run, as they happen; iterate it once.

    After the iteration ends, :attr:`result` holds the outcome. Iteration raises
    :class:`~kiki_events.errors.NoAgentError` or
    :class:`~kiki_events.errors.HandoffTimeoutError` like :meth:`Handoff.delegate`,
    but not :class:`~kiki_events.errors.HandoffFailedError`: check
    ``result.status`` (or call ``result.raise_for_status()``).
    """

    def __init__(self, events: AsyncIterator[StreamEvent], request_id: str) -> None:
        self._events = events
        self.request_id = request_id
        self.result: HandoffResult | None = None
        """The outcome, once iteration has ended."""
        self.run_id: str | None = None
        """The run currently followed on the serving node."""

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._events

    async def aclose(self) -> None:
        """Stop following (and cancel the task if it is still running)."""
        closer = getattr(self._events, "aclose", None)
        if closer is not None:
            await closer()


async def _local_follow(runtime: KikiRuntime, run_id: str, *, after: int = 0) -> AsyncIterator[StreamEvent]:
    """Follow a run of this node's own store (used when the runtime has no ``follow``)."""
    record = runtime.store.get(run_id)
    cursor = RunCursor(record.log, after)
    while True:
        items = await cursor.next()
        if not items:
            return
        for item in items:
            if isinstance(item, Frame):
                yield item.event


# -- the serving side --------------------------------------------------------------------
class _ResultHandler(KikiCallbackHandler):
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
class _Active:
    """A task this node is running."""

    item: WorkItem
    agent: str
    request_id: str
    marker: str
    run_id: str | None = None
    cancelled: bool = False


@dataclass(eq=False)
class _Served:
    agent: str
    graph: str
    queue: WorkQueue
    task: asyncio.Task[None] | None = None
    ready: bool = False
    """Its group exists and it was advertised since the last Redis error."""
    active: dict[str, _Active] = field(default_factory=dict)
    """Entry id → task being run."""
    running: set[asyncio.Task[None]] = field(default_factory=set)


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
        self.redis: Redis = redis if redis is not None else create_redis(runtime.settings.eventbus.redis)
        self.follow = follow
        """How runs are followed (``None``: the runtime's ``follow``, else the local store)."""
        self._drain_grace = 3.0
        self._served: dict[str, _Served] = {}
        self._heartbeat: asyncio.Task[None] | None = None
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
        self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_forever(), name="kiki-handoff-beat")
        for agent in self.settings.serve:
            await self.serve(agent)

    async def stop_serving(self) -> None:
        """Stop taking new tasks and stop advertising; tasks already running go on."""
        if self._state != "running":
            return
        self._state = "draining"
        served = list(self._served.values())
        for served_agent in served:
            if served_agent.task is not None:
                served_agent.task.cancel()
        await asyncio.gather(*(s.task for s in served if s.task is not None), return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._unadvertise([s.agent for s in served])

    async def close(self) -> None:
        """Stop serving, wait for tasks running here, release the Redis client (idempotent)."""
        if self._state == "closed":
            return
        if self._state == "new":
            self._state = "closed"
            return
        await self.stop_serving()
        running = [t for s in self._served.values() for t in s.running]
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
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
        handler = _kiki_handler(config)
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
        graph_name = graph or agent
        self.runtime.graphs.get(graph_name)  # fails fast on a typo
        if agent in self._served:
            return
        queue = WorkQueue(
            self.redis,
            self.keys.work_stream(agent),
            group=GROUP,
            consumer=self.node,
            dead_letter=self.keys.dead_letter_stream(agent),
        )
        served = self._served[agent] = _Served(agent, graph_name, queue)
        try:
            await self._prepare(served)
        except Exception as exc:  # Redis is down: the consumer loop keeps trying
            logger.warning("agent %r is not served yet (%s); retrying", agent, redact_text(str(exc)))
        served.task = asyncio.get_running_loop().create_task(self._consume(served), name=f"kiki-handoff:{agent}")
        logger.info("node %s serves agent %r (graph %r)", self.node, agent, graph_name)

    async def _prepare(self, served: _Served) -> None:
        await served.queue.ensure_group()
        await self._advertise([served.agent])
        served.ready = True

    def serving(self) -> list[str]:
        """Agents this node serves."""
        return sorted(self._served)

    async def serving_nodes(self, agent: str) -> list[str]:
        """Nodes whose advertisement for ``agent`` is live."""
        now = time.time()
        nodes = await self.redis.zrangebyscore(self.keys.agents(agent), now, "+inf")
        return sorted(n.decode() if isinstance(n, bytes) else str(n) for n in nodes)

    async def _advertise(self, agents: list[str]) -> None:
        if not agents:
            return
        ttl = self.settings.advertise_ttl
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for agent in agents:
                key = self.keys.agents(agent)
                pipe.zadd(key, {self.node: now + ttl})
                pipe.zremrangebyscore(key, "-inf", now)
                pipe.expire(key, max(1, int(ttl * 3)))
            await pipe.execute()

    async def _unadvertise(self, agents: list[str]) -> None:
        if agents:
            async with self.redis.pipeline(transaction=False) as pipe:
                for agent in agents:
                    pipe.zrem(self.keys.agents(agent), self.node)
                await pipe.execute()

    async def _heartbeat_forever(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self.settings.heartbeat)
            try:
                await self._beat()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _reraise_if_cancelled()
                failures += 1
                self.stats["redis_errors"] += 1
                if failures == 1:
                    logger.warning("handoff heartbeat failed (%s); retrying", redact_text(str(exc)))

    async def _beat(self) -> None:
        if self._state == "running":
            await self._advertise(list(self._served))
        lease_ms = self._lease_ms()
        for served in self._served.values():
            active = list(served.active.values())
            if not active:
                continue
            await served.queue.touch([a.item.id for a in active])
            async with self.redis.pipeline(transaction=False) as pipe:
                for task in active:
                    pipe.pexpire(task.marker, lease_ms)
                    pipe.exists(self._cancel_key(task.request_id))
                replies = await pipe.execute()
            for task, wanted in zip(active, replies[1::2], strict=True):
                if wanted and not task.cancelled and task.run_id is not None:
                    task.cancelled = True
                    logger.info(
                        "request %s was abandoned by its requester; cancelling run %s", task.request_id, task.run_id
                    )
                    with contextlib.suppress(RunNotFoundError):
                        self.runtime.runs.cancel(task.run_id)

    def _lease_ms(self) -> int:
        # Shorter than claim_idle: a dead node's lease is gone by the time its task is reclaimed.
        idle = self.settings.claim_idle
        return max(100, int(max(idle - self.settings.heartbeat, idle * 0.8) * 1000))

    def _cancel_key(self, request_id: str) -> str:
        return f"{self.keys.prefix}cancel:{{{request_id}}}"

    async def _consume(self, served: _Served) -> None:
        """Read new tasks, reclaim idle ones, run each in its own task; never dies on Redis errors."""
        settings = self.settings
        reclaim_every = max(settings.claim_idle / 4, 0.05)
        next_reclaim = 0.0
        failures = 0
        while True:
            try:
                if not served.ready:
                    await self._prepare(served)
                free = settings.concurrency - len(served.running)
                if free <= 0:
                    await asyncio.wait(served.running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                items: list[WorkItem] = []
                if time.monotonic() >= next_reclaim:
                    next_reclaim = time.monotonic() + reclaim_every
                    items = await served.queue.reclaim(settings.claim_idle, count=free)
                    self.stats["reclaimed"] += len(items)
                if not items:
                    block = min(settings.heartbeat, max(next_reclaim - time.monotonic(), 0.001))
                    items = await served.queue.read(free, block=block)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _reraise_if_cancelled()
                if self._state != "running":
                    return
                failures += 1
                served.ready = False  # e.g. NOGROUP after Redis lost its data
                self.stats["redis_errors"] += 1
                if failures == 1:
                    logger.warning(
                        "reading tasks of agent %r failed (%s); retrying", served.agent, redact_text(str(exc))
                    )
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))
                continue
            for item in items:
                if item.id in served.active:
                    continue  # ours already (touched back after a reclaim elsewhere)
                task = asyncio.get_running_loop().create_task(self._handle(served, item), name=f"kiki-task:{item.id}")
                served.running.add(task)
                task.add_done_callback(served.running.discard)

    async def _handle(self, served: _Served, item: WorkItem) -> None:
        try:
            await self._handle_item(served, item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis trouble mid-task: it stays pending and is reclaimed later
            self.stats["redis_errors"] += 1
            logger.warning("task %s of agent %r failed (%s); it will be retried", item.id, served.agent, exc)
        finally:
            served.active.pop(item.id, None)

    async def _handle_item(self, served: _Served, item: WorkItem) -> None:
        fields = item.fields
        request_id = fields.get("request_id", "")
        settings = self.settings
        if fields.get("v") != WIRE_VERSION or not request_id or fields.get("agent") != served.agent:
            await self._bury(served, item, None, "malformed task (unknown version or missing fields)")
            return
        request = _Request(
            request_id, served.agent, _float(fields.get("deadline")), item.id, self.keys.reply(request_id)
        )
        if item.deliveries > settings.max_attempts:
            await self._bury(
                served, item, request, f"gave up after {item.deliveries - 1} deliveries (handoff.max_attempts)"
            )
            return
        marker = self.keys.done_marker(request_id)
        owned = await self.redis.set(marker, f"running {self.node}", nx=True, px=self._lease_ms())
        if not owned:
            current = await self.redis.get(marker)
            if current is not None and (current.decode() if isinstance(current, bytes) else str(current)).startswith(
                "done"
            ):
                self.stats["duplicates"] += 1
                await served.queue.ack(item.id)
            # Otherwise a live node runs it: its next heartbeat takes the task back.
            return
        active = served.active[item.id] = _Active(item, served.agent, request_id, marker)
        if await self.redis.exists(self._cancel_key(request_id)) or time.time() > request.deadline:
            await self._finish(served, active, {"status": "expired", "error": "the requester stopped waiting"})
            return
        try:
            payload = fields.get("input", "null")
            if len(payload) > settings.max_input_bytes:
                raise ValueError(f"input is {len(payload)} bytes, more than handoff.max_input_bytes")
            graph_input = load_payload(json.loads(payload))
        except Exception as exc:
            await self.redis.delete(marker)
            await self._bury(served, item, request, f"undecodable input ({type(exc).__name__})")
            return
        causation_id = fields.get("causation_id") or None
        handlers: list[_ResultHandler] = []

        def make_handler(*args: Any, **kwargs: Any) -> KikiCallbackHandler:
            handler = _ResultHandler(*args, causation_id=causation_id, **kwargs)
            handlers.append(handler)
            return handler

        try:
            handle = self.runtime.runs.start(
                served.graph,
                graph_input,
                thread_id=fields.get("thread_id") or None,
                metadata={"kiki_request_id": request_id, "kiki_agent": served.agent},
                principal=fields.get("principal") or None,
                handler_factory=make_handler,
            )
        except (UnknownGraphError, RunNotFoundError) as exc:
            await self._finish(served, active, {"status": "error", "error": str(exc)})
            return
        except RunError as exc:  # busy or shutting down: leave it for another try
            await self.redis.delete(marker)
            logger.info("task %s of agent %r not started here (%s)", item.id, served.agent, exc)
            return
        active.run_id = handle.run_id
        self.stats["handled"] += 1
        await self._reply(
            request.reply_key,
            {"kind": "started", "run_id": handle.run_id, "node": self.node, "attempt": str(item.deliveries)},
        )
        await asyncio.wait({handle.task})
        status = handle.record.status
        handler = handlers[0] if handlers else None
        if status == "cancelled" and not active.cancelled and self.runtime.runs.closing:
            # This node is shutting down, not the requester: let another node run it.
            await self.redis.delete(marker)
            await served.queue.release([item.id], self.settings.claim_idle)
            self.stats["released"] += 1
            return
        result: dict[str, str] = {"status": status if status not in ("running", "pending") else "error"}
        result["run_id"] = handle.run_id
        if handler is not None:
            if handler.error:
                result["error"] = handler.error
            result.update(self._encode_output(handler.output))
        await self._finish(served, active, result)

    def _encode_output(self, output: Any) -> dict[str, str]:
        limit = self.settings.max_output_bytes
        fields: dict[str, str] = {}
        text = _last_text(output)
        if text is not None:
            fields["text"] = text[:limit]
        if output is None:
            return fields
        try:
            encoded = json.dumps(dump_payload(output), ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError):
            encoded = ""
        if encoded and len(encoded.encode()) <= limit:
            fields["output"] = encoded
        else:
            fields["truncated"] = "1"
        return fields

    async def _finish(self, served: _Served, active: _Active, result: dict[str, str]) -> None:
        result = {"kind": "result", "node": self.node, **result}
        key = self.keys.reply(active.request_id)
        ttl = max(1, int(self.settings.result_ttl))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, result)  # type: ignore[arg-type]
            pipe.expire(key, ttl)
            pipe.set(active.marker, f"done {result.get('run_id', '')}".rstrip(), ex=ttl)
            await pipe.execute()
        await served.queue.ack(active.item.id)

    async def _bury(self, served: _Served, item: WorkItem, request: _Request | None, reason: str) -> None:
        await served.queue.bury(item, reason)
        self.stats["dead_lettered"] += 1
        logger.warning("task %s of agent %r moved to the dead-letter stream: %s", item.id, served.agent, reason)
        if request is not None:
            await self._reply(request.reply_key, {"kind": "result", "status": "dead_letter", "error": reason})

    async def _reply(self, key: str, fields: dict[str, str]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, fields)  # type: ignore[arg-type]
            pipe.expire(key, max(1, int(self.settings.result_ttl)))
            await pipe.execute()

    # -- delegating -------------------------------------------------------------------------------
    @staticmethod
    def new_request_id() -> str:
        """A fresh, unguessable request id (pass it to :meth:`delegate` or :meth:`stream`)."""
        return secrets.token_urlsafe(16)

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
        request = await self._submit(agent, input, causation_id, thread_id, principal, timeout, request_id)
        try:
            fields = await self._next_reply(request)
            while fields.get("kind") != "result":
                fields = await self._next_reply(request)
        except BaseException:
            await self._abandon(request)
            raise
        return _result_from(request, fields).raise_for_status()

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
    ) -> HandoffStream:
        """Like :meth:`delegate`, but yields the run's events as they happen (``done`` included).

        If the task is run again (its first node died), the events of the new run
        follow. ``stream.result`` holds the outcome once iteration ended.
        """
        rid = request_id or self.new_request_id()
        holder = HandoffStream(_empty(), rid)
        holder._events = self._stream(holder, agent, input, causation_id, thread_id, principal, timeout, rid)
        return holder

    async def _stream(
        self,
        holder: HandoffStream,
        agent: str,
        input: Any,
        causation_id: str | None,
        thread_id: str | None,
        principal: str | None,
        timeout: float | None,
        request_id: str,
    ) -> AsyncIterator[StreamEvent]:
        request = await self._submit(agent, input, causation_id, thread_id, principal, timeout, request_id)
        out: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=1024)
        pump: asyncio.Task[None] | None = None
        pumped: str | None = None
        finished = False

        async def watch() -> None:
            try:
                while True:
                    fields = await self._next_reply(request)
                    await out.put(("reply", fields))
                    if fields.get("kind") == "result":
                        return
            except Exception as exc:  # NoAgentError, HandoffTimeoutError, Redis trouble
                await out.put(("error", exc))

        async def follow(run_id: str) -> None:
            try:
                async for event in self._follow_run(run_id, request.deadline):
                    await out.put(("event", event))
            except Exception as exc:  # the result still arrives through the reply stream
                logger.debug("following run %s of request %s stopped: %r", run_id, request_id, exc)
            finally:
                await out.put(("followed", run_id))

        watcher = asyncio.get_running_loop().create_task(watch(), name=f"kiki-handoff-reply:{request_id}")
        try:
            result: HandoffResult | None = None
            while result is None or (pump is not None and not pump.done()) or not out.empty():
                if result is None:
                    kind, value = await out.get()
                else:
                    # The result is in; give the run's last events a moment to arrive.
                    try:
                        kind, value = await asyncio.wait_for(out.get(), self._drain_grace)
                    except TimeoutError:
                        break
                if kind == "event":
                    if value.run_id == pumped:
                        yield value
                elif kind == "error":
                    raise value
                elif kind == "reply" and value.get("kind") == "started":
                    run_id = value.get("run_id")
                    if run_id and run_id != pumped:
                        if pump is not None:  # run again elsewhere: follow the new run
                            pump.cancel()
                        pumped = holder.run_id = run_id
                        pump = asyncio.get_running_loop().create_task(follow(run_id), name=f"kiki-follow:{run_id}")
                elif kind == "reply" and value.get("kind") == "result":
                    result = holder.result = _result_from(request, value)
                elif kind == "followed" and value == pumped and result is None:
                    continue  # the run's events ended; its result follows
            finished = True
        finally:
            for task in (watcher, pump):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*(t for t in (watcher, pump) if t is not None), return_exceptions=True)
            if not finished:
                await self._abandon(request)

    async def _follow_run(self, run_id: str, deadline: float) -> AsyncIterator[StreamEvent]:
        """Every event of ``run_id`` once, in order; retries while the run is not known here yet."""
        follow = self.follow or getattr(self.runtime, "follow", None)
        after = 0
        delay = 0.01
        while True:
            try:
                source = (
                    follow(run_id, after=after)
                    if follow is not None
                    else _local_follow(self.runtime, run_id, after=after)
                )
                async for event in source:
                    if event.seq == 0 or event.seq <= after:
                        continue
                    after = event.seq
                    yield event
                    if event.type == "done":
                        return
                return
            except RunNotFoundError:
                # The run was announced before this node heard of it.
                if time.time() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def _submit(
        self,
        agent: str,
        input: Any,
        causation_id: str | None,
        thread_id: str | None,
        principal: str | None,
        timeout: float | None,
        request_id: str | None,
    ) -> _Request:
        if self._state not in ("running", "draining"):
            raise HandoffError(f"cannot delegate: the Handoff is {self._state}")
        if not await self.serving_nodes(agent):
            raise NoAgentError(f"no node serves agent {agent!r}")
        if isinstance(input, str):
            input = {"messages": [{"role": "user", "content": input}]}
        payload = json.dumps(dump_payload(input), ensure_ascii=False, separators=(",", ":"))
        if len(payload.encode()) > self.settings.max_input_bytes:
            raise HandoffError(
                f"input for agent {agent!r} is {len(payload.encode())} bytes, "
                f"more than handoff.max_input_bytes ({self.settings.max_input_bytes})"
            )
        request_id = request_id or self.new_request_id()
        deadline = time.time() + (self.settings.timeout if timeout is None else timeout)
        fields = {
            "v": WIRE_VERSION,
            "request_id": request_id,
            "agent": agent,
            "input": payload,
            "deadline": f"{deadline:.3f}",
            "origin": self.node,
        }
        extra = {"causation_id": causation_id, "thread_id": thread_id, "principal": principal}
        fields.update({name: value for name, value in extra.items() if value})
        queue = WorkQueue(
            self.redis,
            self.keys.work_stream(agent),
            group=GROUP,
            consumer=self.node,
            dead_letter=self.keys.dead_letter_stream(agent),
        )
        entry_id = await queue.put(fields)
        self.stats["delegated"] += 1
        return _Request(request_id, agent, deadline, entry_id, self.keys.reply(request_id))

    async def _next_reply(self, request: _Request) -> dict[str, str]:
        """The next entry of the request's reply stream; enforces pickup and overall timeouts."""
        pickup_by = time.time() + self.settings.pickup_timeout
        while True:
            now = time.time()
            if now >= request.deadline:
                raise HandoffTimeoutError(f"agent {request.agent!r} gave no result within the timeout")
            wait_until = request.deadline if request.run_id is not None else min(request.deadline, pickup_by)
            block_ms = max(1, int((wait_until - now) * 1000))
            reply: Any = await self.redis.xread({request.reply_key: request.last_reply}, count=1, block=block_ms)
            for _key, entries in reply or ():
                for entry_id, raw in entries:
                    request.last_reply = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                    fields = {
                        (k.decode() if isinstance(k, bytes) else str(k)): (
                            v.decode() if isinstance(v, bytes) else str(v)
                        )
                        for k, v in raw.items()
                    }
                    if fields.get("kind") == "started":
                        request.run_id = fields.get("run_id") or request.run_id
                        request.node = fields.get("node") or request.node
                    return fields
            if request.run_id is None and time.time() >= pickup_by:
                if not await self.serving_nodes(request.agent):
                    with contextlib.suppress(Exception):
                        await self.redis.xdel(self.keys.work_stream(request.agent), request.entry_id)
                    raise NoAgentError(f"no node serves agent {request.agent!r} (nobody picked the task up)")
                pickup_by = time.time() + self.settings.pickup_timeout

    async def _abandon(self, request: _Request) -> None:
        """The requester gives up: tell the serving node to cancel, or drop the unread task."""
        with contextlib.suppress(Exception):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(self._cancel_key(request.request_id), "1", ex=max(1, int(self.settings.result_ttl)))
                if request.run_id is None:
                    pipe.xdel(self.keys.work_stream(request.agent), request.entry_id)
                await pipe.execute()


def _reraise_if_cancelled() -> None:
    """Re-raise a cancellation that a Redis client turned into another error."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _empty() -> AsyncIterator[StreamEvent]:
    return
    yield  # pragma: no cover


def _float(value: str | None) -> float:
    try:
        return float(value) if value else float("inf")
    except ValueError:
        return float("inf")


# -- inside a graph ------------------------------------------------------------------------------
def _kiki_handler(config: Mapping[str, Any] | None) -> KikiCallbackHandler | None:
    callbacks = (config or {}).get("callbacks")
    handlers = getattr(callbacks, "handlers", None)
    if handlers is None and isinstance(callbacks, list):
        handlers = callbacks
    for handler in handlers or ():
        if isinstance(handler, KikiCallbackHandler):
            return handler
    return None


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
    remote names), so a client watching this run sees them. Two ``multiagent:sync``
    custom events frame the hand-off (``requested``, then ``completed`` or ``failed``);
    the remote run's ``causation_id`` is the id of the ``requested`` event.

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
        handler = _kiki_handler(config)
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
