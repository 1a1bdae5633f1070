"""What a transport counts: frames and events in and out, drops by reason, delivery lag.

The Prometheus collector (:mod:`kiki_events.sinks.metrics`) and ``/healthz`` read
these; a transport only increments them.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["LAG_BUCKETS", "LagHistogram", "TransportStats"]

LAG_BUCKETS: tuple[float, ...] = tuple(0.0005 * 2**i for i in range(15))
"""Upper bounds of the delivery-lag histogram: 0.5 ms doubling to ~8 s.

Bridge lag is milliseconds, not the seconds of an LLM call, so the buckets start
lower than the LLM-duration buckets of the metrics while keeping their shape.
"""


class LagHistogram:
    """Publish-to-receipt delay of live frames (cumulative buckets read at scrape time)."""

    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: Sequence[float] = LAG_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """``(upper bound, count)`` pairs as Prometheus wants them, ``+Inf`` last."""
        total = 0
        out: list[tuple[str, int]] = []
        for bound, count in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


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
    lag: LagHistogram = field(default_factory=LagHistogram)

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count
