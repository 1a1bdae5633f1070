"""Redis pub/sub transport: lowest latency, at-most-once.

Channels (names from :class:`~kiki_events.redis.keys.Keys`, under the prefix):

* ``run:{<run_id>}`` – every frame of a run (one per run per flush);
* ``thread:{<thread_id>}`` – a short announcement when a run starts on the thread;
* ``lifecycle`` – lifecycle events (``agent:*``, ``multiagent:sync``) of every run;
* ``control`` and ``control:<node>`` – control messages, and replays sent to one node.

Each node holds **one** subscription connection, read by one supervised task with
``get_message(timeout=…)``; it subscribes to a run or thread channel only while
the bridge has a local interest in it, and to ``lifecycle`` only if
``eventbus.subscribe.events`` is not empty. Frames are published through one
pipeline per flush. The subscriber connection does not retry by itself: when it
breaks, the task reconnects with backoff (at most 1 s between attempts),
resubscribes everything and tells the bridge, which warns the affected readers
(``missed``) and asks the owning nodes to replay what it lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..core.tasks import Backoff, supervise
from ..errors import TransportError
from ..transports.base import WatchKind
from ..transports.frames import announcement, framed
from ..transports.options import TransportOptions
from ..transports.outbox import OutboxBatch
from ..transports.wire import KIND_BATCH, KIND_LIFECYCLE
from .client import Reading, ending_on_cancel
from .registry import RedisTransportBase

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

__all__ = ["RedisPubSubTransport"]

_READ_TIMEOUT = 0.25
"""Longest wait for a message; the loop notices a close within this time."""
_CONFIRM_TIMEOUT = 2.0


async def _next_message(pubsub: PubSub, timeout: float) -> dict[str, Any] | None:
    """The next message, waiting up to ``timeout``; cancelling the caller ends the wait at once."""

    async def read(reading: Reading) -> dict[str, Any] | None:
        if pubsub.connection is not None:
            reading.use(pubsub.connection)
        message: dict[str, Any] | None = await pubsub.get_message(timeout=timeout)
        return message

    return await ending_on_cancel(read)


class RedisPubSubTransport(RedisTransportBase):
    """See the module docstring."""

    name = "redis-pubsub"
    durable = False

    def __init__(
        self, redis: Redis, *, node: str, options: TransportOptions | None = None, owns_client: bool = False
    ) -> None:
        super().__init__(redis, node=node, options=options, owns_client=owns_client)
        self._channels: set[str] = set()
        self._pubsub: PubSub | None = None
        self._pending: dict[str, asyncio.Future[bool]] = {}
        self._lock = asyncio.Lock()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "channels": len(self._channels)}

    # -- the subscriber --------------------------------------------------------------------
    async def _start_reader(self) -> None:
        keys = self.keys
        self._channels.update((keys.control_channel(), keys.control_channel(self.node)))
        if self.options.lifecycle:
            self._channels.add(keys.lifecycle_channel())
        self._tasks.append(supervise(f"kiki-bridge-read:{self.name}", self._read_forever))

    async def _read_forever(self) -> None:
        backoff = Backoff()
        while not self._closed:
            pubsub = self.redis.pubsub()
            saved_retry: Any = None
            try:
                await pubsub.connect()  # type: ignore[no-untyped-call]
                connection = pubsub.connection
                if connection is not None:
                    # This loop reconnects (and knows it did): no silent retries underneath.
                    from redis.asyncio.retry import Retry
                    from redis.backoff import NoBackoff

                    saved_retry, connection.retry = connection.retry, Retry(NoBackoff(), 0)
                channels = set(self._channels)
                waiting = set(channels)
                await pubsub.subscribe(*sorted(channels))
                deadline = time.monotonic() + _CONFIRM_TIMEOUT
                while waiting:
                    message = await _next_message(pubsub, max(deadline - time.monotonic(), 0.01))
                    if message is None:
                        raise TransportError("Redis did not confirm the subscriptions")
                    self._handle(message, waiting)
                self._pubsub = pubsub
                await self._resync(channels)
                backoff.reset()
                self._reader_up()
                while not self._closed:
                    message = await _next_message(pubsub, _READ_TIMEOUT)
                    if message is not None:
                        self._handle(message)
                self._pubsub = None
                await self._release(pubsub, saved_retry)
            except asyncio.CancelledError:
                self._pubsub = None
                await self._release(pubsub, saved_retry)
                raise
            except self._errors as exc:
                self._pubsub = None
                self._fail_pending()
                self._reader_down(exc)
                await self._release(pubsub, saved_retry)
                await asyncio.sleep(backoff.next())

    async def _release(self, pubsub: PubSub, saved_retry: Any) -> None:
        connection = pubsub.connection
        if connection is not None and saved_retry is not None:
            connection.retry = saved_retry
        with contextlib.suppress(Exception):
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _handle(self, message: Mapping[str, Any], waiting: set[str] | None = None) -> None:
        kind = message.get("type")
        if kind == "message":
            self._receive(message["data"])
        elif kind == "subscribe":
            channel = message["channel"]
            name = channel.decode() if isinstance(channel, bytes) else str(channel)
            if waiting is not None:
                waiting.discard(name)
            future = self._pending.pop(name, None)
            if future is not None and not future.done():
                future.set_result(True)

    async def _resync(self, subscribed: set[str]) -> None:
        """Apply the watch changes made while (re)connecting."""
        pubsub = self._pubsub
        if pubsub is None:
            return
        added = self._channels - subscribed
        removed = subscribed - self._channels
        async with self._lock:
            if added:
                await pubsub.subscribe(*sorted(added))
            if removed:
                await pubsub.unsubscribe(*sorted(removed))

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_result(False)

    # -- watching ----------------------------------------------------------------------------
    def _channel(self, kind: WatchKind, key: str) -> str:
        return self.keys.run_channel(key) if kind == "run" else self.keys.thread_channel(key)

    async def watch(self, kind: WatchKind, key: str, *, after: int = 0) -> bool:
        channel = self._channel(kind, key)
        self._channels.add(channel)
        future = self._pending.get(channel)
        if future is None:
            future = self._pending[channel] = asyncio.get_running_loop().create_future()
        pubsub = self._pubsub
        if pubsub is not None:
            try:
                async with self._lock:
                    await pubsub.subscribe(channel)
            except self._errors:
                return False  # subscribed again with everything else on reconnect
        # Not connected yet: the reader subscribes it with the rest once it is.
        try:
            return await asyncio.wait_for(asyncio.shield(future), _CONFIRM_TIMEOUT)
        except TimeoutError:
            if self._pending.get(channel) is future:
                self._pending.pop(channel, None)
            return False

    async def unwatch(self, kind: WatchKind, key: str) -> None:
        channel = self._channel(kind, key)
        self._channels.discard(channel)
        pubsub = self._pubsub
        if pubsub is None:
            return
        with contextlib.suppress(*self._errors):
            async with self._lock:
                await pubsub.unsubscribe(channel)

    # -- sending -------------------------------------------------------------------------------
    async def _send(self, batch: OutboxBatch) -> None:
        keys, node, opts, stats = self.keys, self.node, self.options, self.stats
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        for info, announce in batch.registry.values():
            self._queue_registry(pipe, info)
            if announce and info.thread_id:
                pipe.publish(keys.thread_channel(info.thread_id), announcement(node, info, sent_at=now))
        frames = 0
        for run_id, pending in batch.runs.items():
            channel = keys.run_channel(run_id)
            for _, _, frame in framed(KIND_BATCH, node, pending.events, opts, sent_at=now, run_id=run_id):
                pipe.publish(channel, frame)
                frames += 1
        for _, _, frame in framed(KIND_LIFECYCLE, node, batch.lifecycle, opts, sent_at=now):
            pipe.publish(keys.lifecycle_channel(), frame)
            frames += 1
        await pipe.execute()
        stats.messages_out += frames
        stats.events_out += batch.count

    async def _send_control_frames(self, node: str | None, frames: Sequence[bytes]) -> None:
        channel = self.keys.control_channel(node)
        if len(frames) == 1:
            await self._call(self.redis.publish(channel, frames[0]))
        else:
            pipe = self.redis.pipeline(transaction=False)
            for frame in frames:
                pipe.publish(channel, frame)
            await self._call(pipe.execute())
        self.stats.messages_out += len(frames)
