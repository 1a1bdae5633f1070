"""The in-memory transport: several runtimes of one process behave like a cluster.

A :class:`MemoryHub` stands in for Redis: channels, a run registry, and an
availability switch that simulates an outage. Each runtime gets a
:class:`MemoryTransport` on the shared hub (``KikiRuntime(settings, hub=hub)``)::

    hub = MemoryHub()
    async with KikiRuntime(settings_a, hub=hub) as a, KikiRuntime(settings_b, hub=hub) as b:
        handle = a.runs.start("team", inputs)
        async for event in b.follow(handle.run_id): ...

Frames go through the same encoding and checks as with Redis, and the same
channel names (:class:`~kiki_events.transports.names.Names`, so prefixes isolate
tenants on one hub). Delivery is at-most-once
like Redis pub/sub: what is published while the hub is down is lost, and the
bridge repairs the gap from the owning node.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from ..errors import TransportError
from .base import RunInfo, ThreadOwner, WatchKind
from .common import BaseTransport
from .frames import announcement, framed
from .names import Names
from .options import TransportOptions
from .outbox import OutboxBatch
from .wire import KIND_BATCH, KIND_LIFECYCLE

__all__ = ["MemoryHub", "MemoryTransport"]

_MAX_RUNS = 100_000
_RUNNING_TTL = 7 * 86400.0
"""A running run's registry entry lives this long (as with Redis)."""


class MemoryHub:
    """Channels and a run registry shared by the memory transports of one process."""

    def __init__(self, *, max_runs: int = _MAX_RUNS) -> None:
        self.available = True
        """While false every send fails and nothing is delivered (an outage)."""
        self.frames = 0
        """Frames delivered to at least one subscriber."""
        self._max_runs = max_runs
        self._channels: dict[str, set[MemoryTransport]] = {}
        self._transports: set[MemoryTransport] = set()
        self._runs: OrderedDict[str, RunInfo] = OrderedDict()
        self._threads: dict[str, dict[str, None]] = {}
        self._owners: OrderedDict[str, tuple[str, float]] = OrderedDict()
        """Thread owner key → (encoded owner, monotonic deadline), like ``SET NX EX``."""
        self._heartbeats: dict[str, float] = {}

    def set_available(self, available: bool) -> None:
        """Simulate Redis going away (``False``) and coming back (``True``)."""
        if available == self.available:
            return
        self.available = available
        for transport in list(self._transports):
            transport._link_changed(available)

    def publish(self, channel: str, data: bytes) -> int:
        """Deliver raw ``data`` to every subscriber of ``channel`` (tests inject frames here).

        Raises:
            TransportError: the hub is unavailable.
        """
        if not self.available:
            raise TransportError("the memory hub is unavailable")
        subscribers = self._channels.get(channel)
        if not subscribers:
            return 0
        self.frames += 1
        for transport in subscribers:
            transport._deliver_soon(data)
        return len(subscribers)

    def subscribers(self, channel: str) -> int:
        """How many transports subscribe to ``channel``."""
        return len(self._channels.get(channel, ()))

    def _subscribe(self, transport: MemoryTransport, channel: str) -> None:
        self._channels.setdefault(channel, set()).add(transport)

    def _unsubscribe(self, transport: MemoryTransport, channel: str) -> None:
        subscribers = self._channels.get(channel)
        if subscribers is not None:
            subscribers.discard(transport)
            if not subscribers:
                del self._channels[channel]

    def _put_run(self, key: str, info: RunInfo, thread_key: str | None) -> None:
        self._runs[key] = info
        self._runs.move_to_end(key)
        if thread_key is not None:
            self._threads.setdefault(thread_key, {})[info.run_id] = None
        while len(self._runs) > self._max_runs:
            self._runs.popitem(last=False)

    def _owner(self, key: str) -> str | None:
        entry = self._owners.get(key)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._owners[key]
            return None
        return entry[0]

    def _set_owner_if_absent(self, key: str, owner: ThreadOwner, ttl: float, *, extend: bool) -> str | None:
        """``SET key owner NX EX ttl`` (then ``EXPIRE key ttl GT`` if ``extend``); returns the owner it had."""
        previous = self._owner(key)
        deadline = time.monotonic() + ttl
        if previous is None:
            self._owners[key] = (owner.encode(), deadline)
            while len(self._owners) > self._max_runs:
                self._owners.popitem(last=False)
        elif extend:
            self._owners[key] = (previous, max(self._owners[key][1], deadline))
        self._owners.move_to_end(key)
        return previous

    def _check(self) -> None:
        if not self.available:
            raise TransportError("the memory hub is unavailable")


class MemoryTransport(BaseTransport):
    """One runtime's connection to a :class:`MemoryHub`."""

    name = "memory"
    durable = False

    def __init__(self, hub: MemoryHub, *, node: str, options: TransportOptions | None = None) -> None:
        super().__init__(node=node, options=options)
        self.hub = hub
        self.keys = Names(self.options.prefix)
        self._channels: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "channels": len(self._channels)}

    # -- connection --------------------------------------------------------------------
    async def _start_reader(self) -> None:
        self._loop = asyncio.get_running_loop()
        keys = self.keys
        self._join(keys.control_channel())
        self._join(keys.control_channel(self.node))
        if self.options.lifecycle:
            self._join(keys.lifecycle_channel())
        self.hub._transports.add(self)
        if self.hub.available:
            self._reader_up()
            self._out_ok = True
        else:
            self._reader_down(TransportError("the memory hub is unavailable"))

    async def _close_connections(self) -> None:
        self.hub._transports.discard(self)
        for channel in list(self._channels):
            self._leave(channel)

    def _join(self, channel: str) -> None:
        self._channels.add(channel)
        self.hub._subscribe(self, channel)

    def _leave(self, channel: str) -> None:
        self._channels.discard(channel)
        self.hub._unsubscribe(self, channel)

    def _link_changed(self, available: bool) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if available:
            loop.call_soon_threadsafe(self._reader_up)
        else:
            loop.call_soon_threadsafe(self._reader_down, TransportError("the memory hub is unavailable"))

    def _deliver_soon(self, data: bytes) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed() and not self._closed:
            loop.call_soon_threadsafe(self._receive, data)

    # -- sending ------------------------------------------------------------------------
    async def _send(self, batch: OutboxBatch) -> None:
        hub, keys, node, opts = self.hub, self.keys, self.node, self.options
        hub._check()
        now = time.time()
        for info, announce in batch.registry.values():
            self._put_run(info)
            if announce and info.thread_id:
                hub.publish(keys.thread_channel(info.thread_id), announcement(node, info, sent_at=now))
                self.stats.messages_out += 1
        for run_id, pending in batch.runs.items():
            channel = keys.run_channel(run_id)
            for _, _, frame in framed(KIND_BATCH, node, pending.events, opts, sent_at=now, run_id=run_id):
                hub.publish(channel, frame)
                self.stats.messages_out += 1
            self.stats.events_out += len(pending.events)
        for _, _, frame in framed(KIND_LIFECYCLE, node, batch.lifecycle, opts, sent_at=now):
            hub.publish(keys.lifecycle_channel(), frame)
            self.stats.messages_out += 1

    def _put_run(self, info: RunInfo) -> None:
        """Store a registry entry (and the owner of its thread, extending it), as Redis does."""
        keys = self.keys
        thread_key = keys.thread_runs(info.thread_id) if info.thread_id else None
        self.hub._put_run(keys.run_info(info.run_id), info, thread_key)
        if info.thread_id:
            entry_ttl = self.options.run_ttl if info.ended else _RUNNING_TTL
            owner_ttl = self.options.owner_ttl(entry_ttl)
            owner = ThreadOwner(info.principal)
            self.hub._set_owner_if_absent(keys.thread_owner(info.thread_id), owner, owner_ttl, extend=True)

    async def _send_control_frames(self, node: str | None, frames: Sequence[bytes]) -> None:
        channel = self.keys.control_channel(node)
        self.hub._check()
        for frame in frames:
            self.hub.publish(channel, frame)
        self.stats.messages_out += len(frames)

    # -- the rest of the protocol ----------------------------------------------------------
    def _channel(self, kind: WatchKind, key: str) -> str:
        return self.keys.run_channel(key) if kind == "run" else self.keys.thread_channel(key)

    async def watch(self, kind: WatchKind, key: str, *, after: int = 0) -> bool:
        self._join(self._channel(kind, key))
        return self.hub.available

    async def unwatch(self, kind: WatchKind, key: str) -> None:
        self._leave(self._channel(kind, key))

    async def heartbeat(self, ttl: float) -> None:
        self.hub._check()
        self.hub._heartbeats[self.keys.node(self.node)] = time.monotonic() + ttl

    async def alive(self, nodes: Sequence[str]) -> set[str]:
        hub = self.hub
        hub._check()
        now = time.monotonic()
        return {node for node in nodes if hub._heartbeats.get(self.keys.node(node), 0.0) > now}

    async def lookup_run(self, run_id: str) -> RunInfo | None:
        self.hub._check()
        return self.hub._runs.get(self.keys.run_info(run_id))

    async def thread_runs(self, thread_id: str) -> list[RunInfo]:
        hub = self.hub
        hub._check()
        keys = self.keys
        ids = hub._threads.get(keys.thread_runs(thread_id), {})
        infos = [info for run_id in ids if (info := hub._runs.get(keys.run_info(run_id))) is not None]
        return sorted(infos, key=lambda info: info.created_at)

    async def claim_thread(self, thread_id: str, principal: str | None) -> ThreadOwner:
        hub = self.hub
        hub._check()
        mine = ThreadOwner(principal)
        key = self.keys.thread_owner(thread_id)
        previous = hub._set_owner_if_absent(key, mine, self.options.owner_ttl(0), extend=False)
        return mine if previous is None else ThreadOwner.decode(previous)

    async def thread_owner(self, thread_id: str) -> ThreadOwner | None:
        hub = self.hub
        hub._check()
        value = hub._owner(self.keys.thread_owner(thread_id))
        return None if value is None else ThreadOwner.decode(value)
