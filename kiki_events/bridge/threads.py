"""Thread watches: following every run other nodes start on a thread.

While a thread is watched (an SSE thread stream, a bus subscription to the
thread), this node listens for the thread's run announcements and follows each
run of the thread's owner started elsewhere, including the ones the registry
already lists. Runs of someone else are never mixed in, and neither are delegate
runs another run relays (``relayed_into``): the thread shows them inside that run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import RunNotFoundError, TransportError
from ..transports.base import RunInfo
from ..transports.wire import Message
from .context import BridgeContext
from .follow import Following
from .lease import NO_LEASE, Lease
from .remote import READY_TIMEOUT

if TYPE_CHECKING:
    from ..core.threads import ThreadRecord

__all__ = ["ThreadWatches"]


@dataclass(eq=False)
class _ThreadWatch:
    thread_id: str
    principal: str | None
    leases: int = 0
    keep_until: float = 0.0
    watching: bool = False
    runs: dict[str, Lease] = field(default_factory=dict)
    """A lease on each of its remote runs."""
    task: asyncio.Task[None] | None = None


class ThreadWatches:
    """The threads this node watches; ``following`` follows their remote runs."""

    def __init__(self, ctx: BridgeContext, following: Following) -> None:
        self.ctx = ctx
        self.following = following
        self.watches: dict[str, _ThreadWatch] = {}

    async def open_thread(self, thread_id: str, principal: str | None) -> ThreadRecord:
        """See :meth:`Bridge.open_thread <kiki_events.bridge.Bridge.open_thread>`."""
        ctx = self.ctx
        store = ctx.store
        transport = ctx.transport
        missing = RunNotFoundError(f"thread {thread_id!r} not found")
        known = store.owners.get(thread_id)
        if known is not None and known.principal != principal:
            raise missing
        thread = store.peek_thread(thread_id)
        try:
            owner = await transport.thread_owner(thread_id)
            infos = await transport.thread_runs(thread_id)
        except TransportError:
            if thread is None:
                raise
            if not store.owns(thread_id, principal):
                raise missing from None
            owner, infos = None, []
        if owner is not None:
            # The cluster decided whose thread it is: anyone else's runs are never mixed in.
            store.decide_owner(thread_id, owner.principal)
            if owner.principal != principal:
                raise missing
            infos = [info for info in infos if info.principal == principal]
        elif any(info.principal != principal for info in infos) or not store.owns(thread_id, principal):
            raise missing  # unclaimed (runs of older nodes): whoever ran on it owns it
        if thread is None and not infos:
            raise missing
        thread = store.adopt_thread(thread_id, principal)
        following = self.following
        loop = asyncio.get_running_loop()
        for info in infos:
            if info.node == ctx.node or info.relayed_into is not None:
                continue
            record = following.adopt(info)
            if not record.ended and not ctx.is_local(record):
                # Start catching it up now: a reader of the thread then holds the later
                # runs back until it has. The reader's own lease (watch_thread) comes a
                # moment later and keeps it followed.
                loop.call_later(READY_TIMEOUT, following.watch_run(info.run_id, owner=info.node, info=info).release)
        return thread

    def watch_thread(self, thread_id: str) -> Lease:
        """See :meth:`Bridge.watch_thread <kiki_events.bridge.Bridge.watch_thread>`."""
        ctx = self.ctx
        if not ctx.running():
            return NO_LEASE
        watch = self.watches.get(thread_id)
        if watch is None:
            thread = ctx.store.peek_thread(thread_id)
            watch = self.watches[thread_id] = _ThreadWatch(thread_id, thread.principal if thread else None)
        watch.leases += 1
        self._kick(watch)
        return Lease(lambda: self._release(watch))

    def bus_lease(self, thread_id: str) -> Lease:
        """A lease for a bus subscription to the thread (the thread may be unknown here yet)."""
        lease = self.watch_thread(thread_id)
        self.ctx.spawn(self._adopt_thread(thread_id), f"kiki-bridge-thread-adopt:{thread_id}")
        return lease

    async def _adopt_thread(self, thread_id: str) -> None:
        ctx = self.ctx
        watch = self.watches.get(thread_id)
        if watch is None or watch.principal is not None or ctx.store.peek_thread(thread_id) is not None:
            return
        try:
            owner = await ctx.transport.thread_owner(thread_id)
            infos = await ctx.transport.thread_runs(thread_id)
        except TransportError:
            return
        if infos:
            watch.principal = owner.principal if owner is not None else infos[0].principal
            ctx.store.adopt_thread(thread_id, watch.principal)
            for info in infos:
                self._thread_run(watch, info)

    def _release(self, watch: _ThreadWatch) -> None:
        watch.leases -= 1
        if watch.leases <= 0:
            linger = self.ctx.linger
            watch.keep_until = time.monotonic() + linger
            asyncio.get_running_loop().call_later(linger, self._kick, watch)
            self._kick(watch)

    def _kick(self, watch: _ThreadWatch) -> None:
        if self.watches.get(watch.thread_id) is not watch:
            return
        if watch.task is None or watch.task.done():
            watch.task = self.ctx.spawn(self._reconcile(watch), f"kiki-bridge-thread:{watch.thread_id}")

    async def _reconcile(self, watch: _ThreadWatch) -> None:
        transport = self.ctx.transport
        while self.watches.get(watch.thread_id) is watch:
            wanted = watch.leases > 0 or time.monotonic() < watch.keep_until
            if wanted and not watch.watching:
                watch.watching = True
                await transport.watch("thread", watch.thread_id)
                await self._refresh(watch)
            elif not wanted and watch.watching:
                watch.watching = False
                with contextlib.suppress(TransportError):
                    await transport.unwatch("thread", watch.thread_id)
                leases, watch.runs = watch.runs, {}
                for lease in leases.values():
                    lease.release()
            else:
                if not wanted:
                    del self.watches[watch.thread_id]
                return

    async def _refresh(self, watch: _ThreadWatch) -> None:
        try:
            infos = await self.ctx.transport.thread_runs(watch.thread_id)
        except TransportError:
            return  # refreshed again on reconnect
        for info in infos:
            self._thread_run(watch, info)

    def reconnected(self) -> None:
        """The transport (re)connected: look for runs started on watched threads meanwhile."""
        for watch in list(self.watches.values()):
            if watch.watching:
                self.ctx.spawn(self._refresh(watch), f"kiki-bridge-thread-refresh:{watch.thread_id}")

    def announced(self, message: Message) -> None:
        """A run started on a thread (an announcement frame)."""
        fields = message.header.get("i")
        if message.run_id is None or not isinstance(fields, dict):
            return
        info = RunInfo.from_fields(message.run_id, fields)
        if info is None or info.thread_id is None:
            return
        watch = self.watches.get(info.thread_id)
        if watch is not None and watch.watching:
            self._thread_run(watch, info)

    def _thread_run(self, watch: _ThreadWatch, info: RunInfo) -> None:
        ctx = self.ctx
        if info.run_id in watch.runs or info.node == ctx.node or info.thread_id != watch.thread_id:
            return
        if info.relayed_into is not None:
            return  # shown inside the run that relays it
        if info.principal != watch.principal:
            return  # not this thread's owner: never mix someone else's run in
        following = self.following
        record = following.adopt(info)
        if ctx.is_local(record):
            return
        watch.runs[info.run_id] = following.watch_run(info.run_id, owner=info.node, info=info)
