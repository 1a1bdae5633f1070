"""The transport seam: what the bridge needs from a way of moving events between nodes.

A transport moves *frames* (see :mod:`~kiki_events.transports.wire`) between the
nodes of one deployment and keeps the run registry (where each run executes and
its status). It never touches the local bus: the :class:`~kiki_events.bridge.Bridge`
owns that. The seam is three narrow protocols, which :class:`Transport` combines
for the bridge:

* :class:`FrameTransport` – moving frames: lifecycle, state, stats, ``publish``,
  ``flush``, ``watch``/``unwatch``/``backfill``;
* :class:`ControlChannel` – messages to one node or all: ``send_control``, ``send_replay``;
* :class:`RunRegistry` – where runs execute and who owns a thread: ``register``,
  ``lookup_run``, ``thread_runs``, ``claim_thread``/``thread_owner``, and node
  liveness (``heartbeat``/``alive``).

Three implementations:

* :class:`~kiki_events.transports.memory.MemoryTransport` – several runtimes in one
  process, connected through a shared :class:`~kiki_events.transports.memory.MemoryHub`;
* :class:`~kiki_events.redis.pubsub.RedisPubSubTransport` – lowest latency,
  at-most-once (gaps are repaired from the owning node or reported);
* :class:`~kiki_events.redis.streams.RedisStreamsTransport` – durable: every
  run in a stream that outlives the node that produced it.

Publishing is never awaited by the producer: :meth:`FrameTransport.publish` puts the
encoded event into a bounded outbox that a supervised task flushes in batches.

Adding a transport: one file, a subclass of
:class:`~kiki_events.transports.common.BaseTransport` (which already implements
the outbox, ``publish``/``register``/``flush``, state, intake checks and the
control messages), writing only how frames are sent (``_send``,
``_send_control_frames``), read (``_start_reader``, ``watch``, ``unwatch``) and
how the registry is kept; then one line in ``PROVIDERS`` of
:mod:`kiki_events.runtime.build` (its name also listed in
``kiki_events.config.PROVIDERS``, which that table must match).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, runtime_checkable

from ..core.records import RunInfo, ThreadOwner
from ..events import StreamEvent
from .stats import TransportStats

if TYPE_CHECKING:
    from .wire import Message

__all__ = [
    "ControlChannel",
    "ControlMessage",
    "FrameTransport",
    "RunInfo",
    "RunRegistry",
    "ThreadOwner",
    "Transport",
    "TransportListener",
    "TransportState",
    "WatchKind",
]

TransportState: TypeAlias = Literal["new", "connecting", "connected", "reconnecting", "closed"]
"""``connecting`` until the first connection, ``reconnecting`` after losing it; ``connected``
while the reader is up and publishing is not failing."""
WatchKind: TypeAlias = Literal["run", "thread"]


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

        After a loss, a transport that is not :attr:`~FrameTransport.durable` may have
        lost what was sent meanwhile.
        """


@runtime_checkable
class FrameTransport(Protocol):
    """Moves frames between nodes: run events out through an outbox, watched runs and threads in."""

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


@runtime_checkable
class ControlChannel(Protocol):
    """Sends control messages and replay answers to one node (or every node)."""

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


@runtime_checkable
class RunRegistry(Protocol):
    """The cluster's run registry: where each run executes, the runs and owner of a thread, live nodes."""

    def register(self, info: RunInfo, *, announce: bool = False) -> None:
        """Queue a registry update (``announce``: also tell watchers of its thread)."""

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


@runtime_checkable
class Transport(FrameTransport, ControlChannel, RunRegistry, Protocol):
    """Moves frames between nodes and keeps the run registry: what the bridge drives.

    Stable API for code built on the bridge: :attr:`node`, :attr:`name`,
    :attr:`durable`, :attr:`state`, :attr:`stats`, :meth:`connected`, :meth:`publish`,
    :meth:`flush`, :meth:`send_control`, :meth:`lookup_run`. The rest is driven by the bridge.
    """
