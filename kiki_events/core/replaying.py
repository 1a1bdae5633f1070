"""Replayed events on the bus: stored events published again, kept apart from live ones.

:meth:`EventBus.replay <kiki_events.core.bus.EventBus.replay>` dispatches events
that happened before (read back from the event store, e.g. to rebuild a
projection) through :class:`ReplayRoutes`: only to the sinks added with
``replayed=True`` and the subscriptions made with ``replayed=True`` (live and
replayed events) or ``replayed="only"``. Every other sink and subscription never
sees them, so the run store does not take them for a new run, the metrics do not
count them, the event store does not store them twice and the cross-node bridge
does not forward them. The events themselves are unchanged (no envelope field
marks them): being replayed is a property of how they were published.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal, TypeAlias

from ..errors import InvalidArgumentError
from ..events import StreamEvent
from ..log import get_logger
from ..topics import topic_matches, topic_of
from .subscription import BusStats, Subscription

__all__ = ["ReplayRoutes", "Replayed", "check_replayed"]

logger = get_logger("kiki_events.bus")

Replayed: TypeAlias = "bool | Literal['only']"
"""Whether a subscription gets replayed events: ``False`` (live only), ``True`` (both), ``"only"``."""


def check_replayed(value: object) -> None:
    """Raises :class:`InvalidArgumentError` unless ``value`` is a :data:`Replayed`."""
    if value is not False and value is not True and value != "only":
        raise InvalidArgumentError(f"replayed must be False, True or 'only'; got {value!r}")


class ReplayRoutes:
    """The sinks and subscriptions of one bus that take replayed events."""

    def __init__(self, stats: BusStats) -> None:
        self._stats = stats
        self._sinks: list[Callable[[StreamEvent], object]] = []
        self._subs: list[tuple[tuple[str, ...], Subscription]] = []

    def add_sink(self, sink: Callable[[StreamEvent], object]) -> Callable[[], None]:
        """Give ``sink`` the replayed events too; returns a remover."""
        self._sinks.append(sink)

        def remove() -> None:
            if sink in self._sinks:
                self._sinks.remove(sink)

        return remove

    def add(self, sub: Subscription, patterns: tuple[str, ...]) -> None:
        self._subs.append((patterns, sub))

    def remove(self, sub: Subscription) -> None:
        self._subs = [(p, s) for p, s in self._subs if s is not sub]

    def dispatch(self, events: Iterable[StreamEvent]) -> int:
        """Offer each event to the sinks and subscriptions that take replayed events; how many."""
        count = 0
        for event in events:
            count += 1
            for sink in self._sinks:
                try:
                    sink(event)
                except Exception as exc:
                    self._stats.handler_failed(exc)
                    logger.exception("replay sink %r raised", sink)
            topic: str | Literal[False] | None = False
            for patterns, sub in self._subs:
                kind, value = sub.key
                if kind == "run":
                    match = event.run_id == value
                elif kind == "thread":
                    match = event.thread_id == value
                elif kind == "topic":
                    if topic is False:
                        topic = topic_of(event)
                    match = topic is not None and any(topic_matches(p, topic) for p in patterns)
                else:
                    match = True
                if match:
                    sub._offer(event)
        self._stats.replayed += count
        return count
