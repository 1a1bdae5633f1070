"""A thread's stream with the runs that left memory, read from the event store first.

A :class:`StoredThreadCursor` delivers the thread's stored runs that ``in_memory``
does not name (the server names the runs in memory that are not stored whole; oldest first, each through a
:class:`~kiki_events.core.backfill.StoredCursor`), then hands over to the thread's
ordinary :class:`~kiki_events.core.cursors.ThreadCursor` for the runs still in
memory and those still to come. Which runs are in memory is asked again before each
stored run, so a run that leaves memory while the stream reads the store is read
from the store too, never lost; the thread cursor is given only the runs not
delivered already.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TypeAlias

from .backfill import StoredCursor
from .cursors import RunCursor, ThreadCursor
from .runlog import Item

__all__ = ["Reader", "StoredThreadCursor"]


class StoredThreadCursor:
    """Reads a thread's stored runs, then ``then`` (see the module docstring).

    Args:
        stored: the thread's stored run ids, oldest first.
        in_memory: the thread's run ids in memory now.
        open_run: a cursor reading one stored run after a seq.
        then: makes the thread cursor that follows, given which runs to read and where
            to resume (``None``: finish after the stored runs).
        resume: ``(run_id, seq)`` to resume after; a stored run resumes there (the runs
            before it are skipped); a run in memory (or known nowhere) is the thread
            cursor's to resume, after every stored run (none, for a run in memory).
    """

    def __init__(
        self,
        thread_id: str,
        stored: Sequence[str],
        in_memory: Callable[[], Collection[str]],
        open_run: Callable[[str, int], StoredCursor],
        then: Callable[[Callable[[str], bool], tuple[str, int] | None], ThreadCursor] | None,
        *,
        resume: tuple[str, int] | None = None,
    ) -> None:
        self.thread_id = thread_id
        self.finished = False
        self.dropped = False
        self.delivered: set[str] = set()
        """Runs delivered from the store (the thread cursor leaves them out)."""
        self._stored = list(stored)
        self._after: dict[str, int] = {}
        self._resume = resume
        """Where the thread cursor resumes (a run in memory, or one known nowhere)."""
        if resume is not None and resume[0] in self._stored and resume[0] not in in_memory():
            start = self._stored.index(resume[0])
            self.delivered.update(self._stored[:start])
            self._stored = self._stored[start:]
            self._after[resume[0]] = resume[1]
            self._resume = None
        elif resume is not None and resume[0] in in_memory():
            self._stored = []  # the stored runs came before it
        self._in_memory = in_memory
        self._open_run = open_run
        self._then = then
        self._current: StoredCursor | None = None
        self._following: ThreadCursor | None = None

    async def next(self, limit: int = 512) -> list[Item]:
        """Wait for at least one item; an empty list means the cursor is finished."""
        while not self.finished:
            current = self._current or self._next_stored()
            if current is not None:
                items = await current.next(limit)
                if current.finished:
                    self._current = None
                if items:
                    return items
                continue
            if self._then is None:
                self.finished = True
                break
            following = self._following
            if following is None:
                following = self._following = self._then(self._undelivered, self._resume)
            items = await following.next(limit)
            self.finished, self.dropped = following.finished, following.dropped
            return items
        return []

    def _undelivered(self, run_id: str) -> bool:
        return run_id not in self.delivered

    def _next_stored(self) -> StoredCursor | None:
        """The cursor of the oldest stored run not delivered and not in memory now."""
        in_memory = self._in_memory()
        stored = self._stored
        for index, run_id in enumerate(stored):
            if run_id in in_memory:
                continue  # the thread cursor's, unless it leaves memory before the hand-over
            del stored[index]
            self.delivered.add(run_id)
            self._current = self._open_run(run_id, self._after.get(run_id, 0))
            return self._current
        return None


Reader: TypeAlias = RunCursor | ThreadCursor | StoredCursor | StoredThreadCursor
"""What a stream reads: each has ``next(limit)``, ``finished`` and ``dropped``."""
