"""The serving side: advertise agents, consume their work streams, run each task once.

Each served agent has a consumer loop (one per node and agent) that reads new tasks
and reclaims those of dead nodes; every task runs in its own task through the
runtime's run manager. A heartbeat keeps the advertisement and the running tasks'
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
from dataclasses import dataclass, field
from typing import Any

from ..capture.handler import KikiCallbackHandler
from ..core.records import float_of
from ..core.tasks import stop_tasks
from ..errors import RunError, RunNotFoundError, UnknownGraphError
from ..redaction import redact_error, redact_text
from ..redis.workqueue import WorkItem, WorkQueue
from .common import _STOP_TIMEOUT, MAX_BLOCK, WIRE_VERSION, Retry, Shared, logger, reraise_if_cancelled
from .payload import encode_output, load_payload

__all__ = ["Server"]


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
    deadline: float
    """When its requester stops waiting (Unix s, the requester's clock)."""
    watch_cancel: bool
    """Whether the heartbeat watches the ``cancel`` key (the requester cannot reach this node's bridge)."""
    run_id: str | None = None
    cancelled: bool = False
    """Cancelled by this node on the requester's behalf (not by a shutdown)."""


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


def _float(value: str | None) -> float:
    try:
        return float_of(value) if value else float("inf")
    except ValueError:
        return float("inf")


class Server:
    """This node's served agents, their consumer loops and the tasks running here."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.accepting = False
        """Taking new tasks and advertising (from :meth:`start` to :meth:`stop`)."""
        self._served: dict[str, _Served] = {}
        self._heartbeat: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self.accepting = True
        self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_forever(), name="kiki-handoff-beat")

    async def stop(self) -> None:
        """Stop taking new tasks and stop advertising; tasks already running go on."""
        self.accepting = False
        served = list(self._served.values())
        await stop_tasks((s.task for s in served), timeout=_STOP_TIMEOUT)
        with contextlib.suppress(Exception):
            await self._unadvertise([s.agent for s in served])

    async def close(self) -> None:
        """Wait for the tasks running here, then stop the heartbeat."""
        running = [t for s in self._served.values() for t in s.running]
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        await stop_tasks((self._heartbeat,), timeout=_STOP_TIMEOUT)

    # -- agents -----------------------------------------------------------------------------
    async def serve(self, agent: str, graph: str) -> None:
        self.shared.runtime.graphs.get(graph)  # fails fast on a typo
        if agent in self._served:
            return
        served = self._served[agent] = _Served(agent, graph, self.shared.work_queue(agent))
        try:
            await self._prepare(served)
        except Exception as exc:  # Redis is down: the consumer loop keeps trying
            logger.warning("agent %r is not served yet (%s); retrying", agent, redact_text(str(exc)))
        served.task = asyncio.get_running_loop().create_task(self._consume(served), name=f"kiki-handoff:{agent}")
        logger.info("node %s serves agent %r (graph %r)", self.shared.node, agent, graph)

    def serving(self) -> list[str]:
        return sorted(self._served)

    async def _prepare(self, served: _Served) -> None:
        await served.queue.ensure_group()
        await self._advertise([served.agent])
        served.ready = True

    async def _advertise(self, agents: list[str]) -> None:
        if not agents:
            return
        shared = self.shared
        ttl = shared.settings.advertise_ttl
        now = time.time()
        async with shared.redis.pipeline(transaction=False) as pipe:
            for agent in agents:
                key = shared.keys.agents(agent)
                pipe.zadd(key, {shared.node: now + ttl})
                pipe.zremrangebyscore(key, "-inf", now)
                pipe.expire(key, max(1, int(ttl * 3)))
            await pipe.execute()

    async def _unadvertise(self, agents: list[str]) -> None:
        if agents:
            async with self.shared.redis.pipeline(transaction=False) as pipe:
                for agent in agents:
                    pipe.zrem(self.shared.keys.agents(agent), self.shared.node)
                await pipe.execute()

    # -- heartbeat --------------------------------------------------------------------------
    async def _heartbeat_forever(self) -> None:
        retry = Retry("handoff heartbeat", self.shared.stats)
        while True:
            await asyncio.sleep(self.shared.settings.heartbeat)
            try:
                await self._beat()
                reraise_if_cancelled()
                retry.ok()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await retry.failed(exc)

    async def _beat(self) -> None:
        shared = self.shared
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
            async with shared.redis.pipeline(transaction=False) as pipe:
                for task in active:
                    pipe.pexpire(task.marker, lease_ms)
                for task in watched:
                    pipe.exists(shared.cancel_key(task.request_id))
                replies = await pipe.execute()
            for task, wanted in zip(watched, replies[len(active) :], strict=True):
                if wanted:
                    self._cancel_run(task, "it was abandoned by its requester")

    def _cancel_run(self, active: _Active, why: str) -> None:
        """Cancel the run of ``active`` on its requester's behalf."""
        if active.cancelled or active.run_id is None:
            return
        active.cancelled = True
        logger.info("cancelling run %s of request %s: %s", active.run_id, active.request_id, why)
        with contextlib.suppress(RunNotFoundError):
            self.shared.runtime.runs.cancel(active.run_id)

    def _lease_ms(self) -> int:
        # Shorter than claim_idle: a dead node's lease is gone by the time its task is reclaimed.
        settings = self.shared.settings
        idle = settings.claim_idle
        return max(100, int(max(idle - settings.heartbeat, idle * 0.8) * 1000))

    # -- consuming --------------------------------------------------------------------------
    async def _consume(self, served: _Served) -> None:
        """Read new tasks, reclaim idle ones, run each in its own task; never dies on Redis errors."""
        settings = self.shared.settings
        reclaim_every = max(settings.claim_idle / 4, 0.05)
        next_reclaim = 0.0
        retry = Retry(f"reading tasks of agent {served.agent!r}", self.shared.stats, first=0.1, cap=5.0)
        while True:
            try:
                if not served.ready:
                    await self._prepare(served)
                free = self.shared.concurrency - len(served.running)
                if free <= 0:
                    await asyncio.wait(served.running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                items: list[WorkItem] = []
                if time.monotonic() >= next_reclaim:
                    next_reclaim = time.monotonic() + reclaim_every
                    items = await served.queue.reclaim(settings.claim_idle, count=free)
                    self.shared.stats["reclaimed"] += len(items)
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

    async def _handle(self, served: _Served, item: WorkItem) -> None:
        try:
            await self._handle_item(served, item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis trouble mid-task: it stays pending and is reclaimed later
            self.shared.stats["redis_errors"] += 1
            logger.warning("task %s of agent %r failed (%s); it will be retried", item.id, served.agent, exc)
        finally:
            served.active.pop(item.id, None)

    # -- running one task -------------------------------------------------------------------
    async def _handle_item(self, served: _Served, item: WorkItem) -> None:
        shared = self.shared
        redis = shared.redis
        fields = item.fields
        request_id = fields.get("request_id", "")
        settings = shared.settings
        if fields.get("v") != WIRE_VERSION or not request_id or fields.get("agent") != served.agent:
            await self._bury(served, item, None, "malformed task (unknown version or missing fields)")
            return
        reply_key = shared.keys.reply(request_id)
        deadline = _float(fields.get("deadline"))
        if item.deliveries > settings.max_attempts:
            await self._bury(
                served, item, reply_key, f"gave up after {item.deliveries - 1} deliveries (handoff.max_attempts)"
            )
            return
        marker = shared.keys.done_marker(request_id)
        owned = await redis.set(marker, f"running {shared.node}", nx=True, px=self._lease_ms())
        if not owned:
            current = await redis.get(marker)
            if current is not None and (current.decode() if isinstance(current, bytes) else str(current)).startswith(
                "done"
            ):
                shared.stats["duplicates"] += 1
                await served.queue.ack(item.id)
            # Otherwise a live node runs it: its next heartbeat takes the task back.
            return
        # A requester with a bridge cancels the run through it (so does one on this node).
        watch_cancel = fields.get("cancel") != "bridge" or shared.runtime.bridge is None
        active = served.active[item.id] = _Active(item, served.agent, request_id, marker, deadline, watch_cancel)
        if await redis.exists(shared.cancel_key(request_id)) or time.time() > deadline:
            await self._finish(served, active, {"status": "expired", "error": "the requester stopped waiting"})
            return
        try:
            payload = fields.get("input", "null")
            if len(payload) > settings.max_input_bytes:
                raise ValueError(f"input is {len(payload)} bytes, more than handoff.max_input_bytes")
            graph_input = load_payload(json.loads(payload))
        except Exception as exc:
            await redis.delete(marker)
            await self._bury(served, item, reply_key, f"undecodable input ({type(exc).__name__})")
            return
        causation_id = fields.get("causation_id") or None
        handlers: list[_ResultHandler] = []

        def make_handler(*args: Any, **kwargs: Any) -> KikiCallbackHandler:
            handler = _ResultHandler(*args, causation_id=causation_id, **kwargs)
            handlers.append(handler)
            return handler

        runs = shared.runtime.runs
        try:
            handle = runs.start(
                served.graph,
                graph_input,
                thread_id=fields.get("thread_id") or None,
                metadata={"kiki_request_id": request_id, "kiki_agent": served.agent},
                principal=fields.get("principal") or None,
                handler_factory=make_handler,
                relayed_into=fields.get("relayed_into") or None,
            )
        except (UnknownGraphError, RunNotFoundError) as exc:
            await self._finish(served, active, {"status": "error", "error": str(exc)})
            return
        except RunError as exc:  # busy or shutting down: leave it for another try
            await redis.delete(marker)
            logger.info("task %s of agent %r not started here (%s)", item.id, served.agent, exc)
            return
        active.run_id = handle.run_id
        shared.stats["handled"] += 1
        started = {"kind": "started", "run_id": handle.run_id, "node": shared.node, "attempt": str(item.deliveries)}
        if await self._reply(reply_key, started, check_cancel=request_id):
            # Given up between the check above and now, before reading ``started``.
            self._cancel_run(active, "it was abandoned by its requester")
        await self._wait_run(handle.task, active)
        status = handle.record.status
        handler = handlers[0] if handlers else None
        if (
            status == "cancelled"
            and not active.cancelled
            and runs.closing
            and not await redis.exists(shared.cancel_key(request_id))
        ):
            # This node is shutting down, not the requester: let another node run it.
            await redis.delete(marker)
            await served.queue.release([item.id], settings.claim_idle)
            shared.stats["released"] += 1
            return
        result: dict[str, str] = {"status": status if status not in ("running", "pending") else "error"}
        result["run_id"] = handle.run_id
        if handler is not None:
            if handler.error:
                result["error"] = handler.error
            result.update(encode_output(handler.output, settings.max_output_bytes))
        await self._finish(served, active, result)

    async def _finish(self, served: _Served, active: _Active, result: dict[str, str]) -> None:
        shared = self.shared
        result = {"kind": "result", "node": shared.node, **result}
        key = shared.keys.reply(active.request_id)
        ttl = max(1, int(shared.settings.result_ttl))
        async with shared.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, result)  # type: ignore[arg-type]
            pipe.expire(key, ttl)
            pipe.set(active.marker, f"done {result.get('run_id', '')}".rstrip(), ex=ttl)
            await pipe.execute()
        await served.queue.ack(active.item.id)

    async def _bury(self, served: _Served, item: WorkItem, reply_key: str | None, reason: str) -> None:
        await served.queue.bury(item, reason)
        self.shared.stats["dead_lettered"] += 1
        logger.warning("task %s of agent %r moved to the dead-letter stream: %s", item.id, served.agent, reason)
        if reply_key is not None:
            await self._reply(reply_key, {"kind": "result", "status": "dead_letter", "error": reason})

    async def _reply(self, key: str, fields: dict[str, str], *, check_cancel: str | None = None) -> bool:
        """Append to a reply stream; with ``check_cancel``, also tell whether that request was given up."""
        async with self.shared.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, fields)  # type: ignore[arg-type]
            pipe.expire(key, max(1, int(self.shared.settings.result_ttl)))
            if check_cancel is not None:
                pipe.exists(self.shared.cancel_key(check_cancel))
            replies = await pipe.execute()
        return check_cancel is not None and bool(replies[2])

    async def _wait_run(self, run: asyncio.Task[Any], active: _Active) -> None:
        """Wait for the run to end; cancel it once its requester's deadline has passed.

        The requester cancels it itself when it gives up; this covers a requester
        that could not (it died, or its cancel got lost). The grace absorbs clock
        differences between the nodes.
        """
        grace = max(1.0, self.shared.settings.heartbeat)
        remaining = active.deadline + grace - time.time()
        if remaining == float("inf"):
            await asyncio.wait({run})
            return
        done, _ = await asyncio.wait({run}, timeout=max(0.0, remaining))
        if not done:
            self._cancel_run(active, "its requester's deadline passed")
            await asyncio.wait({run})
