"""The outbox: a bounded buffer of encoded events waiting to leave the node.

The producer (the bus sink, on the event loop) only appends; a supervised task
takes everything at once every flush and sends it. Events are grouped per run
so one flush makes one frame per run (or a few, if the run produced more than a
frame holds). When sending fails the batch goes back to the front, so events
leave in order once the connection is back; when the outbox is full new events
are dropped and counted — except a run's ``done``, which is always kept so a
remote reader never waits forever for the end of a run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import InvalidArgumentError
from .base import RunInfo

__all__ = ["Outbox", "OutboxBatch", "PendingRun", "chunks"]


@dataclass(eq=False, slots=True)
class PendingRun:
    """Encoded events of one run waiting to be sent, in seq order."""

    events: list[bytes] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)


@dataclass(eq=False)
class OutboxBatch:
    """Everything taken from the outbox for one flush."""

    runs: dict[str, PendingRun]
    lifecycle: list[bytes]
    registry: dict[str, tuple[RunInfo, bool]]
    """Run id → (latest registry entry, announce it to its thread's watchers)."""
    count: int
    """Run events in ``runs`` (what the outbox bound counts)."""


class Outbox:
    """See the module docstring. Not thread-safe: used on the event loop only."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise InvalidArgumentError(f"capacity must be at least 1; got {capacity}")
        self.capacity = capacity
        self.depth = 0
        """Run events waiting to be taken."""
        self.in_flight = 0
        """Run events taken by a flush that has not succeeded yet (they count against the bound)."""
        self._runs: dict[str, PendingRun] = {}
        self._lifecycle: list[bytes] = []
        self._registry: dict[str, tuple[RunInfo, bool]] = {}

    def __len__(self) -> int:
        return self.depth + self.in_flight

    @property
    def empty(self) -> bool:
        return not (self.depth or self._lifecycle or self._registry)

    def add(self, run_id: str, seq: int, data: bytes, *, lifecycle: bool = False, keep: bool = False) -> bool:
        """Queue one encoded run event; ``False`` if it was dropped for lack of room.

        ``lifecycle`` also queues it for the lifecycle broadcast; ``keep`` queues it
        even when the outbox is full (a run's ``done``).
        """
        if self.depth + self.in_flight >= self.capacity and not keep:
            return False
        pending = self._runs.get(run_id)
        if pending is None:
            pending = self._runs[run_id] = PendingRun()
        pending.events.append(data)
        pending.seqs.append(seq)
        self.depth += 1
        if lifecycle:
            self._lifecycle.append(data)
        return True

    def register(self, info: RunInfo, *, announce: bool = False) -> None:
        """Queue a registry update; a later one for the same run replaces it."""
        previous = self._registry.get(info.run_id)
        self._registry[info.run_id] = (info, announce or (previous is not None and previous[1]))

    def pending(self, run_id: str) -> int:
        """Events of ``run_id`` waiting."""
        pending = self._runs.get(run_id)
        return len(pending.events) if pending is not None else 0

    def take(self) -> OutboxBatch | None:
        """Everything queued (``None`` if nothing is); the outbox is empty afterwards."""
        if self.empty:
            return None
        batch = OutboxBatch(self._runs, self._lifecycle, self._registry, self.depth)
        self._runs, self._lifecycle, self._registry = {}, [], {}
        self.in_flight += self.depth
        self.depth = 0
        return batch

    def sent(self, batch: OutboxBatch) -> None:
        """A taken batch reached the transport."""
        self.in_flight -= batch.count

    def restore(self, batch: OutboxBatch) -> None:
        """Put a batch that could not be sent back in front of what came since."""
        runs = batch.runs
        for run_id, newer in self._runs.items():
            older = runs.get(run_id)
            if older is None:
                runs[run_id] = newer
            else:
                older.events.extend(newer.events)
                older.seqs.extend(newer.seqs)
        self._runs = runs
        self.depth += batch.count
        self.in_flight -= batch.count
        self._lifecycle = batch.lifecycle + self._lifecycle
        registry = batch.registry
        for run_id, (info, announce) in self._registry.items():
            previous = registry.get(run_id)
            registry[run_id] = (info, announce or (previous is not None and previous[1]))
        self._registry = registry


def chunks(events: list[bytes], max_events: int, max_bytes: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` slices of ``events`` of at most ``max_events`` events and ``max_bytes`` bytes.

    An event larger than ``max_bytes`` gets a slice of its own (the caller drops it).
    """
    start = 0
    size = 0
    for index, data in enumerate(events):
        grown = size + len(data) + 1
        if index > start and (index - start >= max_events or grown > max_bytes):
            yield start, index
            start, size = index, len(data) + 1
        else:
            size = grown
    if start < len(events):
        yield start, len(events)
