"""What every transport shares: the outbox flusher, state, supervision, control messages.

:class:`BaseTransport` implements the producer side of the protocol (``publish``
into the outbox, a supervised task flushing it with backoff while the connection
is down), the transport's state, and sending control messages and replay answers
as frames; the checks on everything received are its
:class:`~kiki_events.transports.intake.Intake`. A transport only says how frames
are sent and read, and how it keeps the run registry (see
:mod:`~kiki_events.transports.base` for adding one).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from ..codec import encode
from ..core.tasks import Backoff, stop_tasks, supervise
from ..errors import TransportError
from ..events import DoneEvent, StreamEvent
from ..log import get_logger
from ..redaction import redact_text
from ..topics import topic_of
from .base import ControlMessage, RunInfo, TransportListener, TransportState
from .frames import control_frame, replay_frames
from .intake import Intake
from .options import TransportOptions
from .outbox import Outbox, OutboxBatch
from .stats import TransportStats

__all__ = ["BaseTransport"]

logger = get_logger("kiki_events.bridge")

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
        self._intake = Intake(node, self.stats, options.max_message_bytes)
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
        self._listener = self._intake.listener = listener
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
        """Validate one frame from outside and hand it to the listener (see :meth:`Intake.receive`)."""
        return self._intake.receive(data, live=live)

    def _safely(self, method: Callable[..., object], *args: object) -> None:
        self._intake.safely(method, *args)

    def _log_once(self, kind: str, message: str, *args: object) -> None:
        self._intake.log_once(kind, message, *args)

    # -- control messages ---------------------------------------------------------------------
    async def send_control(self, message: ControlMessage, node: str | None = None) -> None:
        """See :meth:`ControlChannel.send_control <kiki_events.transports.base.ControlChannel.send_control>`."""
        await self._send_control_frames(node, [control_frame(self.node, message)])

    async def send_replay(
        self, node: str, run_id: str, events: Sequence[bytes], *, first: int | None = None, gone: bool = False
    ) -> None:
        """See :meth:`ControlChannel.send_replay <kiki_events.transports.base.ControlChannel.send_replay>`."""
        frames = replay_frames(self.node, run_id, events, self.options, first=first, gone=gone)
        await self._send_control_frames(node, frames)

    async def _send_control_frames(self, node: str | None, frames: Sequence[bytes]) -> None:
        """Send ``frames`` where ``node`` (``None``: every node) reads control messages, in order.

        Raises:
            TransportError: they could not be sent now.
        """
        raise NotImplementedError

    # -- reading back ------------------------------------------------------------------------
    async def backfill(self, run_id: str, after: int) -> bool:
        """Deliver stored events after ``after`` again: only durable transports can (``False`` here)."""
        return False
