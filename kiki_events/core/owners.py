"""Thread owners on this node: who a thread belongs to, kept as long as the thread's data is.

A thread belongs to the principal whose run used it first; anyone else is told it
does not exist. A thread's data outlives the replay buffers of its runs (a LangGraph
checkpointer keeps the conversation under its thread id), so an owner is kept while
the thread has runs here and for ``runs.thread_ttl`` after its last run started or
ended — not forgotten with its last run. At most ``runs.max_threads`` owners are kept;
beyond that the owners of the threads idle longest are forgotten first (counted in
:attr:`ThreadOwners.evicted`, logged once).

With a cross-node bridge this table is a cache of the cluster-wide decision kept in
the run registry (:meth:`~kiki_events.bridge.Bridge.claim_thread`): :meth:`ThreadOwners.decide`
records what the cluster said, and wins over what this node believed.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass

from ..log import get_logger

__all__ = ["Owner", "ThreadOwners"]

logger = get_logger("kiki_events.runs")


@dataclass(eq=False, slots=True)
class Owner:
    """The owner of one thread, as this node knows it."""

    principal: str | None
    until: float
    """Kept at least until then (wall clock), and while the thread has runs here."""
    confirmed: bool = False
    """No other principal can hold the thread anywhere: the cluster-wide registry said so,
    or this node generated the thread's id. Such an owner is trusted while Redis is away."""


class ThreadOwners:
    """Bounded map of thread id → :class:`Owner` (see the module docstring).

    Args:
        ttl: seconds an owner is kept after the thread's last activity.
        max_threads: owners kept in all.
    """

    def __init__(self, *, ttl: float, max_threads: int) -> None:
        self.ttl = ttl
        self.max_threads = max_threads
        self.evicted = 0
        """Owners forgotten before their time because more than ``max_threads`` threads are known."""
        self._owners: OrderedDict[str, Owner] = OrderedDict()
        self._evicted_logged = False

    def __len__(self) -> int:
        return len(self._owners)

    def get(self, thread_id: str) -> Owner | None:
        """The owner of ``thread_id``, or ``None`` when nobody owns it here."""
        return self._owners.get(thread_id)

    def claim(
        self, thread_id: str, principal: str | None, *, confirmed: bool = False, active: Container[str] = ()
    ) -> Owner:
        """Make ``principal`` the owner unless someone owns the thread already; returns the owner.

        The owner's time is renewed when it is ``principal``. ``confirmed``: see
        :attr:`Owner.confirmed`. ``active``: threads that still have runs here (never
        evicted to make room).
        """
        owner = self._owners.get(thread_id)
        if owner is None:
            owner = self._owners[thread_id] = Owner(principal, time.time() + self.ttl, confirmed)
            self._bound(active)
        elif owner.principal == principal:
            owner.confirmed = owner.confirmed or confirmed
            self.touch(thread_id)
        return owner

    def decide(self, thread_id: str, principal: str | None, *, active: Container[str] = ()) -> Owner:
        """Record the owner the cluster decided on (it overrides what this node believed)."""
        owner = self._owners.get(thread_id)
        if owner is None:
            owner = self._owners[thread_id] = Owner(principal, time.time() + self.ttl, confirmed=True)
            self._bound(active)
            return owner
        owner.principal = principal
        owner.confirmed = True
        self.touch(thread_id)
        return owner

    def touch(self, thread_id: str) -> None:
        """The thread was active: keep its owner ``ttl`` from now."""
        owner = self._owners.get(thread_id)
        if owner is not None:
            owner.until = max(owner.until, time.time() + self.ttl)
            self._owners.move_to_end(thread_id)

    def expire(self, active: Container[str], now: float | None = None) -> int:
        """Forget owners past their time whose threads have no runs here; returns how many."""
        now = time.time() if now is None else now
        expired = []
        for thread_id, owner in self._owners.items():
            if owner.until > now:
                break  # kept in order of activity, so every later one is due later
            if thread_id not in active:
                expired.append(thread_id)
        for thread_id in expired:
            del self._owners[thread_id]
        return len(expired)

    def _bound(self, active: Container[str]) -> None:
        excess = len(self._owners) - self.max_threads
        if excess <= 0:
            return
        # The least recently active first; threads with runs here stay.
        victims = list(itertools.islice((t for t in self._owners if t not in active), excess))
        for thread_id in victims:
            del self._owners[thread_id]
        self.evicted += len(victims)
        if victims and not self._evicted_logged:
            self._evicted_logged = True
            logger.warning(
                "more than %d thread owners (runs.max_threads): forgetting the owners of the threads idle longest",
                self.max_threads,
            )
