"""The transport seam: what the bridge needs from a way of moving events between nodes.

A transport moves *frames* (see :mod:`~kiki_events.transports.wire`) between the
nodes of one deployment and keeps the run registry (where each run executes and
its status). It never touches the local bus: the :class:`~kiki_events.bridge.Bridge`
owns that. Three implementations:

* :class:`~kiki_events.transports.memory.MemoryTransport` – several runtimes in one
  process, connected through a shared :class:`~kiki_events.transports.memory.MemoryHub`;
* :class:`~kiki_events.redis.pubsub.RedisPubSubTransport` – lowest latency,
  at-most-once (gaps are repaired from the owning node or reported);
* :class:`~kiki_events.redis.streams.RedisStreamsTransport` – durable: every
  run in a stream that outlives the node that produced it.

Publishing is never awaited by the producer: :meth:`Transport.publish` puts the
encoded event into a bounded outbox that a supervised task flushes in batches.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, runtime_checkable

from ..core.records import RunInfo, ThreadOwner
from ..events import StreamEvent

if TYPE_CHECKING:
    from .wire import Message

__all__ = [
    "LAG_BUCKETS",
    "ControlMessage",
    "LagHistogram",
    "RunInfo",
    "ThreadOwner",
    "Transport",
    "TransportListener",
    "TransportState",
    "TransportStats",
    "WatchKind",
]

TransportState: TypeAlias = Literal["new", "connecting", "connected", "reconnecting", "closed"]
"""``connecting`` until the first connection, ``reconnecting`` after losing it; ``connected``
while the reader is up and publishing is not failing."""
WatchKind: TypeAlias = Literal["run", "thread"]

LAG_BUCKETS: tuple[float, ...] = tuple(0.0005 * 2**i for i in range(15))
"""Upper bounds of the delivery-lag histogram: 0.5 ms doubling to ~8 s.

Bridge lag is milliseconds, not the seconds of an LLM call, so the buckets start
lower than the LLM-duration buckets of OBSERVABILITY.md while keeping their shape.
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


@dataclass(frozen=True)
class ControlMessage:
    """A request from one node to another (or to all): ``cancel``, ``replay``, or your own op."""

    op: str
    sender: str
    payload: Mapping[str, Any] = field(default_factory=dict)


class TransportListener(Protocol):
    """What a transport calls; implemented by the bridge. Called on the event loop, never awaited."""

    def on_frame(self, message: Message) -> None:
        """A frame of run events (live, replayed or backfilled) or lifecycle broadcasts arrived."""

    def on_control(self, message: ControlMessage) -> None:
        """A control message for this node (or for every node) arrived."""

    def on_connected(self, resumed: bool) -> None:
        """The reader is connected: for the first time, or again after a loss (``resumed``).

        After a loss, a transport that is not :attr:`~Transport.durable` may have
        lost what was sent meanwhile.
        """


@runtime_checkable
class Transport(Protocol):
    """Moves frames between nodes and keeps the run registry.

    Stable API for code built on the bridge: :attr:`node`, :attr:`name`,
    :attr:`durable`, :attr:`state`, :attr:`stats`, :meth:`connected`, :meth:`publish`,
    :meth:`flush`, :meth:`send_control`, :meth:`lookup_run`. The rest is driven by the bridge.
    """

    name: str
    """``memory``, ``redis-pubsub`` or ``redis-streams``."""
    node: str
    """This node's name (the sender of every frame it publishes)."""
    durable: bool
    """Whether run events can be read back from the transport (streams) or only from their node."""
    stats: TransportStats

    @property
    def state(self) -> TransportState: ...

    @property
    def outbox_depth(self) -> int:
        """Events waiting to be sent."""
        ...

    def describe(self) -> dict[str, Any]:
        """Non-secret facts for ``/healthz`` (the Redis URL with its password masked)."""
        ...

    async def start(self, listener: TransportListener) -> None:
        """Start the supervised reader and publisher; returns without waiting for a connection."""

    async def connected(self, timeout: float | None = None) -> bool:
        """Wait until :attr:`state` is ``connected``: the reader is up, so a :meth:`watch`
        takes effect at once, and publishing is not failing.

        Returns ``False`` if that did not happen within ``timeout`` seconds (``None``:
        no limit) or the transport is closed. Woken by state changes, not polling.
        """

    async def close(self, *, timeout: float = 5.0) -> None:
        """Flush what is queued (up to ``timeout``), then stop."""

    def publish(self, event: StreamEvent, data: bytes | None = None) -> bool:
        """Queue a run event (``data``: its :func:`~kiki_events.codec.encode` bytes) without blocking.

        Returns ``False`` when the outbox is full (the event is dropped and counted).
        Never raises.
        """

    def register(self, info: RunInfo, *, announce: bool = False) -> None:
        """Queue a registry update (``announce``: also tell watchers of its thread)."""

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the outbox is empty; ``False`` if it is not after ``timeout``."""

    async def watch(self, kind: WatchKind, key: str, *, after: int = 0) -> bool:
        """Start receiving a run's frames (or a thread's run announcements).

        Durable transports also deliver what is stored after seq ``after`` first.
        Returns when the subscription is effective (``False`` if it could not be
        confirmed now; it is restored on reconnect).
        """

    async def unwatch(self, kind: WatchKind, key: str) -> None:
        """Stop receiving a run's (or thread's) frames."""

    async def backfill(self, run_id: str, after: int) -> bool:
        """Durable transports: deliver stored events after ``after`` again; others return ``False``."""

    async def send_control(self, message: ControlMessage, node: str | None = None) -> None:
        """Send a control message to ``node`` (``None``: every node).

        Raises:
            TransportError: it could not be sent now.
        """

    async def send_replay(
        self, node: str, run_id: str, events: Sequence[bytes], *, first: int | None = None, gone: bool = False
    ) -> None:
        """Answer ``node``'s replay request: ``events`` (encoded) in frames sent in one go.

        ``first``: the oldest seq still kept, when older ones were asked for;
        ``gone``: this node no longer knows the run. The last frame is marked as the end.

        Raises:
            TransportError: they could not be sent now.
        """

    async def heartbeat(self, ttl: float) -> None:
        """Tell the other nodes this node is alive for the next ``ttl`` seconds.

        Raises:
            TransportError: it could not be sent now.
        """

    async def alive(self, nodes: Sequence[str]) -> set[str]:
        """Which of ``nodes`` sent a heartbeat that has not expired.

        Raises:
            TransportError: the registry cannot be reached now.
        """

    async def lookup_run(self, run_id: str) -> RunInfo | None:
        """The registry's entry for ``run_id``.

        Raises:
            TransportError: the registry cannot be reached now.
        """

    async def thread_runs(self, thread_id: str) -> list[RunInfo]:
        """The registry's runs of ``thread_id``, oldest first.

        Raises:
            TransportError: the registry cannot be reached now.
        """

    async def claim_thread(self, thread_id: str, principal: str | None) -> ThreadOwner:
        """Make ``principal`` the owner of ``thread_id`` unless it has one (set-if-absent, atomic
        across the cluster); returns the owner it has now.

        The owner is kept at least ``thread_ttl``, and each registry update of a run of the
        thread keeps it at least as long as that run's entry.

        Raises:
            TransportError: the registry cannot be reached now.
        """

    async def thread_owner(self, thread_id: str) -> ThreadOwner | None:
        """The owner of ``thread_id``, or ``None`` if nobody claimed it (or its claim expired).

        Raises:
            TransportError: the registry cannot be reached now.
        """


Clock: TypeAlias = Callable[[], float]
