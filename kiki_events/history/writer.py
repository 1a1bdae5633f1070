"""The writer: events in, batches out, one transaction at a time, off the graph's path.

:meth:`HistoryWriter.add` is what the bus's sink calls for each event: it counts the
event into its run's row and appends it to a bounded buffer, nothing more (no I/O,
no encoding, no await). One supervised task takes up to ``batch_size`` events at a
time (waiting ``flush_interval`` for a batch to fill) with the rows of the runs they
changed, and writes them in one transaction. While the database cannot be written,
the batch stays at the head of the buffer and is retried with a backoff; new events
queue behind it until ``buffer_size``, beyond which they are dropped and counted
(:attr:`HistoryWriter.dropped`). A second task deletes finished runs older than the
retention in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from ..core.tasks import Backoff, stop_tasks, supervise
from ..errors import InvalidArgumentError, StoreError
from ..events import StreamEvent
from ..log import get_logger
from .base import Batch, EventStore
from .packing import event_rows
from .tally import RunMeta, RunTally

__all__ = ["HistoryWriter"]

logger = get_logger("kiki_events.history")

RETENTION_BATCH = 500
"""Runs deleted per retention transaction."""


class HistoryWriter:
    """Feeds an :class:`~kiki_events.history.base.EventStore` from events (see the module docstring).

    Args:
        store: where to write (opened by :meth:`start`, retried in the background while it fails).
        batch_size: most events written per transaction.
        flush_interval: seconds a first event waits for others to join its batch.
        buffer_size: events waiting at most; beyond it new ones are dropped and counted.
        retention: seconds a finished run is kept (``None``: for ever).
        retention_interval: seconds between retention sweeps.
        lookup: what the run store knows of a run (its owner, graph, node, thread),
            asked at a run's first event and at its ``done``.
        max_runs: runs tallied at once; beyond it the oldest are forgotten (their rows stay).
        on_drop: called once per dropped event with the reason (``store_full``: the buffer
            was full; ``store_refused``: the database refused it), e.g. to count it in a metric.
        pack_tokens: store a message's consecutive tokens in one row (:mod:`.packing`). Only
            for runs no other writer stores: a node storing other nodes' runs writes a token a row.
    """

    def __init__(
        self,
        store: EventStore,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.005,
        buffer_size: int = 100_000,
        retention: float | None = None,
        retention_interval: float = 3600.0,
        lookup: Callable[[str], RunMeta | None] | None = None,
        max_runs: int = 10_000,
        on_drop: Callable[[str], None] | None = None,
        pack_tokens: bool = True,
    ) -> None:
        if batch_size < 1 or buffer_size < 1 or max_runs < 1 or flush_interval < 0 or retention_interval <= 0:
            raise InvalidArgumentError(
                "HistoryWriter needs batch_size, buffer_size, max_runs >= 1, flush_interval >= 0, "
                "retention_interval > 0"
            )
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.buffer_size = buffer_size
        self.retention = retention
        self.retention_interval = retention_interval
        self._lookup = lookup
        self._max_runs = max_runs
        self._on_drop = on_drop
        self.pack_tokens = pack_tokens
        self.written = 0
        """Events written (a re-delivered event already stored counts again)."""
        self.dropped = 0
        """Events dropped: the buffer was full, or the database refused them (see ``on_drop``)."""
        self.failures = 0
        """Writes (or opens) that failed and were retried."""
        self.deleted = 0
        """Runs deleted by the retention."""
        self._buffer: deque[StreamEvent] = deque()
        self._runs: OrderedDict[str, RunTally] = OrderedDict()
        self._dirty: dict[str, RunTally] = {}
        self._agents: list[tuple[str, str]] = []
        self._threads: list[tuple[str, str | None, float]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._hurry = asyncio.Event()
        """Set by :meth:`flush` and by a full batch: write without waiting for the batch to fill."""
        self._open = False
        self._failing = False
        self._apart = 0
        """Events still to write one per transaction, after the database refused a batch holding them."""
        self._unencodable: list[StreamEvent] = []
        """Events of the batch being written that no row can hold (dropped once it is written)."""
        self._tasks: list[asyncio.Task[None]] = []

    # -- the sink's side (hot path) --------------------------------------------------------
    @property
    def pending(self) -> int:
        """Events waiting to be written."""
        return len(self._buffer)

    @property
    def connected(self) -> bool:
        """Whether the last open or write succeeded."""
        return self._open

    def add(self, event: StreamEvent) -> bool:
        """Queue ``event`` for writing; ``False`` (dropped and counted) when the buffer is full."""
        buffer = self._buffer
        queued = len(buffer)
        if queued >= self.buffer_size:
            self._count_drop("store_full")
            return False
        run_id = event.run_id
        tally = self._runs.get(run_id)
        if tally is None:
            tally = self._new_run(event)
        tally.add(event)
        agent = event.agent
        if agent is not None and agent not in tally.agents:
            tally.agents.add(agent)
            self._agents.append((run_id, agent))
        self._dirty[run_id] = tally
        buffer.append(event)
        if queued == 0:
            self._idle.clear()
            self._wake.set()
        elif queued + 1 == self.batch_size:
            self._hurry.set()
        return True

    def _new_run(self, event: StreamEvent) -> RunTally:
        meta = self._lookup(event.run_id) if self._lookup is not None else None
        tally = self._runs[event.run_id] = RunTally(event, meta)
        if tally.thread_id is not None:
            self._threads.append((tally.thread_id, tally.meta.principal, event.ts))
        if len(self._runs) > self._max_runs:
            self._runs.popitem(last=False)
        return tally

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store (a failure is logged and retried by the writer) and start both tasks."""
        if self._tasks:
            return
        try:
            await self.store.open()
            self._open = True
        except StoreError as exc:
            self.failures += 1
            logger.warning("the event store cannot be opened yet (events wait, up to %d): %s", self.buffer_size, exc)
        self._tasks.append(supervise("kiki-history-writer", self._write_forever))
        if self.retention is not None:
            self._tasks.append(supervise("kiki-history-retention", self._retain_forever))

    async def flush(self, timeout: float | None = None) -> bool:
        """Write what is queued now (without waiting for a batch to fill) and wait until it is written.

        Returns whether everything was written within ``timeout`` seconds.
        """
        if self._buffer:
            self._hurry.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, *, timeout: float = 5.0, close_store: bool = True) -> None:
        """Write what is queued (for up to ``timeout`` seconds), stop the tasks, close the store (unless not to)."""
        if self._tasks and not await self.flush(timeout):
            logger.warning("the event store was not written in %.1fs: %d events are lost", timeout, self.pending)
        tasks, self._tasks = self._tasks, []
        await stop_tasks(tasks)
        if close_store:
            await self.store.close()
            self._open = False

    # -- the writer task -------------------------------------------------------------------
    async def _write_forever(self) -> None:
        backoff = Backoff(0.05, 2.0)
        while True:
            if not self._open:
                try:
                    await self.store.open()
                    self._open = True
                    logger.info("the event store is reachable again; writing %d waiting events", self.pending)
                except StoreError as exc:
                    self.failures += 1
                    logger.debug("the event store cannot be opened: %s", exc)
                    await asyncio.sleep(backoff.next())
                    continue
            if not self._buffer:
                self._idle.set()
                self._hurry.clear()
                self._wake.clear()
                await self._wake.wait()
            if len(self._buffer) < self.batch_size and self.flush_interval > 0 and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval):
                        await self._hurry.wait()
            if await self._write_one():
                backoff.reset()
            else:
                await asyncio.sleep(backoff.next())

    def _take(self) -> tuple[Batch, dict[str, RunTally]]:
        if self._apart:
            return self._take_apart()
        events = list(itertools.islice(self._buffer, self.batch_size))
        self._unencodable = []
        rows = event_rows(events, pack=self.pack_tokens, refused=self._unencodable.append)
        batch = Batch(events=rows, agents=self._agents, threads=self._threads, count=len(events))
        dirty, self._dirty = self._dirty, {}
        batch.runs = [tally.row() for tally in dirty.values()]
        self._agents, self._threads = [], []
        return batch, dirty

    def _take_apart(self) -> tuple[Batch, dict[str, RunTally]]:
        """The next event alone, with only its own run's rows (another run's may be what was refused)."""
        event = self._buffer[0]
        run_id = event.run_id
        tally = self._dirty.pop(run_id, None)
        dirty = {run_id: tally} if tally is not None else {}
        thread_id = tally.thread_id if tally is not None else None
        agents = [pair for pair in self._agents if pair[0] == run_id]
        threads = [row for row in self._threads if row[0] == thread_id]
        self._agents = [pair for pair in self._agents if pair[0] != run_id]
        self._threads = [row for row in self._threads if row[0] != thread_id]
        rows = [t.row() for t in dirty.values()]
        self._unencodable = []
        events = event_rows([event], pack=False, refused=self._unencodable.append)
        return Batch(events=events, runs=rows, agents=agents, threads=threads, count=1), dirty

    async def _write_one(self) -> bool:
        batch, dirty = self._take()
        try:
            await self.store.write(batch)
        except StoreError as exc:
            if not exc.retryable:
                self._refused(batch, dirty, exc)
                return True
            self.failures += 1
            if not self._failing:
                self._failing = True
                logger.warning("writing to the event store failed (retrying; %d events wait): %s", self.pending, exc)
            for run_id, tally in dirty.items():
                self._dirty.setdefault(run_id, tally)
            self._agents[:0] = batch.agents
            self._threads[:0] = batch.threads
            return False
        if self._failing:
            self._failing = False
            logger.info("the event store is written again")
        self._done_with(batch)
        self.written += len(batch) - len(self._unencodable)
        for event in self._unencodable:  # counted once the batch is gone (a retried batch meets them again)
            logger.error("an event cannot be encoded for the event store; it is dropped: %s", event.id)
            self._count_drop("store_refused")
        for run_id, tally in dirty.items():
            if tally.ended and run_id not in self._dirty:
                self._runs.pop(run_id, None)
        return True

    def _count_drop(self, reason: str) -> None:
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop(reason)

    def _done_with(self, batch: Batch) -> None:
        buffer, count = self._buffer, len(batch)
        if count == len(buffer):
            buffer.clear()
        else:
            for _ in range(count):
                buffer.popleft()
        self._apart = max(0, self._apart - len(batch))

    def _refused(self, batch: Batch, dirty: dict[str, RunTally], exc: StoreError) -> None:
        """The database refused ``batch``'s data: find the event it refuses, drop it and carry on.

        A batch of several events is written again one event at a time; a single
        event refused (with the rows written along with it) is dropped and counted.
        """
        if len(batch) > 1:
            logger.warning("the event store refused a batch; writing its %d events one by one: %s", len(batch), exc)
            self._apart = len(batch)
            for run_id, tally in dirty.items():
                self._dirty.setdefault(run_id, tally)
            self._agents[:0] = batch.agents
            self._threads[:0] = batch.threads
            return
        logger.error("the event store refused an event; it is dropped: %s", exc)
        self._done_with(batch)
        for _ in range(len(batch)):
            self._count_drop("store_refused")

    # -- retention -------------------------------------------------------------------------
    async def _retain_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except StoreError as exc:
                logger.warning("deleting old runs from the event store failed: %s", exc)
            await asyncio.sleep(self.retention_interval)

    async def sweep(self, now: float | None = None) -> int:
        """Delete the finished runs older than the retention, in batches; returns how many."""
        if self.retention is None or not self._open:
            return 0
        before = (time.time() if now is None else now) - self.retention
        total = 0
        while True:
            deleted = await self.store.delete_finished(before, limit=RETENTION_BATCH)
            total += deleted
            self.deleted += deleted
            if deleted < RETENTION_BATCH:
                return total
            await asyncio.sleep(0)
