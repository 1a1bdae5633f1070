"""What a transport counts: frames and events in and out, drops by reason, delivery lag.

``/healthz`` and the Prometheus metrics (:mod:`kiki_events.sinks.parts`) read these;
a transport only increments them. Delivery lag is not kept here: it is handed, one
observation per live frame, to the observer the composition root connects
(``on_lag``: the ``kiki_bridge_delivery_lag_seconds`` histogram).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["TransportStats"]


@dataclass
class TransportStats:
    """Counters of one transport; read them, do not write them."""

    messages_out: int = 0
    """Frames sent (one Redis message or stream entry each)."""
    messages_in: int = 0
    """Frames received and accepted."""
    events_out: int = 0
    """Run events sent (a frame carries several)."""
    events_in: int = 0
    """Run events received for runs this node follows (live, replayed or backfilled)."""
    lifecycle_in: int = 0
    """Lifecycle events received as broadcasts."""
    reconnects: int = 0
    """Connections re-established after a loss."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Events or frames lost, by reason (``outbox_full``, ``malformed``, ``oversized`` …)."""
    on_lag: Callable[[float], object] | None = None
    """Called with the publish-to-receipt delay, in seconds, of each live frame received."""

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    def observe_lag(self, seconds: float) -> None:
        """Report the delay of one live frame (clock skew between nodes can make it negative: 0)."""
        on_lag = self.on_lag
        if on_lag is not None:
            on_lag(max(seconds, 0.0))
