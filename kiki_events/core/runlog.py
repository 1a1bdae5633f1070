"""Replay buffers: the stored events of one run, shared by all its readers.

A :class:`RunLog` keeps the last N events of one run, each in a :class:`Frame`.
A frame holds the event and the facts a wire format needs about its place in the
run (:attr:`Frame.first_of_message`), decided once, in append order; it knows no
wire format itself. Formats (:mod:`kiki_events.formats`) memoise their bytes on
the frame (:meth:`Frame.encoded`), so each event is encoded once per format and
every client of the run reuses those bytes.

Readers do not get a queue each: a cursor (:mod:`kiki_events.core.cursors`)
remembers the last ``seq`` it delivered, asks the log for what came after
(:meth:`RunLog.read`), and otherwise waits on the log's :class:`Notifier`, which
every append wakes. Notices that concern everyone reading a run (``missed``: the
cross-node bridge lost events upstream) are kept in the log at the position where
they happened (:attr:`RunLog.notices`), so each cursor yields them in order with
the events around them.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from collections.abc import Callable, Hashable
from typing import TypeAlias

from ..errors import ConfigError
from ..events import DoneEvent, RunStatus, StatusEvent, StreamEvent, TokenEvent

__all__ = ["Frame", "Item", "Notifier", "RunLog"]

_MAX_NOTICES = 64
"""Run-wide notices a log keeps (the oldest are forgotten first)."""


class Frame:
    """One stored event, the format-neutral facts about it, and its encodings.

    ``first_of_message``: for a token, whether it is the first token of its
    message this log stored (formats may name the message's agent only there);
    ``True`` for every other event.
    """

    __slots__ = ("_data", "_key", "_more", "event", "first_of_message", "seq")
    _key: Hashable
    _data: bytes
    _more: dict[Hashable, bytes]

    def __init__(self, event: StreamEvent, *, first_of_message: bool = True) -> None:
        self.event = event
        self.seq = event.seq
        self.first_of_message = first_of_message
        # The memo slots stay unset until a format asks (one frame is built per
        # event, on the hot path): the first format's bytes then sit in two slots
        # (the common case: one format per server), any further format's in a dict.

    def encoded(self, key: Hashable, build: Callable[[Frame], bytes]) -> bytes:
        """This frame's bytes in the format ``key``, built by ``build`` once.

        Every later call with the same ``key`` returns the same bytes object; a
        format whose bytes differ per client must not use this.
        """
        try:
            first = self._key
        except AttributeError:
            data = self._data = build(self)
            self._key = key
            return data
        if first is key or first == key:
            return self._data
        try:
            more = self._more
        except AttributeError:
            more = self._more = {}
        cached = more.get(key)
        if cached is None:
            cached = more[key] = build(self)
        return cached


Item: TypeAlias = Frame | StatusEvent
"""What a cursor yields: a stored frame, or a connection-level notice (``seq == 0``)."""


def _seq(frame: Frame) -> int:
    return frame.seq


class Notifier:
    """Wakes every waiter once per burst of changes; costs nothing without waiters."""

    __slots__ = ("_event", "waiting")

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None
        self.waiting = 0
        """Readers currently waiting (for statistics and leak tests)."""

    def notify(self) -> None:
        event = self._event
        if event is not None:
            # Replaced rather than cleared: waiters already woken must not miss
            # the next burst, and new waiters get a fresh event.
            self._event = None
            event.set()

    async def wait(self) -> None:
        """Wait for the next :meth:`notify`."""
        event = self._event
        if event is None:
            event = self._event = asyncio.Event()
        self.waiting += 1
        try:
            await event.wait()
        finally:
            self.waiting -= 1


class RunLog:
    """The bounded replay buffer of one run."""

    def __init__(self, run_id: str, capacity: int) -> None:
        if capacity < 1:
            raise ConfigError(f"capacity must be at least 1; got {capacity}")
        self.run_id = run_id
        self.capacity = capacity
        self.last_seq = 0
        """Highest seq appended so far."""
        self.final_status: RunStatus | None = None
        """Status of the run's ``done`` event, once it arrived (or as given to :meth:`close`)."""
        self.closed = False
        """Forgotten by its store (or ended without a ``done``): readers stop."""
        self.syncing = False
        """Its history is still being fetched from the node that runs it (set by the
        cross-node bridge, see :meth:`set_syncing`): a
        :class:`~kiki_events.core.cursors.ThreadCursor` holds the thread's later runs
        back meanwhile."""
        self.synced_seq = 0
        """:attr:`last_seq` when :attr:`syncing` last ended: what came before is history
        fetched for the readers, which no reader counts as its backlog."""
        self.changed = Notifier()
        self.reordered = 0
        """Events that arrived after a later one (inserted in place)."""
        self._frames: list[Frame] = []
        # Messages a token was stored for: later tokens of the same message are
        # not the first of it (:attr:`Frame.first_of_message`).
        self._messages: set[str] = set()
        # Trimming in batches keeps appends O(1) amortised; at most this many
        # extra events are kept beyond ``capacity``.
        self._slack = max(16, capacity // 8)
        self.notices: deque[tuple[int, int, StatusEvent]] = deque(maxlen=_MAX_NOTICES)
        """Run-wide notices as ``(position, serial, notice)``: after the event ``position``."""
        self._notice_serial = 0

    @property
    def ended(self) -> bool:
        """Whether the run's ``done`` was appended (or the log was closed)."""
        return self.final_status is not None or self.closed

    @property
    def first_seq(self) -> int | None:
        """Oldest seq still kept."""
        return self._frames[0].seq if self._frames else None

    def __len__(self) -> int:
        return len(self._frames)

    def append(self, event: StreamEvent) -> bool:
        """Store ``event``; returns ``False`` for a duplicate or a notice (``seq == 0``)."""
        seq = event.seq
        frames = self._frames
        first = True
        if type(event) is TokenEvent:
            messages = self._messages
            first = event.message_id not in messages
            if first:
                messages.add(event.message_id)
        if seq > self.last_seq:
            frames.append(Frame(event, first_of_message=first))
            self.last_seq = seq
        elif seq == 0:
            return False
        else:
            # Events can arrive twice or late when they cross threads or nodes.
            index = bisect.bisect_left(frames, seq, key=_seq)
            if index < len(frames) and frames[index].seq == seq:
                return False
            if index == 0 and frames and len(frames) >= self.capacity:
                return False  # older than anything kept
            frames.insert(index, Frame(event, first_of_message=first))
            self.reordered += 1
        if type(event) is DoneEvent:
            self.final_status = event.status
        if len(frames) > self.capacity + self._slack:
            del frames[: len(frames) - self.capacity]
        self.changed.notify()
        return True

    def add_notice(self, notice: StatusEvent) -> None:
        """Keep a run-wide notice (``seq == 0``) after the last event; wakes readers.

        Every cursor reading past this point yields it, in order with the events.
        """
        self._notice_serial += 1
        self.notices.append((self.last_seq, self._notice_serial, notice))
        self.changed.notify()

    def set_syncing(self, syncing: bool) -> bool:
        """Set :attr:`syncing`; wakes the readers and returns ``True`` if it changed."""
        if syncing == self.syncing:
            return False
        self.syncing = syncing
        if not syncing:
            self.synced_seq = self.last_seq
        self.changed.notify()
        return True

    def close(self, status: RunStatus | None = None) -> None:
        """Mark the log as gone; waiting readers wake and stop.

        ``status``: how the run ended, when that is known although its ``done`` never
        reached this log (another node's run whose last events are lost).
        """
        self.closed = True
        if status is not None and self.final_status is None:
            self.final_status = status
        self.syncing = False  # nothing more will come
        self.changed.notify()

    def read(self, after: int, limit: int) -> tuple[list[Frame], int | None]:
        """Up to ``limit`` frames with ``seq > after``.

        Returns the frames and, when ``after`` is older than the oldest kept event
        (so events between were lost to this reader), that oldest kept seq.
        """
        frames = self._frames
        if not frames:
            return [], None
        first = frames[0].seq
        if after + 1 < first:
            return frames[:limit], first
        start = bisect.bisect_right(frames, after, key=_seq)
        return frames[start : start + limit], None
