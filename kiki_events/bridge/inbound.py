"""In: remote events enter the local bus.

Two ways in: the events of followed runs (:meth:`Inbound.deliver`, in order, by
:mod:`.repair`), and lifecycle events (``agent:*``, ``multiagent:sync``) of runs
not followed here, offered only to this node's topic subscribers when
``eventbus.subscribe.events`` lists them (:meth:`Inbound.broadcast`). An event
offered as a broadcast and later delivered with its run (the run became followed)
is not offered to topic subscribers a second time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container, Iterable
from typing import TYPE_CHECKING

from ..events import StreamEvent
from ..topics import topic_matches, topic_of
from .context import BridgeStats

if TYPE_CHECKING:
    from ..core.bus import EventBus

__all__ = ["Inbound"]

_SEEN_BROADCASTS = 4096


class Inbound:
    """Hands remote events to the local bus."""

    def __init__(self, bus: EventBus, stats: BridgeStats, topics: Iterable[str]) -> None:
        self.bus = bus
        self.stats = stats
        self._topics = tuple(topics)
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        """Broadcasts offered lately, as ``(run_id, seq)`` (bounded)."""

    def deliver(self, events: list[StreamEvent]) -> None:
        """Dispatch the next events of a followed run (in order) to the local bus."""
        seen = self._seen
        if seen and any((e.run_id, e.seq) in seen for e in events):
            for event in events:
                key = (event.run_id, event.seq)
                if key in seen:
                    del seen[key]
                    self.bus.deliver((event,), topics=False)
                else:
                    self.bus.deliver((event,))
        else:
            self.bus.deliver(events)
        self.stats.delivered += len(events)

    def broadcast(self, events: list[StreamEvent], followed: Container[str]) -> None:
        """Offer the wanted lifecycle events of runs not ``followed`` here to topic subscribers."""
        topics = self._topics
        seen = self._seen
        for event in events:
            if event.run_id in followed:
                continue  # followed: its run frames bring it
            topic = topic_of(event)
            if topic is None or not any(topic_matches(p, topic) for p in topics):
                continue
            seen[(event.run_id, event.seq)] = None
            if len(seen) > _SEEN_BROADCASTS:
                seen.popitem(last=False)
            self.stats.broadcasts += 1
            self.bus.broadcast(event)
