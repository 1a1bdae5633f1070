"""Reading a run from the event store, then from its replay buffer: no gap, no duplicate.

A :class:`StoredCursor` serves a run whose events, some or all, have left its
:class:`~kiki_events.core.runlog.RunLog` (its ``replay_ttl`` expired, the buffer's
bound pushed them out, the node restarted, or the node that ran it is gone). It
reads the store page by page from its position; given the run's live log, it hands
over to an ordinary :class:`~kiki_events.core.cursors.RunCursor` as soon as the log
holds the next event it needs, so the store provides exactly what the buffer lost
and the buffer continues from the next seq. A reader that later falls behind the
buffer (slower than the run) goes back to the store rather than skipping ahead; the
``sse.max_backlog`` policy still applies to it while it reads the buffer.

An event evicted from the buffer may not be in the store yet: the store's writer
writes in batches. The cursor then asks ``settle`` (the local writer's flush) and
reads again; an event still missing (another node's writer has not written it yet)
is waited for with a backoff for up to ``patience`` seconds. Events the store never
got (dropped when its buffer was full) are reported with a ``gap`` notice, as a
buffer reports what it no longer keeps.

The cursor knows no database: ``fetch(after, limit)`` reads the store. Its items
are frames like a log's (:class:`~kiki_events.core.runlog.Frame`), so every wire
format encodes them as it encodes live ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

from ..events import StatusEvent, StreamEvent, TokenEvent
from .cursors import RunCursor
from .runlog import Frame, Item, RunLog
from .tasks import Backoff

__all__ = ["Fetch", "Seen", "Settle", "StoredCursor"]

Fetch = Callable[[int, int], Awaitable[list[StreamEvent]]]
"""``fetch(after, limit)``: up to ``limit`` stored events of the run with ``seq > after``, in order."""
Settle = Callable[[], Awaitable[object]]
"""Waits until the events this node handed to the store are written (a writer's flush)."""
Seen = Callable[[int], Awaitable[Iterable[str]]]
"""``seen(after)``: ids of messages with tokens at or before ``after`` (their next token is not their first)."""


class StoredCursor:
    """Reads one run from the store after ``after``, then from ``log`` (see the module docstring).

    Args:
        fetch: reads the store.
        log: the run's replay buffer while the run is known in memory; ``None`` for a
            run known only to the store (the cursor finishes after its last stored event).
        live: makes the cursor that continues on ``log`` after a seq.
        settle: makes this node's writes visible (called at most once per missing stretch).
        seen: asked, each time the cursor turns to the store after delivering something,
            which messages already had tokens (:attr:`Frame.first_of_message`).
        patience: seconds to wait for events of a live run that are in neither the
            store nor the buffer yet, before reporting a gap.
    """

    def __init__(
        self,
        run_id: str,
        fetch: Fetch,
        *,
        after: int = 0,
        log: RunLog | None = None,
        live: Callable[[RunLog, int], RunCursor] | None = None,
        settle: Settle | None = None,
        seen: Seen | None = None,
        thread_id: str | None = None,
        patience: float = 2.0,
    ) -> None:
        self.run_id = run_id
        self.after = after
        """Last seq delivered."""
        self.finished = False
        self.dropped = False
        """The live cursor dropped the client for being slow (the ``disconnect`` policy)."""
        self.from_store = 0
        """Events delivered from the store."""
        self._fetch = fetch
        self._log = log
        self._make_live = live if live is not None else (lambda log, after: RunCursor(log, after, thread_id=thread_id))
        self._live: RunCursor | None = None
        self._settle = settle
        self._seen = seen
        self._messages: set[str] | None = None
        self._thread_id = thread_id
        self._patience = patience

    async def next(self, limit: int = 512) -> list[Item]:
        """Wait for at least one item; an empty list means the cursor is finished."""
        while not self.finished:
            log = self._log
            if log is not None and self._covered(log):
                live = self._live
                if live is None:
                    live = self._live = self._make_live(log, self.after)
                items = live.poll(limit)
                self.after, self.finished, self.dropped = live.after, live.finished, live.dropped
                if self.finished and not self.dropped and log.closed:
                    # The log was closed (its node is gone, say) with fewer events than the store may hold.
                    self.finished, self._log = False, None
                if items or self.finished:
                    return items
                await log.changed.wait()
                continue
            # Behind the buffer (at the start, or a reader slower than the run): the store has it.
            if self._live is not None or self._messages is None:
                self._live = None
                self._messages = set(await self._seen(self.after)) if self._seen and self.after else set()
            items = await self._from_store(limit)
            if items:
                return items
        return []

    def _covered(self, log: RunLog) -> bool:
        """Whether ``log`` holds the event after :attr:`after` (or nothing was ever lost from it)."""
        first = log.first_seq
        return first is None or self.after + 1 >= first

    async def _from_store(self, limit: int) -> list[Item]:
        """The next stored events as frames (with a ``gap`` notice before a stretch no one has)."""
        events = await self._fetch(self.after, limit)
        log = self._log
        if log is not None and not self._contiguous(events):
            events = await self._wait_for_store(log, events, limit)
            if self._covered(log) and not self._contiguous(events):
                return []  # the buffer has it after all: hand over
        if not events:
            if log is None:
                self.finished = True  # a stored run: nothing after its last stored event
                return []
            return [self._gap(int(log.first_seq or log.last_seq + 1))]  # lost before the store got it
        items: list[Item] = []
        if events[0].seq > self.after + 1:
            items.append(self._gap(events[0].seq))
        for event in events:
            if event.seq <= self.after:
                continue
            if event.seq > self.after + 1:
                break  # another stretch missing: the next read reports it (or finds it written by then)
            items.append(self._frame(event))
            self.after = event.seq
            self.from_store += 1
        return items

    def _contiguous(self, events: list[StreamEvent]) -> bool:
        return bool(events) and events[0].seq == self.after + 1

    async def _wait_for_store(self, log: RunLog, events: list[StreamEvent], limit: int) -> list[StreamEvent]:
        """Read again until the next event is stored (or the buffer has it, or patience runs out)."""
        if self._settle is not None:
            await self._settle()
            events = await self._fetch(self.after, limit)
        backoff = Backoff(0.01, 0.25)
        deadline = time.monotonic() + self._patience
        while not self._contiguous(events) and not self._covered(log) and time.monotonic() < deadline:
            await asyncio.sleep(backoff.next())  # another node's writer: its next batch is on its way
            events = await self._fetch(self.after, limit)
        return events

    def _frame(self, event: StreamEvent) -> Frame:
        first = True
        messages = self._messages
        if type(event) is TokenEvent and messages is not None:
            first = event.message_id not in messages
            messages.add(event.message_id)
        return Frame(event, first_of_message=first)

    def _gap(self, first_seq: int) -> StatusEvent:
        """A ``gap`` notice: the events after :attr:`after` and before ``first_seq`` are kept nowhere."""
        missing = f"{self.after + 1}" if first_seq == self.after + 2 else f"{self.after + 1} to {first_seq - 1}"
        notice = StatusEvent(
            run_id=self.run_id,
            seq=0,
            ts=round(time.time(), 3),
            thread_id=self._thread_id,
            status="gap",
            first_seq=first_seq,
            detail=f"events {missing} are kept neither in memory nor in the event store; "
            f"continuing from seq {first_seq}",
        )
        self.after = first_seq - 1
        return notice
