"""Control: requests between nodes (cancel a run, replay a run, or your own operations).

Handlers are registered per operation (:meth:`Control.add_handler`), may be sync
or async, and never propagate their exceptions: they are logged and counted. The
built-in ones cancel a run of this node at another node's request and answer
replay requests from this node's replay logs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..codec import encode
from ..log import get_logger
from ..transports.base import ControlMessage, RunInfo
from .context import BridgeContext
from .follow import Following
from .repair import OP_REPLAY

__all__ = ["OP_CANCEL", "Control", "ControlHandler"]

logger = get_logger("kiki_events.bridge")

ControlHandler = Callable[[ControlMessage], Awaitable[object] | object]
"""Handles a control message; may be async. Exceptions are logged, never propagated."""

OP_CANCEL = "cancel"


def _count(value: object) -> bool:
    """A non-negative int from a control message (never a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class Control:
    """Sends control messages and dispatches the ones received to their handlers.

    ``following`` finds the runs of other nodes that :meth:`cancel` asks to cancel.
    """

    def __init__(self, ctx: BridgeContext, following: Following) -> None:
        self.ctx = ctx
        self.following = following
        self._handlers: dict[str, list[ControlHandler]] = {
            OP_CANCEL: [self._handle_cancel],
            OP_REPLAY: [self._handle_replay],
        }

    def add_handler(self, op: str, handler: ControlHandler) -> Callable[[], None]:
        """See :meth:`Bridge.add_control_handler <kiki_events.bridge.Bridge.add_control_handler>`."""
        self._handlers.setdefault(op, []).append(handler)

        def remove() -> None:
            handlers = self._handlers.get(op, [])
            if handler in handlers:
                handlers.remove(handler)

        return remove

    async def send(self, op: str, payload: Mapping[str, Any] | None, node: str | None) -> None:
        """See :meth:`Bridge.send_control <kiki_events.bridge.Bridge.send_control>`."""
        await self.ctx.send_control(op, payload, node)

    def received(self, message: ControlMessage) -> None:
        """Run the handlers of ``message.op`` (async ones in supervised tasks)."""
        ctx = self.ctx
        ctx.stats.control_in += 1
        for handler in list(self._handlers.get(message.op, ())):
            try:
                result = handler(message)
            except Exception:
                self._failed(message)
                continue
            if asyncio.iscoroutine(result):
                ctx.spawn(self._guard(result, message), f"kiki-bridge-control:{message.op}")

    async def _guard(self, result: Awaitable[object], message: ControlMessage) -> None:
        try:
            await result
        except Exception:
            self._failed(message)

    def _failed(self, message: ControlMessage) -> None:
        self.ctx.stats.control_errors += 1
        logger.exception("handling control message %r from %s failed", message.op, message.sender)

    async def cancel(self, run_id: str, principal: str | None, *, check_owner: bool) -> RunInfo:
        """See :meth:`Bridge.cancel <kiki_events.bridge.Bridge.cancel>`."""
        ctx = self.ctx
        store = ctx.store
        info = await self.following.run_info(run_id, principal, check_owner=check_owner, wait=0.2)
        record = store.peek(run_id)
        if record is not None and record.ended and not info.ended:
            # Its done reached this node before the registry heard of it.
            info = dataclasses.replace(info, status=record.status, last_seq=record.log.last_seq)
        if info.ended:
            return info
        if info.node == ctx.node:
            record = store.peek(run_id)
            if record is not None:
                ctx.runs.cancel(run_id, record.principal)
            return info
        await self.send(OP_CANCEL, {"run_id": run_id}, info.node)
        return info

    def _handle_cancel(self, message: ControlMessage) -> None:
        run_id = message.payload.get("run_id")
        if not isinstance(run_id, str):
            return
        ctx = self.ctx
        record = ctx.store.peek(run_id)
        if record is not None and ctx.runs.is_local(run_id) and not record.ended:
            logger.info("cancelling run %s at the request of node %s", run_id, message.sender, extra={"run_id": run_id})
            ctx.runs.cancel(run_id, record.principal)

    async def _handle_replay(self, message: ControlMessage) -> None:
        payload = message.payload
        run_id = payload.get("run_id")
        after = payload.get("after", 0)
        until = payload.get("until")
        if not isinstance(run_id, str) or not _count(after) or (until is not None and not _count(until)):
            return
        ctx = self.ctx
        record = ctx.store.peek(run_id)
        if record is None or not ctx.is_local(record):
            await ctx.transport.send_replay(message.sender, run_id, [], gone=True)
            return
        log = record.log
        limit = log.capacity + 1024 if until is None else max(until - after, 0)
        frames, first = log.read(after, limit)
        events = [encode(frame.event) for frame in frames if until is None or frame.seq <= until]
        await ctx.transport.send_replay(message.sender, run_id, events, first=first)
