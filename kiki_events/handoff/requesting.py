"""The requesting side: submit a task, wait for its replies, follow its run.

A task is one entry of the agent's work stream. The serving node answers on the
request's reply stream: ``started`` (run id and node; again if the task is run
again elsewhere), then ``result``. :meth:`Requester.stream` also follows the
remote run's events while they happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from ..core.cursors import RunCursor
from ..core.records import text_fields, text_of
from ..core.runlog import Frame
from ..core.tasks import stop_tasks
from ..errors import HandoffError, HandoffTimeoutError, NoAgentError, RunNotFoundError
from ..events import StreamEvent
from ..redaction import redact_text
from .common import _STOP_TIMEOUT, WIRE_VERSION, Shared, logger
from .payload import dump_payload
from .replies import Inbox, ReplyReader, wake_key
from .results import HandoffResult, result_from

if TYPE_CHECKING:
    from ..runtime import KikiRuntime

__all__ = ["Follow", "HandoffStream", "Requester", "Task"]

Follow: TypeAlias = Callable[..., AsyncIterator[StreamEvent]]
"""``follow(run_id, *, after=0)``: every event of a run from whichever node runs it."""


@dataclass(frozen=True)
class Task:
    """What a caller hands to an agent of another node (see :meth:`Handoff.delegate`)."""

    agent: str
    input: Any
    causation_id: str | None = None
    thread_id: str | None = None
    principal: str | None = None
    timeout: float | None = None
    request_id: str | None = None
    relayed_into: str | None = None
    """The caller's run that relays the remote run's events (see :meth:`Handoff.stream`)."""


@dataclass(eq=False)
class _Request:
    request_id: str
    agent: str
    deadline: float
    entry_id: str
    reply_key: str
    inbox: Inbox
    principal: str | None = None
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


async def _empty() -> AsyncIterator[StreamEvent]:
    return
    yield  # pragma: no cover


class Requester:
    """Hands tasks to the agents other nodes serve and waits for their outcome."""

    def __init__(self, shared: Shared, state: Callable[[], str], follow: Follow | None = None) -> None:
        self.shared = shared
        self._state = state
        self.follow = follow
        self._drain_grace = 3.0
        self.replies = ReplyReader(shared.redis, wake_key(shared.keys.prefix, shared.node), stats=shared.stats)
        """Routes the replies of every request waited on here (one connection for all)."""

    def start(self) -> None:
        self.replies.start()

    async def close(self) -> None:
        await self.replies.close()

    @staticmethod
    def new_request_id() -> str:
        return secrets.token_urlsafe(16)

    async def delegate(self, task: Task) -> HandoffResult:
        request = await self._submit(task)
        try:
            fields = await self._next_reply(request)
            while fields.get("kind") != "result":
                fields = await self._next_reply(request)
        except BaseException:
            await self._abandon(request)
            raise
        finally:
            self.replies.remove(request.inbox)
        return result_from(request.request_id, request.agent, fields).raise_for_status()

    def stream(self, task: Task) -> HandoffStream:
        request_id = task.request_id or self.new_request_id()  # known before the task is sent
        holder = HandoffStream(_empty(), request_id)
        holder._events = self._stream(holder, dataclasses.replace(task, request_id=request_id))
        return holder

    async def _stream(self, holder: HandoffStream, task: Task) -> AsyncIterator[StreamEvent]:
        request = await self._submit(task)
        request_id = request.request_id
        out: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=1024)
        pump: asyncio.Task[None] | None = None
        retired: list[asyncio.Task[None]] = []
        """Pumps of runs no longer followed (the task was run again elsewhere)."""
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
                        async with asyncio.timeout(self._drain_grace):
                            kind, value = await out.get()
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
                            retired.append(pump)
                        pumped = holder.run_id = run_id
                        pump = asyncio.get_running_loop().create_task(follow(run_id), name=f"kiki-follow:{run_id}")
                elif kind == "reply" and value.get("kind") == "result":
                    result = holder.result = result_from(request.request_id, request.agent, value)
                elif kind == "followed" and value == pumped and result is None:
                    continue  # the run's events ended; its result follows
            finished = True
        finally:
            await stop_tasks((watcher, pump, *retired), timeout=_STOP_TIMEOUT)
            try:
                if not finished:
                    await self._abandon(request)
            finally:
                self.replies.remove(request.inbox)

    async def _follow_run(self, run_id: str, deadline: float) -> AsyncIterator[StreamEvent]:
        """Every event of ``run_id`` once, in order; retries while the run is not known here yet."""
        runtime = self.shared.runtime
        follow = self.follow or getattr(runtime, "follow", None)
        after = 0
        delay = 0.01
        while True:
            try:
                source = (
                    follow(run_id, after=after) if follow is not None else _local_follow(runtime, run_id, after=after)
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

    async def _submit(self, task: Task) -> _Request:
        shared = self.shared
        settings = shared.settings
        state = self._state()
        if state not in ("running", "draining"):
            raise HandoffError(f"cannot delegate: the Handoff is {state}")
        agent, input = task.agent, task.input
        if not await shared.serving_nodes(agent):
            raise NoAgentError(f"no node serves agent {agent!r}")
        if isinstance(input, str):
            input = {"messages": [{"role": "user", "content": input}]}
        payload = json.dumps(dump_payload(input), ensure_ascii=False, separators=(",", ":"))
        if len(payload.encode()) > settings.max_input_bytes:
            raise HandoffError(
                f"input for agent {agent!r} is {len(payload.encode())} bytes, "
                f"more than handoff.max_input_bytes ({settings.max_input_bytes})"
            )
        request_id = task.request_id or self.new_request_id()
        deadline = time.time() + (settings.timeout if task.timeout is None else task.timeout)
        fields = {
            "v": WIRE_VERSION,
            "request_id": request_id,
            "agent": agent,
            "input": payload,
            "deadline": f"{deadline:.3f}",
            "origin": shared.node,
        }
        extra = {
            "causation_id": task.causation_id,
            "thread_id": task.thread_id,
            "principal": task.principal,
            "relayed_into": task.relayed_into,
        }
        fields.update({name: value for name, value in extra.items() if value})
        if shared.runtime.bridge is not None:
            # The serving node need not watch for this request being given up: it
            # will hear of it through its bridge (see _abandon).
            fields["cancel"] = "bridge"
        queue = shared.work_queue(agent)
        reply_key = shared.keys.reply(request_id)
        inbox = self.replies.add(reply_key)  # before the task is sent: no reply can be missed
        try:
            async with shared.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(queue.stream, fields, maxlen=queue.maxlen, approximate=True)  # type: ignore[arg-type]
                self.replies.wake(pipe, inbox)
                replies = await pipe.execute()
        except BaseException:
            self.replies.remove(inbox)
            raise
        shared.stats["delegated"] += 1
        return _Request(request_id, agent, deadline, text_of(replies[0]), reply_key, inbox, task.principal)

    async def _next_reply(self, request: _Request) -> dict[str, str]:
        """The next entry of the request's reply stream; enforces pickup and overall timeouts."""
        shared = self.shared
        pickup_by = time.time() + shared.settings.pickup_timeout
        while True:
            now = time.time()
            if now >= request.deadline:
                raise HandoffTimeoutError(f"agent {request.agent!r} gave no result within the timeout")
            wait_until = request.deadline if request.run_id is not None else min(request.deadline, pickup_by)
            try:
                async with asyncio.timeout(max(0.001, wait_until - now)):
                    fields = await request.inbox.get()
            except TimeoutError:
                fields = None
            if fields is not None:
                if fields.get("kind") == "started":
                    request.run_id = fields.get("run_id") or request.run_id
                    request.node = fields.get("node") or request.node
                return fields
            if request.run_id is None and time.time() >= pickup_by:
                if not await shared.serving_nodes(request.agent):
                    with contextlib.suppress(Exception):
                        await shared.redis.xdel(shared.keys.work_stream(request.agent), request.entry_id)
                    raise NoAgentError(f"no node serves agent {request.agent!r} (nobody picked the task up)")
                pickup_by = time.time() + shared.settings.pickup_timeout

    async def _abandon(self, request: _Request) -> None:
        """The requester gives up: stop the remote run, or make sure the task never runs.

        The ``cancel`` key comes first: a node that picks the task up later (or
        again, after a reclaim) finishes it unrun. An unread task is also deleted.
        A run that started is cancelled through the bridge, like a cancel from any
        node; a run that started just now, whose ``started`` reply was not read
        yet, is found by reading the reply stream once more (the serving node
        checks the key right after writing ``started``, so one of the two sees the
        other). Without a bridge the serving node watches the key instead.
        """
        shared = self.shared
        try:
            async with shared.redis.pipeline(transaction=False) as pipe:
                pipe.set(shared.cancel_key(request.request_id), "1", ex=max(1, int(shared.settings.result_ttl)))
                if request.run_id is None:
                    pipe.xdel(shared.keys.work_stream(request.agent), request.entry_id)
                    pipe.xrange(request.reply_key, min=request.inbox.last_id, max="+")
                replies = await pipe.execute()
        except Exception as exc:
            logger.warning(
                "could not tell that request %s was given up (%s)", request.request_id, redact_text(str(exc))
            )
            replies = []
        if request.run_id is None:
            unread = request.inbox.drain()
            if len(replies) == 3:
                seen = request.inbox.last_id
                unread += [text_fields(raw) for entry_id, raw in replies[2] or () if text_of(entry_id) != seen]
            for fields in unread:
                if fields.get("kind") == "started" and fields.get("run_id"):
                    request.run_id = fields["run_id"]
        bridge = shared.runtime.bridge
        if request.run_id is None or bridge is None:
            return
        try:
            await bridge.cancel(request.run_id, request.principal, check_owner=False)
        except Exception as exc:  # the serving node still cancels it when its deadline passes
            logger.warning(
                "could not cancel run %s of request %s through the bridge (%s)",
                request.run_id,
                request.request_id,
                redact_text(str(exc)),
            )
