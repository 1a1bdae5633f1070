"""Threads on this node: each thread's runs in start order, and who the thread belongs to.

A :class:`ThreadRecord` lists a conversation's runs kept here, oldest first, and
wakes the thread's readers when that list or one of its runs changes. The
:class:`ThreadIndex` holds them with the thread owners
(:class:`~kiki_events.core.owners.ThreadOwners`), which outlive a thread's runs:
a thread started by principal ``P`` is invisible to anyone else, so another user's
thread looks like it does not exist.
"""

from __future__ import annotations

import contextlib
import secrets
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import RunNotFoundError
from .owners import ThreadOwners
from .runlog import Notifier

__all__ = ["ThreadIndex", "ThreadRecord", "new_thread_id"]

_MAX_THREAD_RUNS = 256


@dataclass(eq=False)
class ThreadRecord:
    """A conversation: its owner and its runs, oldest first (bounded)."""

    thread_id: str
    principal: str | None = None
    runs: deque[str] = field(default_factory=lambda: deque(maxlen=_MAX_THREAD_RUNS))
    changed: Notifier = field(default_factory=Notifier)


def new_thread_id() -> str:
    """A fresh, unguessable thread id (nobody else can have claimed it)."""
    return secrets.token_urlsafe(16)


class _Started(Protocol):
    """A run as the thread list orders it: by when it started."""

    @property
    def created_at(self) -> float: ...


class ThreadIndex:
    """Thread id → :class:`ThreadRecord` for the threads with runs here, and their owners.

    Args:
        ttl: seconds a thread stays its owner's after its last run started or ended.
        max_threads: thread owners kept in all.
    """

    def __init__(self, *, ttl: float, max_threads: int) -> None:
        self.records: dict[str, ThreadRecord] = {}
        """The threads that have runs here (read directly on the bus's hot path)."""
        self.owners = ThreadOwners(ttl=ttl, max_threads=max_threads)
        """Who each thread belongs to (outlives the thread's runs here)."""

    def __len__(self) -> int:
        return len(self.records)

    def get(self, thread_id: str) -> ThreadRecord | None:
        """The record of ``thread_id`` whoever owns it, or ``None``."""
        return self.records.get(thread_id)

    def visible(self, thread_id: str, principal: str | None) -> ThreadRecord:
        """The thread ``thread_id`` as seen by ``principal``.

        Raises:
            RunNotFoundError: unknown, forgotten, or owned by someone else.
        """
        thread = self.records.get(thread_id)
        if thread is None or thread.principal != principal or not self.owns(thread_id, principal):
            raise RunNotFoundError(f"thread {thread_id!r} not found")
        return thread

    def adopt(self, thread_id: str, principal: str | None = None) -> ThreadRecord:
        """The record of ``thread_id`` (existing, or new and owned by ``principal``)."""
        thread = self.records.get(thread_id)
        if thread is None:
            thread = self.records[thread_id] = ThreadRecord(thread_id, principal)
        return thread

    def add_run(
        self, thread_id: str, run_id: str, *, created_at: float, principal: str | None, runs: Mapping[str, _Started]
    ) -> None:
        """Put a new run in its thread's list at its place in start order (``created_at``).

        Runs of other nodes are adopted in whatever order this node hears of them;
        thread streams read the list in this order. ``principal`` owns a thread new
        here unless an owner is recorded for it already. ``runs``: the runs kept
        here, by id.
        """
        thread = self.records.get(thread_id)
        if thread is None:
            owner = self.owners.get(thread_id)
            thread = self.adopt(thread_id, owner.principal if owner is not None else principal)
        position = len(thread.runs)
        while position > 0:
            before = runs.get(thread.runs[position - 1])
            if before is None or before.created_at <= created_at:
                break
            position -= 1
        if len(thread.runs) == thread.runs.maxlen:
            thread.runs.popleft()
            position = max(position - 1, 0)
        thread.runs.insert(position, run_id)
        thread.changed.notify()

    def remove_run(self, thread_id: str, run_id: str) -> None:
        """Take a forgotten run off its thread; a thread left without runs is dropped."""
        thread = self.records.get(thread_id)
        if thread is None:
            return
        with contextlib.suppress(ValueError):
            thread.runs.remove(run_id)
        thread.changed.notify()
        if not thread.runs:
            del self.records[thread_id]

    def notify(self, thread_id: str | None) -> None:
        """Wake the readers of ``thread_id`` (if it is known here)."""
        if thread_id is not None:
            thread = self.records.get(thread_id)
            if thread is not None:
                thread.changed.notify()

    def notify_all(self) -> None:
        """Wake the readers of every thread."""
        for thread in self.records.values():
            thread.changed.notify()

    @property
    def waiting(self) -> int:
        """Readers currently waiting for a change of any thread."""
        return sum(thread.changed.waiting for thread in self.records.values())

    # -- owners ------------------------------------------------------------------------------
    def claim(self, thread_id: str, principal: str | None, *, confirmed: bool = False) -> bool:
        """Make ``principal`` the thread's owner on this node unless someone else owns it;
        whether it is theirs. ``confirmed``: see :attr:`~kiki_events.core.owners.Owner.confirmed`."""
        thread = self.records.get(thread_id)
        first = principal
        if thread is not None and self.owners.get(thread_id) is None:
            first = thread.principal  # known here before an owner was recorded for it
        owner = self.owners.claim(thread_id, first, confirmed=confirmed and first == principal, active=self.records)
        return owner.principal == principal

    def decide(self, thread_id: str, principal: str | None) -> None:
        """Record the owner the cluster decided on; it overrides what this node believed."""
        self.owners.decide(thread_id, principal, active=self.records)
        thread = self.records.get(thread_id)
        if thread is not None and thread.principal != principal:
            thread.principal = principal
            thread.changed.notify()

    def owns(self, thread_id: str | None, principal: str | None) -> bool:
        """Whether nothing here says ``thread_id`` belongs to someone other than ``principal``."""
        if thread_id is None:
            return True
        owner = self.owners.get(thread_id)
        if owner is not None:
            return owner.principal == principal
        thread = self.records.get(thread_id)
        return thread is None or thread.principal == principal

    def touch(self, thread_id: str) -> None:
        """The thread was active: keep its owner ``ttl`` from now."""
        self.owners.touch(thread_id)

    def expire(self, now: float) -> int:
        """Forget owners past their time whose threads have no runs here; returns how many."""
        return self.owners.expire(self.records, now)
