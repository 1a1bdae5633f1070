"""Cursors: how readers follow a run's (or a thread's) replay buffer.

Readers do not get a queue each: a :class:`RunCursor` remembers the last ``seq``
it delivered, asks the :class:`~kiki_events.core.runlog.RunLog` for what came
after, and otherwise waits on the log's
:class:`~kiki_events.core.runlog.Notifier`, which every append wakes. A cursor
that points before the oldest kept event is told so (a ``gap`` notice on join,
``lagging`` when it fell behind while reading), never silently skipped ahead. A
cursor given a ``max_backlog`` also counts as lagging once more than that many
events arrived since it joined and were not yet delivered (a slow or stalled
client): it skips ahead to half that far behind the newest event, with a
``lagging`` notice, or finishes (the ``disconnect`` policy). Its initial replay
never counts, nor does history another node's run fetches for its log
(:attr:`~kiki_events.core.runlog.RunLog.syncing`).

Cursors yield :data:`~kiki_events.core.runlog.Item`: stored frames and
connection-level notices, in order; a wire format turns them into bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Literal, TypeAlias

from ..errors import ConfigError
from ..events import StatusEvent
from .runlog import Frame, Item, Notifier, RunLog

__all__ = ["RunCursor", "SlowClientPolicy", "ThreadCursor"]

SlowClientPolicy: TypeAlias = Literal["skip", "disconnect"]


def notice(
    log: RunLog,
    status: Literal["gap", "lagging"],
    first_seq: int,
    *,
    thread_id: str | None,
    backlog: int | None = None,
) -> StatusEvent:
    """A connection-level notice about ``log``'s run (``seq == 0``, no ``id`` line).

    ``backlog``: the client fell more than this many events behind (``lagging``
    from a backlog rather than from the replay window).
    """
    if status == "gap":
        detail = f"the requested position is older than the {log.capacity} events kept; continuing from seq {first_seq}"
    elif backlog is not None:
        detail = f"this client fell more than {backlog} events behind the run; skipped ahead to seq {first_seq}"
    else:
        detail = f"this client fell behind the {log.capacity} events kept; skipped ahead to seq {first_seq}"
    return StatusEvent(
        run_id=log.run_id,
        seq=0,
        ts=round(time.time(), 3),
        thread_id=thread_id,
        status=status,
        first_seq=first_seq,
        detail=detail,
    )


class RunCursor:
    """Reads one run from a position onwards; see the module docstring.

    ``on_lag`` is called once per ``lagging`` notice (for counting). With the
    ``disconnect`` policy the cursor is finished after that notice.
    ``max_backlog``: events that may arrive after the cursor was made and stay
    undelivered before it counts as lagging (``None``: only the replay window counts).
    """

    def __init__(
        self,
        log: RunLog,
        after: int = 0,
        *,
        thread_id: str | None = None,
        slow_client: SlowClientPolicy = "skip",
        on_lag: Callable[[], None] | None = None,
        max_backlog: int | None = None,
    ) -> None:
        if max_backlog is not None and max_backlog < 2:
            raise ConfigError(f"max_backlog must be at least 2; got {max_backlog}")
        self.log = log
        self.after = after
        """Last seq delivered."""
        self.finished = False
        """Everything was delivered (the run ended), or the client must be dropped."""
        self.dropped = False
        """The client fell behind and must be dropped (the ``disconnect`` policy)."""
        self._thread_id = thread_id
        self._slow_client = slow_client
        self._on_lag = on_lag
        self._max_backlog = max_backlog
        # Events already there when the cursor was made are its replay, not a backlog.
        self._joined = log.last_seq
        self._started = False
        self._notice_serial = 0

    @property
    def caught_up(self) -> bool:
        """The run ended and every kept event up to its last was delivered."""
        log = self.log
        return log.ended and self.after >= log.last_seq

    def poll(self, limit: int = 512) -> list[Item]:
        """What is available now, without waiting (may be empty)."""
        if self.finished:
            return []
        log = self.log
        frames, first = log.read(self.after, limit)
        backlog = self._max_backlog
        if first is None and backlog is not None and not log.syncing and self._behind() > backlog:
            frames, _ = log.read(log.last_seq - backlog // 2, limit)
            first = frames[0].seq if frames else None
            self._started = True
        else:
            backlog = None
        items: list[Item] = []
        if first is not None:
            status: Literal["gap", "lagging"] = "lagging" if self._started else "gap"
            items.append(notice(log, status, first, thread_id=self._thread_id, backlog=backlog))
            if status == "lagging":
                if self._on_lag is not None:
                    self._on_lag()
                if self._slow_client == "disconnect":
                    self.finished = self.dropped = True
                    return items
        self._started = True
        notices = self.log.notices
        if notices and notices[-1][1] > self._notice_serial:
            self._merge_notices(items, frames, notices)
        elif frames:
            items.extend(frames)
        if frames:
            self.after = frames[-1].seq
        if self.caught_up:
            self.finished = True
        return items

    def _behind(self) -> int:
        """Events that arrived live since this cursor was made and are not delivered yet."""
        log = self.log
        return log.last_seq - max(self.after, self._joined, log.synced_seq)

    def _merge_notices(
        self, items: list[Item], frames: list[Frame], notices: Iterable[tuple[int, int, StatusEvent]]
    ) -> None:
        """Interleave run-wide notices not yet seen with ``frames``, by position."""
        start = self.after
        end = frames[-1].seq if frames else start
        index = 0
        for position, serial, notice in notices:
            if serial <= self._notice_serial:
                continue
            if position < start:  # from before this reader's position
                self._notice_serial = serial
                continue
            if position > end:  # after what is delivered now: next time
                break
            while index < len(frames) and frames[index].seq <= position:
                items.append(frames[index])
                index += 1
            items.append(notice)
            self._notice_serial = serial
        items.extend(frames[index:])

    async def next(self, limit: int = 512) -> list[Item]:
        """Wait for at least one item; an empty list means the cursor is finished."""
        while not self.finished:
            items = self.poll(limit)
            if items:
                return items
            if self.finished:
                break
            await self.log.changed.wait()
        return []


class ThreadCursor:
    """Reads every run of a thread, oldest run first, then follows new runs live.

    ``runs`` returns the thread's current logs in start order; ``changed`` is
    notified when any of them grows, starts or stops :attr:`~RunLog.syncing`, or a
    run joins the thread. Runs that are live interleave, each in its own order;
    but a run's events are delivered only once every earlier run has either
    ended and been delivered or is live and in sync: while an earlier run of
    another node is still catching up with its history (``syncing``), the later
    runs wait, so a reader never gets a later run before an earlier one's replay.
    The bridge clears ``syncing`` when the catch-up is done or given up, so this
    never waits forever. Once ``until()``
    is true (no new runs will come, e.g. the server is stopping), the cursor
    finishes after delivering what its runs still have. A resume point
    ``(run_id, seq)`` skips the runs before ``run_id``; if that run is no longer
    known, the cursor says so with a ``gap`` notice and replays what is kept.
    """

    def __init__(
        self,
        thread_id: str,
        runs: Callable[[], Iterable[RunLog]],
        changed: Notifier,
        *,
        resume: tuple[str, int] | None = None,
        slow_client: SlowClientPolicy = "skip",
        on_lag: Callable[[], None] | None = None,
        until: Callable[[], bool] | None = None,
        max_backlog: int | None = None,
    ) -> None:
        self.thread_id = thread_id
        self._max_backlog = max_backlog
        self._until = until
        self._runs = runs
        self._changed = changed
        self._slow_client = slow_client
        self._on_lag = on_lag
        self._cursors: dict[str, RunCursor] = {}
        self._done: set[str] = set()
        self.finished = False
        self.dropped = False
        """The client fell behind and must be dropped (the ``disconnect`` policy)."""
        self._pending: list[Item] = []
        if resume is not None:
            self._resume(*resume)

    def _resume(self, run_id: str, seq: int) -> None:
        logs = list(self._runs())
        ids = [log.run_id for log in logs]
        if run_id not in ids:
            if logs:
                first = logs[0]
                self._pending.append(
                    StatusEvent(
                        run_id=run_id,
                        seq=0,
                        ts=round(time.time(), 3),
                        thread_id=self.thread_id,
                        status="gap",
                        detail="the requested run is no longer kept; replaying every run still kept on this thread",
                        first_seq=first.first_seq,
                    )
                )
            return
        for log in logs:
            if log.run_id == run_id:
                self._cursors[run_id] = self._cursor(log, seq)
                break
            self._done.add(log.run_id)

    def _cursor(self, log: RunLog, after: int = 0) -> RunCursor:
        return RunCursor(
            log,
            after,
            thread_id=self.thread_id,
            slow_client=self._slow_client,
            on_lag=self._on_lag,
            max_backlog=self._max_backlog,
        )

    def poll(self, limit: int = 512) -> list[Item]:
        """What is available now across the thread's runs, without waiting."""
        items, self._pending = self._pending, []
        logs = list(self._runs())
        # Forget runs that left the thread, so a long-lived stream stays bounded.
        self._done &= {log.run_id for log in logs}
        for log in logs:
            if len(items) >= limit:
                break
            run_id = log.run_id
            if run_id in self._done:
                continue
            cursor = self._cursors.get(run_id)
            if cursor is None or cursor.log is not log:
                cursor = self._cursors[run_id] = self._cursor(log)
            items.extend(cursor.poll(limit - len(items)))
            if cursor.finished:
                if not cursor.caught_up:  # dropped for being slow
                    self.finished = self.dropped = True
                    return items
                self._done.add(run_id)
                del self._cursors[run_id]
            elif log.syncing:
                break  # later runs wait until this one has caught up with its history
        if self._until is not None and self._until() and not self._cursors and len(items) < limit:
            # Nothing more will start here: end the stream once every run was delivered.
            self.finished = all(log.run_id in self._done for log in logs)
        return items

    async def next(self, limit: int = 512) -> list[Item]:
        """Wait for at least one item; an empty list means the cursor is finished."""
        while not self.finished:
            items = self.poll(limit)
            if items or self.finished:
                return items
            await self._changed.wait()
        return []
