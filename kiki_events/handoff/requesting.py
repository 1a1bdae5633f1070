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
from typing import Any

from ..core.records import text_fields, text_of
from ..errors import HandoffError, HandoffTimeoutError, NoAgentError
from ..events import StreamEvent
from ..redaction import redact_text
from .common import WIRE_VERSION, Follow, HandoffContext, logger
from .payload import dump_payload
from .replies import Inbox, ReplyReader, wake_key
from .results import HandoffResult, result_from
from .streaming import HandoffStream, Relay, empty_events, follow_run

__all__ = ["Follow", "HandoffStream", "Requester", "Task"]


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


class Requester:
    """Hands tasks to the agents other nodes serve and waits for their outcome."""

    def __init__(self, context: HandoffContext, state: Callable[[], str]) -> None:
        self.context = context
        self._state = state
        self._drain_grace = 3.0
        self.replies = ReplyReader(context.redis, wake_key(context.keys.prefix, context.node), stats=context.stats)
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
        holder = HandoffStream(empty_events(), request_id)
        holder._events = self._stream(holder, dataclasses.replace(task, request_id=request_id))
        return holder

    async def _stream(self, holder: HandoffStream, task: Task) -> AsyncIterator[StreamEvent]:
        request = await self._submit(task)
        relay = Relay(
            holder,
            lambda: self._next_reply(request),
            lambda run_id: self._follow_run(run_id, request.deadline),
            lambda fields: result_from(request.request_id, request.agent, fields),
            self._drain_grace,
        )
        finished = False
        relay.start()
        try:
            while (event := await relay.next_event()) is not None:
                yield event
            finished = True
        finally:
            await relay.stop()
            try:
                if not finished:
                    await self._abandon(request)
            finally:
                self.replies.remove(request.inbox)

    def _follow_run(self, run_id: str, deadline: float) -> AsyncIterator[StreamEvent]:
        return follow_run(self.context.follow, run_id, deadline)

    async def _submit(self, task: Task) -> _Request:
        context = self.context
        settings = context.settings
        state = self._state()
        if state not in ("running", "draining"):
            raise HandoffError(f"cannot delegate: the Handoff is {state}")
        agent, input = task.agent, task.input
        if not await context.serving_nodes(agent):
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
            "origin": context.node,
        }
        extra = {
            "causation_id": task.causation_id,
            "thread_id": task.thread_id,
            "principal": task.principal,
            "relayed_into": task.relayed_into,
        }
        fields.update({name: value for name, value in extra.items() if value})
        if context.bridge is not None:
            # The serving node need not watch for this request being given up: it
            # will hear of it through its bridge (see _abandon).
            fields["cancel"] = "bridge"
        queue = context.work_queue(agent)
        reply_key = context.keys.reply(request_id)
        inbox = self.replies.add(reply_key)  # before the task is sent: no reply can be missed
        try:
            async with context.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(queue.stream, fields, maxlen=queue.maxlen, approximate=True)  # type: ignore[arg-type]
                self.replies.wake(pipe, inbox)
                replies = await pipe.execute()
        except BaseException:
            self.replies.remove(inbox)
            raise
        context.stats["delegated"] += 1
        return _Request(request_id, agent, deadline, text_of(replies[0]), reply_key, inbox, task.principal)

    async def _next_reply(self, request: _Request) -> dict[str, str]:
        """The next entry of the request's reply stream; enforces pickup and overall timeouts."""
        context = self.context
        pickup_by = time.time() + context.settings.pickup_timeout
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
                if not await context.serving_nodes(request.agent):
                    with contextlib.suppress(Exception):
                        await context.redis.xdel(context.keys.work_stream(request.agent), request.entry_id)
                    raise NoAgentError(f"no node serves agent {request.agent!r} (nobody picked the task up)")
                pickup_by = time.time() + context.settings.pickup_timeout

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
        context = self.context
        try:
            async with context.redis.pipeline(transaction=False) as pipe:
                pipe.set(context.cancel_key(request.request_id), "1", ex=max(1, int(context.settings.result_ttl)))
                if request.run_id is None:
                    pipe.xdel(context.keys.work_stream(request.agent), request.entry_id)
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
        bridge = context.bridge
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
