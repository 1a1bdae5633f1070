"""What every transport shares: options, the outbox flusher, frame intake, supervision.

:class:`BaseTransport` implements the producer side of the protocol (``publish``
into the outbox, a supervised task flushing it with backoff while the connection
is down) and the checks on everything received (size, version, validation, echo
suppression), so each transport only says how frames are sent and read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..codec import encode
from ..core.tasks import Backoff, stop_tasks, supervise
from ..errors import TransportError
from ..events import DoneEvent, StreamEvent
from ..redaction import redact_text
from ..topics import topic_of
from .base import ControlMessage, RunInfo, TransportListener, TransportState, TransportStats
from .outbox import Outbox, OutboxBatch, chunks
from .wire import KIND_BATCH, KIND_CONTROL, KIND_LIFECYCLE, KIND_REPLAY, WireError, pack, unpack

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["BaseTransport", "TransportOptions"]

logger = logging.getLogger("kiki_events.bridge")

_HEADER_ROOM = 1024
"""Bytes kept free in a frame for its header."""


@dataclass(frozen=True)
class TransportOptions:
    """Knobs every transport reads; :meth:`from_settings` maps them from the YAML."""

    prefix: str = "kiki:"
    """Key and channel prefix: isolates deployments (tenants) sharing one Redis."""
    outbox_size: int = 100_000
    batch_size: int = 256
    """Most events in one frame."""
    flush_interval: float = 0.002
    max_message_bytes: int = 1 << 20
    """Largest frame sent or accepted."""
    timeout: float = 5.0
    """Longest wait for one flush to Redis."""
    lifecycle: bool = True
    """Receive lifecycle broadcasts (``eventbus.subscribe.events`` is not empty)."""
    publish: bool = True
    """Send this node's events (``eventbus.publish.enabled``)."""
    run_ttl: float = 7 * 86400.0
    """How long a finished run's stream and registry entry are kept."""
    stream_maxlen: int = 10_000
    """Approximate bound of each run stream, in entries (frames)."""
    thread_ttl: float = 7 * 86400.0
    """Least lifetime of a thread's owner after its last registry update (``runs.thread_ttl``)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> TransportOptions:
        """Options from the ``eventbus`` section (and ``runs.replay_ttl`` for pub/sub retention)."""
        bus = settings.eventbus
        persistence = bus.persistence
        if persistence.run_ttl is not None:
            run_ttl = persistence.run_ttl
        elif bus.provider == "redis" and bus.redis.mode == "streams":
            run_ttl = persistence.retention_days * 86400.0
        else:
            # Without streams a run's history lives in its node's memory only.
            run_ttl = settings.runs.replay_ttl
        return cls(
            prefix=bus.redis.channel_prefix,
            outbox_size=bus.publish.outbox_size,
            batch_size=bus.publish.batch_size,
            flush_interval=bus.publish.flush_interval,
            max_message_bytes=bus.publish.max_message_bytes,
            timeout=bus.publish.timeout or 5.0,
            lifecycle=bool(bus.subscribe.events),
            publish=bus.publish.enabled,
            run_ttl=max(run_ttl, 1.0),
            stream_maxlen=persistence.stream_maxlen,
            thread_ttl=settings.runs.thread_ttl,
        )

    def owner_ttl(self, entry_ttl: float) -> int:
        """Seconds a thread's owner is kept from an update whose run entry lives ``entry_ttl``."""
        return max(int(self.thread_ttl), int(entry_ttl), 1)

    @property
    def frame_bytes(self) -> int:
        """Room for events in one frame."""
        return max(self.max_message_bytes - _HEADER_ROOM, 256)


_STOP_GRACE = 0.5
"""Seconds a read loop gets to notice the transport closed before it is cancelled."""


class BaseTransport:
    """Shared machinery; subclasses implement :meth:`_send` and their reader."""

    name = "base"
    durable = False

    def __init__(self, *, node: str, options: TransportOptions | None = None) -> None:
        self.node = node
        self.options = options = options or TransportOptions()
        self.stats = TransportStats()
        self._outbox = Outbox(options.outbox_size)
        self._listener: TransportListener | None = None
        self._flush_event = asyncio.Event()
        self._wanted = False
        self._sending = False
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._started = False
        self._out_ok: bool | None = None
        self._in_ok: bool | None = None
        self._ever_in = False
        self._overflow_logged = False
        self._outage_logged = False
        self._rejected_logged: set[str] = set()
        self._bad_listener_logged = False
        self._state_changed: asyncio.Event | None = None
        self._flushed: asyncio.Event | None = None
        """Set (and replaced) when a batch was sent and when closing: wakes :meth:`flush`."""

    # -- state ---------------------------------------------------------------------------
    @property
    def state(self) -> TransportState:
        if self._closed:
            return "closed"
        if not self._started:
            return "new"
        # Connected means the reader is up (a watch takes effect at once) and
        # publishing is not failing; a publish that succeeded is not enough.
        if self._in_ok is True and self._out_ok is not False:
            return "connected"
        if not self._ever_in:
            return "connecting"
        return "reconnecting"

    def _changed(self) -> None:
        """The state may have changed: wake the waiters of :meth:`connected`."""
        event, self._state_changed = self._state_changed, None
        if event is not None:
            event.set()

    async def connected(self, timeout: float | None = None) -> bool:
        """See :meth:`Transport.connected <kiki_events.transports.base.Transport.connected>`."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            state = self.state
            if state in ("connected", "closed"):
                return state == "connected"
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            event = self._state_changed
            if event is None:
                event = self._state_changed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)

    @property
    def outbox_depth(self) -> int:
        return len(self._outbox)

    def describe(self) -> dict[str, Any]:
        return {"transport": self.name, "prefix": self.options.prefix}

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self, listener: TransportListener) -> None:
        if self._started:
            raise TransportError(f"the {self.name} transport was started already")
        self._listener = listener
        self._started = True
        self._changed()
        self._tasks.append(supervise(f"kiki-bridge-flush:{self.name}", self._flush_forever))
        await self._start_reader()

    async def _start_reader(self) -> None:
        """Subclasses start their supervised reader here."""

    async def close(self, *, timeout: float = 5.0) -> None:
        if self._closed:
            return
        if self._started:
            await self.flush(timeout)
        self._closed = True  # the read loops see it within a fraction of a second
        self._flush_event.set()  # and the flusher wakes up to see it
        self._changed()
        self._flush_ended()  # waiters of flush() give up
        tasks, self._tasks = self._tasks, []
        await stop_tasks(tasks, grace=_STOP_GRACE)
        unsent = len(self._outbox)
        if unsent:
            self.stats.drop("closed", unsent)
            logger.warning("bridge closed with %d event(s) not sent", unsent)
        await self._close_connections()

    async def _close_connections(self) -> None:
        """Subclasses release their connections here."""

    # -- producer side (event loop, hot path) ------------------------------------------------
    def publish(self, event: StreamEvent, data: bytes | None = None) -> bool:
        if self._closed or not self.options.publish:
            return False
        if data is None:
            data = encode(event)
        if len(data) > self.options.frame_bytes:
            self.stats.drop("oversized")
            self._log_once("oversized_out", "an event of %d bytes is larger than a frame; dropped", len(data))
            return False
        kind = type(event)
        lifecycle = kind is not DoneEvent and topic_of(event) is not None
        if not self._outbox.add(event.run_id, event.seq, data, lifecycle=lifecycle, keep=kind is DoneEvent):
            self.stats.drop("outbox_full")
            if not self._overflow_logged:
                self._overflow_logged = True
                logger.warning(
                    "bridge outbox full (%d events): dropping new events until it drains", self.options.outbox_size
                )
            return False
        if not self._wanted:
            self._want_flush()
        return True

    def register(self, info: RunInfo, *, announce: bool = False) -> None:
        if self._closed or not self.options.publish:
            return
        self._outbox.register(info, announce=announce)
        if not self._wanted:
            self._want_flush()

    def _want_flush(self) -> None:
        if self._started:
            self._wanted = True
            self._flush_event.set()

    async def flush(self, timeout: float = 5.0) -> bool:
        """See :meth:`Transport.flush <kiki_events.transports.base.Transport.flush>`; ``False`` once closed.

        Woken by the flusher each time it sent a batch, not by polling.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._outbox.empty or self._sending:
            remaining = deadline - loop.time()
            if remaining <= 0 or self._closed or not self._started:
                return False
            event = self._flushed
            if event is None:
                event = self._flushed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)
        return True

    def _flush_ended(self) -> None:
        """A batch was sent, or the transport closed: wake the waiters of :meth:`flush`."""
        event, self._flushed = self._flushed, None
        if event is not None:
            event.set()

    async def _flush_forever(self) -> None:
        backoff = Backoff()
        interval = self.options.flush_interval
        while not self._closed:
            await self._flush_event.wait()
            if interval > 0 and self._outbox.depth < self.options.batch_size and self._out_ok is not False:
                await asyncio.sleep(interval)
            self._flush_event.clear()
            self._wanted = False
            batch = self._outbox.take()
            if batch is None:
                continue
            self._sending = True
            try:
                async with asyncio.timeout(self.options.timeout):  # never loses a cancellation, unlike wait_for
                    await self._send(batch)
            except asyncio.CancelledError:
                self._outbox.restore(batch)
                raise
            except Exception as exc:
                self._outbox.restore(batch)
                self._publish_failed(exc)
                self._sending = False
                await asyncio.sleep(backoff.next())
                self._want_flush()
                continue
            self._outbox.sent(batch)
            self._sending = False
            self._flush_ended()
            backoff.reset()
            self._publish_ok()
            if not self._outbox.empty:
                self._want_flush()
            elif self._overflow_logged:
                self._overflow_logged = False
                logger.info("bridge outbox drained")

    async def _send(self, batch: OutboxBatch) -> None:
        raise NotImplementedError

    def _publish_failed(self, exc: BaseException) -> None:
        if self._out_ok is not False:
            self._out_ok = False
            self._changed()
        if not self._outage_logged:
            self._outage_logged = True
            logger.warning(
                "bridge cannot publish (%s: %s); keeping events in the outbox and retrying",
                type(exc).__name__,
                redact_text(str(exc)),
            )

    def _publish_ok(self) -> None:
        if self._out_ok is False and self._outage_logged:
            logger.info("bridge publishing again")
        if self._out_ok is not True:
            self._out_ok = True
            self._changed()
        self._outage_logged = False

    # -- consumer side ---------------------------------------------------------------------
    def _reader_up(self) -> None:
        """The reader (re)connected; tells the listener if it had been lost before."""
        again = self._ever_in
        self._in_ok = True
        self._ever_in = True
        if again:
            self.stats.reconnects += 1
            logger.info("bridge reconnected (%s)", self.name)
        listener = self._listener
        if listener is not None:
            self._safely(listener.on_connected, again)
        self._changed()

    def _reader_down(self, exc: BaseException) -> None:
        if self._in_ok is not False:
            logger.warning(
                "bridge lost its %s connection (%s: %s); reconnecting",
                self.name,
                type(exc).__name__,
                redact_text(str(exc)),
            )
        self._in_ok = False
        self._changed()

    def _receive(self, data: bytes | str, *, live: bool = True) -> str | None:
        """Validate one frame from outside and hand it to the listener (never raises).

        Returns why it was dropped (counted and logged), or ``None``.
        """
        try:
            message = unpack(data, max_bytes=self.options.max_message_bytes)
        except WireError as exc:
            self.stats.drop(exc.reason)
            self._log_once(exc.reason, "dropped a frame from the transport: %s", exc)
            return exc.reason
        if message.sender == self.node:
            return None  # our own frame: never re-deliver it here
        listener = self._listener
        if listener is None:
            return None
        kind = message.kind
        if kind == KIND_CONTROL:
            op = message.header.get("o")
            payload = message.header.get("p", {})
            if not isinstance(op, str) or not op or not isinstance(payload, dict):
                self.stats.drop("malformed")
                self._log_once("malformed", "dropped a frame from the transport: %s", "invalid control message")
                return "malformed"
            self.stats.messages_in += 1
            self._safely(listener.on_control, ControlMessage(op, message.sender, payload))
            return None
        self.stats.messages_in += 1
        if kind == KIND_LIFECYCLE:
            self.stats.lifecycle_in += len(message.events)
        else:
            self.stats.events_in += len(message.events)
        if live and kind in (KIND_BATCH, KIND_LIFECYCLE):
            self.stats.lag.observe(time.time() - message.sent_at)
        self._safely(listener.on_frame, message)
        return None

    def _safely(self, method: Callable[..., object], *args: object) -> None:
        try:
            method(*args)
        except Exception:
            self.stats.drop("listener_error")
            if not self._bad_listener_logged:
                self._bad_listener_logged = True
                logger.exception("the bridge failed to handle a frame")

    def _log_once(self, kind: str, message: str, *args: object) -> None:
        if kind in self._rejected_logged:
            logger.debug(message, *args)
            return
        self._rejected_logged.add(kind)
        logger.warning(message + " (logged once per kind; see kiki_events_dropped_total)", *args)


def replay_frames(
    node: str,
    run_id: str,
    events: Sequence[bytes],
    options: TransportOptions,
    *,
    first: int | None = None,
    gone: bool = False,
) -> list[bytes]:
    """The frames of a replay answer: ``f`` (first kept seq) on the first, ``e`` (end) on the last."""
    now = time.time()
    parts = list(chunks(list(events), options.batch_size, options.frame_bytes)) or [(0, 0)]
    frames = []
    for index, (start, stop) in enumerate(parts):
        header: dict[str, Any] = {}
        if index == 0 and first is not None:
            header["f"] = first
        if index == len(parts) - 1:
            header["e"] = 1
            if gone:
                header["g"] = 1
        frames.append(pack(KIND_REPLAY, node, events[start:stop], sent_at=now, run_id=run_id, **header))
    return frames


def control_extra(message: ControlMessage) -> Mapping[str, Any]:
    """Header keys of a control frame."""
    return {"o": message.op, "p": dict(message.payload)}


async def cancel_quietly(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait for it, whatever it raises."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
