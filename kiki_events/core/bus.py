"""The in-process event bus.

``publish`` never blocks and never raises: it is called from the callback handler
for every token. Events published from another thread (a graph run with
``graph.invoke`` in ``asyncio.to_thread``) go through a bounded inbox and are
dispatched on the bus's event loop. Each subscription has its own bounded queue
and overflow policy; a handler that raises is isolated, logged and counted.

Sinks (:meth:`EventBus.add_sink`) are called synchronously for every event, on the
loop, before any subscription: they are for cheap O(1) work such as appending to a
replay buffer.

Interest listeners (:meth:`EventBus.add_interest_listener`) learn when the first
subscription to a run or thread appears and when the last one goes: the cross-node
bridge uses that to receive a remote run's traffic only while someone here wants it.

Subscriptions, their overflow policies and the bus's counters live in
:mod:`kiki_events.core.subscription` (re-exported here). :meth:`EventBus.replay`
publishes events again, apart from live ones (:mod:`kiki_events.core.replaying`).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Literal, TypeAlias

from ..errors import BusError, InvalidArgumentError
from ..events import StreamEvent
from ..log import get_logger
from ..topics import topic_matches, topic_of
from .replaying import Replayed, ReplayRoutes, check_replayed
from .subscription import (
    OVERFLOWS,
    BusStats,
    EventHandler,
    Overflow,
    Subscription,
    event_types,
    subscription_key,
)

__all__ = ["BusStats", "EventBus", "EventHandler", "InterestListener", "Overflow", "Subscription"]

logger = get_logger("kiki_events.bus")

Sink: TypeAlias = Callable[[StreamEvent], object]
InterestListener: TypeAlias = Callable[[Literal["run", "thread"], str, bool], object]
"""Called with ``("run" | "thread", id, present)`` when interest in a run or thread changes."""


class EventBus:
    """In-process publish/subscribe of :data:`StreamEvent` with bounded queues.

    Use it as an async context manager (or call :meth:`start` and :meth:`close`)::

        async with EventBus() as bus:
            async with bus.subscribe(run_id=run_id) as events:
                async for event in events: ...
    """

    def __init__(self, *, node: str | None = None, inbox_size: int = 65536, queue_size: int = 10000) -> None:
        if inbox_size < 1 or queue_size < 1:
            raise InvalidArgumentError("inbox_size and queue_size must be at least 1")
        self.node = node
        self.queue_size = queue_size
        self.stats = BusStats()
        self._state: Literal["new", "running", "closed"] = "new"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._inbox: deque[StreamEvent] = deque()
        self._inbox_size = inbox_size
        self._inbox_scheduled = False
        self._sinks: list[Sink] = []
        self._all: list[Subscription] = []
        self._by_run: dict[str, list[Subscription]] = {}
        self._by_thread: dict[str | None, list[Subscription]] = {}
        self._by_topic: list[tuple[tuple[str, ...], Subscription]] = []
        self._subscriptions: set[Subscription] = set()
        self._interest: list[InterestListener] = []
        self.replays = ReplayRoutes(self.stats)
        """The sinks and subscriptions that take replayed events."""

    # -- lifecycle -----------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._state == "running"

    async def start(self) -> None:
        """Bind the bus to the running event loop."""
        if self._state != "new":
            raise BusError(f"the event bus cannot be started: it is {self._state}")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._state = "running"

    async def close(self, *, timeout: float = 5.0) -> None:
        """Deliver what is in flight (up to ``timeout``), then close every subscription."""
        if self._state != "running":
            self._state = "closed"
            return
        try:
            await asyncio.wait_for(self.drain(), timeout)
        except TimeoutError:
            logger.warning("event bus closed with handlers still busy after %.1fs", timeout)
        self._state = "closed"
        subs = list(self._subscriptions)
        for sub in subs:
            sub.close()
        tasks = [s.task for s in subs if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> EventBus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- publishing ------------------------------------------------------------------
    def publish(self, event: StreamEvent) -> bool:
        """Hand ``event`` to every matching subscriber without blocking.

        Safe to call from any thread. Returns ``False`` (and counts the drop) when
        the bus is not running or its cross-thread inbox is full; never raises.
        """
        if self._state != "running":
            self.stats.drop("not_running")
            return False
        if threading.get_ident() == self._loop_thread:
            if self._inbox:  # keep cross-thread events ahead of later ones
                self._drain_inbox()
            self._dispatch(event)
            return True
        inbox = self._inbox
        if len(inbox) >= self._inbox_size:
            self.stats.drop("inbox_full")
            return False
        inbox.append(event)
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            loop = self._loop
            try:
                loop.call_soon_threadsafe(self._drain_inbox)  # type: ignore[union-attr]
            except RuntimeError:  # the loop is closed
                self._inbox_scheduled = False
                self.stats.drop("not_running")
                return False
        return True

    def _drain_inbox(self) -> None:
        self._inbox_scheduled = False
        inbox = self._inbox
        while inbox:
            self._dispatch(inbox.popleft())

    def _dispatch(self, event: StreamEvent, topics: bool = True) -> None:
        self.stats.published += 1
        for sink in self._sinks:
            try:
                sink(event)
            except Exception as exc:
                self.stats.handler_failed(exc)
                logger.exception("event sink %r raised", sink)
        for sub in self._all:
            sub._offer(event)
        subs = self._by_run.get(event.run_id)
        if subs:
            for sub in subs:
                sub._offer(event)
        subs = self._by_thread.get(event.thread_id)  # None (no thread) is never a key
        if subs:
            for sub in subs:
                sub._offer(event)
        if topics and self._by_topic:
            topic = topic_of(event)
            if topic is not None:
                for patterns, sub in self._by_topic:
                    # One offer per subscription, however many of its patterns match.
                    if any(topic_matches(p, topic) for p in patterns):
                        sub._offer(event)

    def deliver(self, events: Iterable[StreamEvent], *, topics: bool = True) -> int:
        """Dispatch events received from another node, on the bus's loop, in order.

        Like :meth:`publish` for each event (sinks, then subscriptions), without the
        cross-thread inbox: the caller runs on the loop. ``topics=False`` skips
        topic subscriptions (they already saw these events as broadcasts).
        Returns how many were dispatched; never raises.
        """
        if self._state != "running":
            return 0
        if self._inbox:
            self._drain_inbox()
        count = 0
        for event in events:
            self._dispatch(event, topics)
            count += 1
        return count

    def replay(self, events: Iterable[StreamEvent]) -> int:
        """Publish events that happened before (e.g. read from the event store), marked as replayed.

        Only sinks added and subscriptions made with ``replayed`` see them; call it on
        the bus's loop. Returns how many were dispatched (0 unless running); never raises.
        """
        if self._state != "running":
            return 0
        return self.replays.dispatch(events)

    def broadcast(self, event: StreamEvent) -> None:
        """Offer a remote lifecycle event to topic and catch-all subscriptions only.

        Sinks and run/thread subscriptions do not see it: this node does not follow
        the run (it would otherwise keep a partial copy of it).
        """
        if self._state != "running":
            return
        topic = topic_of(event)
        for sub in self._all:
            sub._offer(event)
        if topic is not None:
            for patterns, sub in self._by_topic:
                if any(topic_matches(p, topic) for p in patterns):
                    sub._offer(event)

    async def emit_and_wait(self, event: StreamEvent) -> None:
        """Publish ``event`` and wait until every handler subscription has handled it."""
        self._require_running()
        if threading.get_ident() != self._loop_thread:
            raise BusError("emit_and_wait must be awaited on the bus's event loop")
        self._dispatch(event)
        await self.drain()

    async def drain(self) -> None:
        """Wait until the inbox is empty and every handler subscription is idle."""
        while True:
            if self._inbox:
                self._drain_inbox()
            busy = [s for s in self._subscriptions if s.busy]
            if not busy and not self._inbox:
                return
            for sub in busy:
                await sub.wait_idle()

    # -- subscribing -----------------------------------------------------------------
    def subscribe(
        self,
        handler: EventHandler | None = None,
        *,
        topics: str | Iterable[str] | None = None,
        run_id: str | None = None,
        thread_id: str | None = None,
        types: str | Iterable[str] | None = None,
        maxsize: int | None = None,
        overflow: Overflow = "drop_oldest",
        name: str | None = None,
        replayed: Replayed = False,
    ) -> Subscription:
        """Subscribe to events of one run, one thread, some topics, or everything.

        Give at most one of ``topics`` (names like ``"agent:started"``, or patterns
        ``"agent:*"`` / ``"*"``), ``run_id`` and ``thread_id``; none means every event.
        ``types`` further filters by event type. With a ``handler`` (sync or async
        callable) the bus runs it in a supervised task; without one, iterate the
        returned :class:`Subscription`. ``replayed``: live events only (``False``), replayed
        ones (:meth:`replay`) too (``True``), or only those (``"only"``).

        Raises:
            BusError: the bus is not running.
            InvalidArgumentError: conflicting or invalid arguments (a ``ValueError``).
        """
        self._require_running()
        key, patterns = subscription_key(topics, run_id, thread_id)
        if overflow not in OVERFLOWS:
            raise InvalidArgumentError(f"overflow must be one of {', '.join(OVERFLOWS)}; got {overflow!r}")
        check_replayed(replayed)
        size = self.queue_size if maxsize is None else maxsize
        if size < 1:
            raise InvalidArgumentError(f"maxsize must be at least 1; got {size}")
        sub = Subscription(
            self.stats,
            self._remove,
            key=key,
            types=event_types(types),
            maxsize=size,
            overflow=overflow,
            handler=handler,
            name=name or getattr(handler, "__qualname__", None) or f"{key[0]}:{key[1]}",
        )
        sub.replayed = replayed
        if replayed:
            self.replays.add(sub, patterns)
        if replayed == "only":
            self._subscriptions.add(sub)
        else:
            self._add(sub, patterns)
        sub.start_handler()
        return sub

    def _add(self, sub: Subscription, patterns: tuple[str, ...]) -> None:
        kind, value = sub.key
        if kind == "run" or kind == "thread":
            index = self._by_run if kind == "run" else self._by_thread
            subs = index.get(value)
            if subs:
                index[value] = [*subs, sub]  # copy on write, as in _remove
            else:
                index[value] = [sub]
                self._notify_interest("run" if kind == "run" else "thread", value, True)
        elif kind == "topic":
            self._by_topic.append((patterns, sub))
        else:
            self._all.append(sub)
        self._subscriptions.add(sub)

    def add_interest_listener(self, listener: InterestListener) -> Callable[[], None]:
        """Call ``listener(kind, id, present)`` when interest in a run or thread appears or goes.

        ``present`` is true when the first subscription to that run (or thread)
        opens and false when the last one closes. Returns a remover.
        """
        self._interest.append(listener)

        def remove() -> None:
            if listener in self._interest:
                self._interest.remove(listener)

        return remove

    def _notify_interest(self, kind: Literal["run", "thread"], key: str, present: bool) -> None:
        for listener in self._interest:
            try:
                listener(kind, key, present)
            except Exception as exc:
                self.stats.handler_failed(exc)
                logger.exception("interest listener %r raised", listener)

    def add_sink(self, sink: Sink, *, replayed: bool = False) -> Callable[[], None]:
        """Call ``sink(event)`` synchronously for every event (``replayed``: replayed ones too); returns a remover."""
        self._sinks.append(sink)
        unreplay = self.replays.add_sink(sink) if replayed else None

        def remove() -> None:
            if sink in self._sinks:
                self._sinks.remove(sink)
            if unreplay is not None:
                unreplay()

        return remove

    @property
    def subscriptions(self) -> int:
        """Number of open subscriptions."""
        return len(self._subscriptions)

    def has_run_subscribers(self, run_id: str) -> bool:
        """Whether anything subscribed to ``run_id`` specifically."""
        return bool(self._by_run.get(run_id))

    def _remove(self, sub: Subscription) -> None:
        # Copy on write: a subscription can close itself (overflow "disconnect") while
        # _dispatch iterates these lists; mutating them in place would skip the next one.
        self._subscriptions.discard(sub)
        if sub.replayed:
            self.replays.remove(sub)
            if sub.replayed == "only":
                return
        kind, value = sub.key
        if kind == "run" or kind == "thread":
            index = self._by_run if kind == "run" else self._by_thread
            subs = [s for s in index.get(value, ()) if s is not sub]
            if subs:
                index[value] = subs
            elif index.pop(value, None) is not None:
                self._notify_interest("run" if kind == "run" else "thread", value, False)
        elif kind == "topic":
            self._by_topic = [(p, s) for p, s in self._by_topic if s is not sub]
        else:
            self._all = [s for s in self._all if s is not sub]

    def _require_running(self) -> None:
        if self._state != "running":
            raise BusError(f"the event bus is {self._state}; use it inside 'async with EventBus()'")
