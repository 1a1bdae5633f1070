"""The serving side: advertise agents, consume their work streams, run each task once.

Each served agent has a consumer loop (one per node and agent) that reads new tasks
and reclaims those of dead nodes; every task runs in its own task through the
node's run manager. A heartbeat keeps the advertisement and the running tasks'
claims alive. A task that cannot be run moves to the dead-letter stream.

A run whose requester gave up is cancelled through this node's bridge by the
requester itself; this side only watches the ``cancel`` key where that cannot
work (no bridge on either end), and cancels a run whose task deadline passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING, Any

from ..capture.handler import KikiCallbackHandler
from ..core.records import text_of
from ..core.tasks import stop_tasks
from ..errors import InvalidArgumentError, RunError, RunNotFoundError, UnknownGraphError
from ..log import bind
from ..redaction import redact_text
from ..redis.workqueue import WorkItem
from .common import MAX_BLOCK, STOP_TIMEOUT, WIRE_VERSION, HandoffContext, Retry, logger, reraise_if_cancelled
from .payload import encode_output, load_payload
from .served import ActiveTask, ResultHandler, ServedAgent, deadline_of

if TYPE_CHECKING:
    from ..core.manager import RunHandle

__all__ = ["Server"]


class Server:
    """This node's served agents, their consumer loops and the tasks running here."""

    def __init__(self, context: HandoffContext) -> None:
        self.context = context
        self.accepting = False
        """Taking new tasks and advertising (from :meth:`start` to :meth:`stop`)."""
        self._served: dict[str, ServedAgent] = {}
        self._heartbeat: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self.accepting = True
        self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_forever(), name="kiki-handoff-beat")

    async def stop(self) -> None:
        """Stop taking new tasks and stop advertising; tasks already running go on."""
        self.accepting = False
        served = list(self._served.values())
        await stop_tasks((s.task for s in served), timeout=STOP_TIMEOUT)
        with contextlib.suppress(Exception):
            await self._unadvertise([s.agent for s in served])

    async def close(self) -> None:
        """Wait for the tasks running here, then stop the heartbeat."""
        running = [t for s in self._served.values() for t in s.running]
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        await stop_tasks((self._heartbeat,), timeout=STOP_TIMEOUT)

    # -- agents -----------------------------------------------------------------------------
    async def serve(self, agent: str, graph: str) -> None:
        self.context.runs.graphs.get(graph)  # fails fast on a typo
        if agent in self._served:
            return
        served = self._served[agent] = ServedAgent(agent, graph, self.context.work_queue(agent))
        try:
            await self._prepare(served)
        except Exception as exc:  # Redis is down: the consumer loop keeps trying
            logger.warning("agent %r is not served yet (%s); retrying", agent, redact_text(str(exc)))
        served.task = asyncio.get_running_loop().create_task(self._consume(served), name=f"kiki-handoff:{agent}")
        logger.info("node %s serves agent %r (graph %r)", self.context.node, agent, graph)

    def serving(self) -> list[str]:
        return sorted(self._served)

    async def _prepare(self, served: ServedAgent) -> None:
        await served.queue.ensure_group()
        await self._advertise([served.agent])
        served.ready = True

    async def _advertise(self, agents: list[str]) -> None:
        if not agents:
            return
        context = self.context
        ttl = context.settings.advertise_ttl
        now = time.time()
        async with context.redis.pipeline(transaction=False) as pipe:
            for agent in agents:
                key = context.keys.agents(agent)
                pipe.zadd(key, {context.node: now + ttl})
                pipe.zremrangebyscore(key, "-inf", now)
                pipe.expire(key, max(1, int(ttl * 3)))
            await pipe.execute()

    async def _unadvertise(self, agents: list[str]) -> None:
        if agents:
            async with self.context.redis.pipeline(transaction=False) as pipe:
                for agent in agents:
                    pipe.zrem(self.context.keys.agents(agent), self.context.node)
                await pipe.execute()

    # -- heartbeat --------------------------------------------------------------------------
    async def _heartbeat_forever(self) -> None:
        retry = Retry("handoff heartbeat", self.context.stats)
        while True:
            await asyncio.sleep(self.context.settings.heartbeat)
            try:
                await self._beat()
                reraise_if_cancelled()
                retry.ok()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await retry.failed(exc)

    async def _beat(self) -> None:
        context = self.context
        if self.accepting:
            await self._advertise(list(self._served))
        lease_ms = self._lease_ms()
        for served in self._served.values():
            active = list(served.active.values())
            if not active:
                continue
            await served.queue.touch([a.item.id for a in active])
            # Requesters with a bridge cancel through it; only the others are watched here.
            watched = [a for a in active if a.watch_cancel and not a.cancelled and a.run_id is not None]
            async with context.redis.pipeline(transaction=False) as pipe:
                for task in active:
                    pipe.pexpire(task.marker, lease_ms)
                for task in watched:
                    pipe.exists(context.cancel_key(task.request_id))
                replies = await pipe.execute()
            for task, wanted in zip(watched, replies[len(active) :], strict=True):
                if wanted:
                    self._cancel_run(task, "it was abandoned by its requester")

    def _cancel_run(self, active: ActiveTask, why: str) -> None:
        """Cancel the run of ``active`` on its requester's behalf."""
        if active.cancelled or active.run_id is None:
            return
        active.cancelled = True
        logger.info(
            "cancelling run %s of request %s: %s",
            active.run_id,
            active.request_id,
            why,
            extra={"run_id": active.run_id, "agent": active.agent},
        )
        with contextlib.suppress(RunNotFoundError):
            self.context.runs.cancel(active.run_id)

    def _lease_ms(self) -> int:
        # Shorter than claim_idle: a dead node's lease is gone by the time its task is reclaimed.
        settings = self.context.settings
        idle = settings.claim_idle
        return max(100, int(max(idle - settings.heartbeat, idle * 0.8) * 1000))

    # -- consuming --------------------------------------------------------------------------
    async def _consume(self, served: ServedAgent) -> None:
        """Read new tasks, reclaim idle ones, run each in its own task; never dies on Redis errors."""
        settings = self.context.settings
        reclaim_every = max(settings.claim_idle / 4, 0.05)
        next_reclaim = 0.0
        retry = Retry(f"reading tasks of agent {served.agent!r}", self.context.stats, first=0.1, cap=5.0)
        while True:
            try:
                if not served.ready:
                    await self._prepare(served)
                free = self.context.concurrency - len(served.running)
                if free <= 0:
                    await asyncio.wait(served.running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                items: list[WorkItem] = []
                if time.monotonic() >= next_reclaim:
                    next_reclaim = time.monotonic() + reclaim_every
                    items = await served.queue.reclaim(settings.claim_idle, count=free)
                    self.context.stats["reclaimed"] += len(items)
                if not items:
                    block = min(settings.heartbeat, MAX_BLOCK, max(next_reclaim - time.monotonic(), 0.001))
                    items = await served.queue.read(free, block=block)
                reraise_if_cancelled()
                retry.ok()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reraise_if_cancelled()
                if not self.accepting:
                    return
                served.ready = False  # e.g. NOGROUP after Redis lost its data
                await retry.failed(exc)
                continue
            for item in items:
                if item.id in served.active:
                    continue  # ours already (touched back after a reclaim elsewhere)
                task = asyncio.get_running_loop().create_task(self._handle(served, item), name=f"kiki-task:{item.id}")
                served.running.add(task)
                task.add_done_callback(served.running.discard)

    async def _handle(self, served: ServedAgent, item: WorkItem) -> None:
        # The task's own context: what it logs, and the run it starts, carry the agent.
        with bind(agent=served.agent, thread_id=item.fields.get("thread_id") or None):
            try:
                await self._handle_item(served, item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis trouble mid-task: it stays pending and is reclaimed later
                self.context.stats["redis_errors"] += 1
                logger.warning("task %s of agent %r failed (%s); it will be retried", item.id, served.agent, exc)
            finally:
                served.active.pop(item.id, None)

    # -- running one task -------------------------------------------------------------------
    async def _handle_item(self, served: ServedAgent, item: WorkItem) -> None:
        active = await self._claim(served, item)
        if active is None:
            return
        context = self.context
        request_id = active.request_id
        reply_key = context.keys.reply(request_id)
        if await context.redis.exists(context.cancel_key(request_id)) or time.time() > active.deadline:
            await self._finish(served, active, {"status": "expired", "error": "the requester stopped waiting"})
            return
        try:
            payload = item.fields.get("input", "null")
            if len(payload) > context.settings.max_input_bytes:
                raise InvalidArgumentError(f"input is {len(payload)} bytes, more than handoff.max_input_bytes")
            graph_input = load_payload(json.loads(payload))
        except Exception as exc:
            await context.redis.delete(active.marker)
            await self._bury(served, item, reply_key, f"undecodable input ({type(exc).__name__})")
            return
        run = await self._start_run(served, active, graph_input)
        if run is None:
            return
        handle, handler = run
        started = {"kind": "started", "run_id": handle.run_id, "node": context.node, "attempt": str(item.deliveries)}
        if await self._reply(reply_key, started, check_cancel=request_id):
            # Given up between the check above and now, before reading ``started``.
            self._cancel_run(active, "it was abandoned by its requester")
        await self._wait_run(handle.task, active)
        await self._report(served, active, handle, handler)

    async def _claim(self, served: ServedAgent, item: WorkItem) -> ActiveTask | None:
        """The task, once this node holds its done marker; ``None``: buried, done before, or another node's."""
        context = self.context
        fields = item.fields
        request_id = fields.get("request_id", "")
        if fields.get("v") != WIRE_VERSION or not request_id or fields.get("agent") != served.agent:
            await self._bury(served, item, None, "malformed task (unknown version or missing fields)")
            return None
        if item.deliveries > context.settings.max_attempts:
            reason = f"gave up after {item.deliveries - 1} deliveries (handoff.max_attempts)"
            await self._bury(served, item, context.keys.reply(request_id), reason)
            return None
        marker = context.keys.done_marker(request_id)
        if not await context.redis.set(marker, f"running {context.node}", nx=True, px=self._lease_ms()):
            current = await context.redis.get(marker)
            if current is not None and text_of(current).startswith("done"):
                context.stats["duplicates"] += 1
                await served.queue.ack(item.id)
            # Otherwise a live node runs it: its next heartbeat takes the task back.
            return None
        # A requester with a bridge cancels the run through it (so does one on this node).
        watch_cancel = fields.get("cancel") != "bridge" or context.bridge is None
        deadline = deadline_of(fields.get("deadline"))
        active = served.active[item.id] = ActiveTask(item, served.agent, request_id, marker, deadline, watch_cancel)
        return active

    async def _start_run(
        self, served: ServedAgent, active: ActiveTask, graph_input: Any
    ) -> tuple[RunHandle, ResultHandler | None] | None:
        """Start the task's run; returns it and its handler, or ``None`` if it did not start."""
        fields = active.item.fields
        causation_id = fields.get("causation_id") or None
        handlers: list[ResultHandler] = []

        def make_handler(*args: Any, **kwargs: Any) -> KikiCallbackHandler:
            handler = ResultHandler(*args, causation_id=causation_id, **kwargs)
            handlers.append(handler)
            return handler

        try:
            handle = self.context.runs.start(
                served.graph,
                graph_input,
                thread_id=fields.get("thread_id") or None,
                metadata={"kiki_request_id": active.request_id, "kiki_agent": served.agent},
                principal=fields.get("principal") or None,
                handler_factory=make_handler,
                relayed_into=fields.get("relayed_into") or None,
                checkpointed=False,  # the caller's thread: its conversation is the caller's graph's
            )
        except (UnknownGraphError, RunNotFoundError) as exc:
            await self._finish(served, active, {"status": "error", "error": str(exc)})
            return None
        except RunError as exc:  # busy or shutting down: leave it for another try
            await self.context.redis.delete(active.marker)
            logger.info("task %s of agent %r not started here (%s)", active.item.id, served.agent, exc)
            return None
        active.run_id = handle.run_id
        self.context.stats["handled"] += 1
        return handle, handlers[0] if handlers else None  # made as the run started

    async def _report(
        self, served: ServedAgent, active: ActiveTask, handle: RunHandle, handler: ResultHandler | None
    ) -> None:
        """Reply with the run's outcome, or hand the task to another node if this one is shutting down."""
        context = self.context
        status = handle.record.status
        if (
            status == "cancelled"
            and not active.cancelled
            and context.runs.closing
            and not await context.redis.exists(context.cancel_key(active.request_id))
        ):
            # This node is shutting down, not the requester: let another node run it.
            await context.redis.delete(active.marker)
            await served.queue.release([active.item.id], context.settings.claim_idle)
            context.stats["released"] += 1
            return
        result: dict[str, str] = {"status": status if status not in ("running", "pending") else "error"}
        result["run_id"] = handle.run_id
        if handler is not None:
            if handler.error:
                result["error"] = handler.error
            result.update(encode_output(handler.output, context.settings.max_output_bytes))
        await self._finish(served, active, result)

    async def _finish(self, served: ServedAgent, active: ActiveTask, result: dict[str, str]) -> None:
        context = self.context
        result = {"kind": "result", "node": context.node, **result}
        key = context.keys.reply(active.request_id)
        ttl = max(1, int(context.settings.result_ttl))
        async with context.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, result)  # type: ignore[arg-type]
            pipe.expire(key, ttl)
            pipe.set(active.marker, f"done {result.get('run_id', '')}".rstrip(), ex=ttl)
            await pipe.execute()
        await served.queue.ack(active.item.id)

    async def _bury(self, served: ServedAgent, item: WorkItem, reply_key: str | None, reason: str) -> None:
        await served.queue.bury(item, reason)
        self.context.stats["dead_lettered"] += 1
        logger.warning("task %s of agent %r moved to the dead-letter stream: %s", item.id, served.agent, reason)
        if reply_key is not None:
            await self._reply(reply_key, {"kind": "result", "status": "dead_letter", "error": reason})

    async def _reply(self, key: str, fields: dict[str, str], *, check_cancel: str | None = None) -> bool:
        """Append to a reply stream; with ``check_cancel``, also tell whether that request was given up."""
        async with self.context.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, fields)  # type: ignore[arg-type]
            pipe.expire(key, max(1, int(self.context.settings.result_ttl)))
            if check_cancel is not None:
                pipe.exists(self.context.cancel_key(check_cancel))
            replies = await pipe.execute()
        return check_cancel is not None and bool(replies[2])

    async def _wait_run(self, run: asyncio.Task[Any], active: ActiveTask) -> None:
        """Wait for the run to end; cancel it once its requester's deadline has passed.

        The requester cancels it itself when it gives up; this covers a requester
        that could not (it died, or its cancel got lost). The grace absorbs clock
        differences between the nodes.
        """
        grace = max(1.0, self.context.settings.heartbeat)
        remaining = active.deadline + grace - time.time()
        if remaining == float("inf"):
            await asyncio.wait({run})
            return
        done, _ = await asyncio.wait({run}, timeout=max(0.0, remaining))
        if not done:
            self._cancel_run(active, "its requester's deadline passed")
            await asyncio.wait({run})
