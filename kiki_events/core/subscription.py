"""Subscriptions of the event bus: bounded queues of matching events, and their counters.

A :class:`Subscription` is fed by its bus (on the bus's loop) and read by one
consumer: iterated, or pumped into a handler in a supervised task. Each has its own
bounded queue and :data:`Overflow` policy; a handler that raises is isolated,
logged and counted in the bus's :class:`BusStats`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, TypeAlias, get_args

from ..errors import InvalidArgumentError, SubscriptionOverflowError
from ..events import EVENT_TYPES, StreamEvent
from ..log import get_logger

__all__ = [
    "ALL_KEY",
    "OVERFLOWS",
    "BusStats",
    "EventHandler",
    "Overflow",
    "Subscription",
    "event_types",
    "subscription_key",
]

logger = get_logger("kiki_events.bus")

Overflow: TypeAlias = Literal["drop_oldest", "drop_newest", "disconnect"]
"""What a full subscription queue does with the next event."""
EventHandler: TypeAlias = Callable[[StreamEvent], Awaitable[object] | object]

OVERFLOWS: tuple[str, ...] = get_args(Overflow)
"""Every :data:`Overflow` policy."""


@dataclass
class BusStats:
    """Counters of one bus; read them, do not write them."""

    published: int = 0
    replayed: int = 0
    """Events dispatched by :meth:`EventBus.replay <kiki_events.core.bus.EventBus.replay>` (not in ``published``)."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Events not delivered, by reason (``inbox_full``, ``queue_full``, ``closed`` …)."""
    handler_errors: int = 0
    handler_error_types: dict[str, int] = field(default_factory=dict)
    """``handler_errors`` by exception class name."""

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    def handler_failed(self, error: BaseException) -> None:
        """Count an exception raised by a sink or a handler."""
        self.handler_errors += 1
        kind = type(error).__name__
        self.handler_error_types[kind] = self.handler_error_types.get(kind, 0) + 1


class Subscription:
    """A bounded stream of matching events; iterate it, or give it a handler.

    Create with :meth:`EventBus.subscribe <kiki_events.core.bus.EventBus.subscribe>`.
    Close it (or leave its ``async with``) when done; closing is idempotent.

    Args:
        stats: the bus's counters (drops and handler errors are counted there).
        on_close: called once with this subscription when it closes (the bus
            stops offering it events).
    """

    def __init__(
        self,
        stats: BusStats,
        on_close: Callable[[Subscription], object],
        *,
        key: tuple[str, str],
        types: frozenset[str] | None,
        maxsize: int,
        overflow: Overflow,
        handler: EventHandler | None,
        name: str,
    ) -> None:
        self._stats = stats
        self._on_close = on_close
        self.key = key
        self.types = types
        self.maxsize = maxsize
        self.overflow: Overflow = overflow
        self.name = name
        self.delivered = 0
        """Events put on this subscription's queue."""
        self.dropped = 0
        """Events this subscription lost to its overflow policy."""
        self.errors = 0
        """Exceptions raised by its handler."""
        self.replayed: bool | str = False
        """Whether it gets replayed events (:data:`~kiki_events.core.replaying.Replayed`)."""
        self._queue: deque[StreamEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._overflowed = False
        self._handler = handler
        self._idle: asyncio.Event | None = None
        self.task: asyncio.Task[None] | None = None

    # -- producer side (bus loop only) -------------------------------------------
    def _offer(self, event: StreamEvent) -> None:
        if self._closed:
            return
        if self.types is not None and event.type not in self.types:
            return
        queue = self._queue
        if len(queue) >= self.maxsize:
            self.dropped += 1
            self._stats.drop("queue_full")
            if self.overflow == "drop_newest":
                return
            if self.overflow == "disconnect":
                self._overflowed = True
                self.close()
                return
            queue.popleft()
        queue.append(event)
        self.delivered += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- consumer side -----------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._queue)

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self

    async def __anext__(self) -> StreamEvent:
        while not self._queue:
            await self._wait()
        return self._queue.popleft()

    async def get_batch(self, limit: int = 1024) -> list[StreamEvent]:
        """Wait for at least one event, then return up to ``limit`` queued events.

        Raises:
            StopAsyncIteration: the subscription is closed and empty.
            SubscriptionOverflowError: it was closed for falling behind.
        """
        while not self._queue:
            await self._wait()
        queue = self._queue
        count = min(limit, len(queue))
        return [queue.popleft() for _ in range(count)]

    async def _wait(self) -> None:
        if self._closed:
            if self._overflowed:
                raise SubscriptionOverflowError(
                    f"subscription {self.name!r} fell more than {self.maxsize} events behind"
                )
            raise StopAsyncIteration
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        """Stop receiving; wakes a waiting consumer. Events still queued are kept."""
        if self._closed:
            return
        self._closed = True
        self._on_close(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    # -- handler pump ------------------------------------------------------------
    def start_handler(self) -> None:
        """Start the task that feeds queued events to the handler (on the running loop)."""
        if self._handler is None or self.task is not None:
            return
        self._idle = asyncio.Event()
        self._idle.set()
        self.task = asyncio.get_running_loop().create_task(self._pump(), name=f"kiki-bus-handler:{self.name}")
        self.task.add_done_callback(_report_crash)

    @property
    def busy(self) -> bool:
        """Whether its handler has events queued or is handling one."""
        if self._handler is None:
            return False
        return bool(self._queue) or (self._idle is not None and not self._idle.is_set())

    async def _pump(self) -> None:
        handler = self._handler
        if handler is None:  # pragma: no cover - only started for handlers
            return
        idle = self._idle
        if idle is None:  # pragma: no cover - set before starting
            return
        while True:
            try:
                batch = await self.get_batch()
            except (StopAsyncIteration, SubscriptionOverflowError):
                idle.set()
                return
            idle.clear()
            for event in batch:
                try:
                    result = handler(event)
                    if result is not None and inspect.isawaitable(result):  # a plain None: skip the ABC check
                        await result
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._handler_failed(exc)
            if not self._queue:
                idle.set()

    def _handler_failed(self, error: Exception) -> None:
        self.errors += 1
        self._stats.handler_failed(error)
        if self.errors == 1:
            logger.exception("event handler %r raised; isolating it", self.name)
        else:
            logger.debug("event handler %r raised again", self.name, exc_info=True)

    async def wait_idle(self) -> None:
        """For handler subscriptions: wait until every queued event was handled."""
        if self._idle is not None:
            while self._queue or not self._idle.is_set():
                await self._idle.wait()
                if self._queue:
                    await asyncio.sleep(0)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("event bus handler task %s crashed", task.get_name(), exc_info=task.exception())


ALL_KEY = ("all", "*")
"""The key of a subscription to every event."""


def subscription_key(
    topics: str | Iterable[str] | None, run_id: str | None, thread_id: str | None
) -> tuple[tuple[str, str], tuple[str, ...]]:
    """The index key of a subscription to ``topics``, ``run_id`` or ``thread_id``, and its topic patterns.

    Raises:
        InvalidArgumentError: more than one of them is given, or ``topics`` is empty.
    """
    given = [k for k, v in (("topics", topics), ("run_id", run_id), ("thread_id", thread_id)) if v is not None]
    if len(given) > 1:
        raise InvalidArgumentError(f"subscribe takes one of topics, run_id, thread_id; got {', '.join(given)}")
    if run_id is not None:
        return ("run", run_id), ()
    if thread_id is not None:
        return ("thread", thread_id), ()
    if topics is None:
        return ALL_KEY, ()
    patterns = (topics,) if isinstance(topics, str) else tuple(topics)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise InvalidArgumentError("topics must be one or more non-empty topic names or patterns")
    if "*" in patterns:
        return ALL_KEY, patterns
    return ("topic", ",".join(patterns)), patterns


def event_types(types: str | Iterable[str] | None) -> frozenset[str] | None:
    """The event types a subscription accepts (``None``: all).

    Raises:
        InvalidArgumentError: an unknown event type.
    """
    if types is None:
        return None
    kinds = frozenset([types] if isinstance(types, str) else types)
    unknown = sorted(map(str, kinds - set(EVENT_TYPES)))
    if unknown:
        raise InvalidArgumentError(
            f"types: unknown event type(s) {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}"
        )
    return kinds
