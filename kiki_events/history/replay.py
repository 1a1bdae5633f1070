"""Stored events published on the bus again, marked as replayed (docs/history.md, "Replay").

:func:`republish` reads a run's, a thread's or a time range's events from the
store and hands them to :meth:`EventBus.replay <kiki_events.core.bus.EventBus.replay>`:
they reach only the sinks and subscriptions that asked for replayed events (e.g. a
projection being rebuilt), never the run store, the metrics, the history sink or
the bridge, so nothing counts them as new runs or stores them twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core.bus import EventBus
from ..errors import BusError, InvalidArgumentError
from .base import EventPage, EventStore, Principal

__all__ = ["republish"]


async def republish(
    store: EventStore,
    bus: EventBus,
    principal: Principal,
    *,
    run_id: str | None = None,
    thread_id: str | None = None,
    types: Sequence[str] = (),
    agent: str | None = None,
    since: float | None = None,
    until: float | None = None,
    page: int = 500,
) -> int:
    """Publish stored events on ``bus`` as replayed; returns how many.

    ``run_id`` (its events in order) or ``thread_id`` (its runs oldest first), or
    neither: every event ``principal`` may see with ``ts`` in ``[since, until)``,
    oldest first; ``types`` and ``agent`` filter as in the store's queries. Pages of
    ``page`` events are published one at a time, each after the bus's handlers are
    done with the previous one (so a bounded subscription is not flooded).

    Raises:
        BusError: ``bus`` is not running.
        RunNotFoundError: the run or thread is not stored or not ``principal``'s.
        InvalidArgumentError: both ``run_id`` and ``thread_id``, or a time range with either.
        StoreError: the database failed.
    """
    if not bus.running:
        raise BusError("republish needs a running EventBus")
    scoped = run_id is not None or thread_id is not None
    if scoped and (since is not None or until is not None):
        raise InvalidArgumentError("republish takes a time range, or a run or a thread, not both")
    count = 0
    cursor: str | None = None
    while True:
        result: EventPage
        if scoped:
            result = await store.events(
                principal, run_id=run_id, thread_id=thread_id, types=types, agent=agent, limit=page, cursor=cursor
            )
        else:
            result = await store.search(
                principal, types=types, agent=agent, since=since, until=until, limit=page, cursor=cursor
            )
        count += bus.replay(result.events)
        await bus.drain()
        cursor = result.cursor
        if cursor is None:
            return count
