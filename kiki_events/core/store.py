"""The run store: what this node remembers about runs, from the events on its bus.

:class:`RunStore` sees every event on the bus (it is a bus sink) and keeps, per
run, its metadata and a bounded replay buffer (:class:`~kiki_events.core.runlog.RunLog`),
plus its threads (:class:`~kiki_events.core.threads.ThreadIndex`). Finished runs are
kept ``replay_ttl``, at most ``max_runs`` runs in all; a task sweeps expired ones.

Ownership: a run or thread started by principal ``P`` is invisible (``RunNotFoundError``)
to any other principal, so another user's run looks like it does not exist. A thread
stays ``P``'s after its runs are forgotten, for ``runs.thread_ttl`` (see
:mod:`~kiki_events.core.owners`); with a bridge the cluster decides (``Bridge.claim_thread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable

from ..config import RunSettings
from ..errors import RunError, RunNotFoundError
from ..events import StatusEvent, StreamEvent
from ..log import get_logger
from .runlog import RunLog
from .runrecord import RunRecord
from .threads import ThreadIndex, ThreadRecord

__all__ = ["RunStore"]

logger = get_logger("kiki_events.runs")


class RunStore:
    """Run metadata and replay buffers; attach with ``bus.add_sink(store.sink)``.

    Args:
        replay_events: events kept per run for join and resume.
        replay_ttl: seconds a finished run stays joinable.
        max_runs: runs kept in all; the oldest finished ones are forgotten first.
        thread_ttl: seconds a thread stays its owner's after its last run started or ended.
        max_threads: thread owners kept in all.
    """

    def __init__(
        self,
        *,
        replay_events: int = 20000,
        replay_ttl: float = 600.0,
        max_runs: int = 10000,
        thread_ttl: float = 7 * 86400.0,
        max_threads: int = 100_000,
    ) -> None:
        self.replay_events = replay_events
        self.replay_ttl = replay_ttl
        self.max_runs = max_runs
        self.evicted = 0
        """Runs forgotten (expired or pushed out by ``max_runs``)."""
        # Streaming clients, counted by the server: fell behind (``sse.slow_client``), dropped
        # for accepting nothing for ``sse.send_timeout``, connected now, connected since start,
        # and connections ended by reason (``completed``, ``client``, ``slow_client`` …).
        self.lagging = self.stalled = self.clients = self.connections = 0
        self.disconnects: dict[str, int] = {}
        self._runs: OrderedDict[str, RunRecord] = OrderedDict()
        self.threads = ThreadIndex(ttl=thread_ttl, max_threads=max_threads)
        """The threads of the runs kept here, and their owners."""
        self.owners = self.threads.owners
        """Who each thread belongs to (outlives the thread's runs here)."""
        self._threads = self.threads.records
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False
        self.on_created: list[Callable[[RunRecord], object]] = []
        """Called with each record made by :meth:`create` (runs started on this node)."""

    @classmethod
    def from_settings(cls, settings: RunSettings) -> RunStore:
        """A store sized by the ``runs`` settings section."""
        return cls(
            replay_events=settings.replay_events,
            replay_ttl=settings.replay_ttl,
            max_runs=settings.max_runs,
            thread_ttl=settings.thread_ttl,
            max_threads=settings.max_threads,
        )

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the periodic eviction of expired runs."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="kiki-run-store-sweeper")

    async def close(self) -> None:
        """Stop the sweeper and wake every reader (their runs are gone)."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        self.stop_following()
        for record in list(self._runs.values()):
            self._forget(record)

    async def _sweep_forever(self) -> None:
        interval = min(max(self.replay_ttl / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            try:
                self.evict_expired()
            except Exception:  # a bug here must not stop eviction for good
                logger.exception("evicting expired runs failed")

    # -- the bus sink (hot path: O(1), no awaits) ------------------------------------------
    def sink(self, event: StreamEvent) -> None:
        """Record ``event``; called by the bus for every event.

        A notice (``seq == 0`` status) about a known run goes to that run's readers.
        """
        if event.seq == 0:
            if type(event) is StatusEvent:
                known = self._runs.get(event.run_id)
                if known is not None:
                    known.log.add_notice(event)
            return
        record = self._runs.get(event.run_id)
        if record is None:
            # A run this node did not start (a handler the user attached, or a
            # bridge delivering another node's run): make it joinable too.
            record = self._admit(event.run_id, thread_id=event.thread_id, graph=None, principal=None, node=event.node)
        if not record.log.append(event):
            return
        kind = event.type
        if kind == "status" and not record.started and event.status == "started":  # type: ignore[union-attr]
            record.started = True
            if record.graph is None:
                record.graph = event.graph  # type: ignore[union-attr]
        elif kind == "done":
            self._ended(record, event)
        if record.thread_id is not None:
            thread = self._threads.get(record.thread_id)
            if thread is not None:
                thread.changed.notify()

    def _ended(self, record: RunRecord, done: StreamEvent) -> None:
        """``record``'s run ended with ``done``."""
        record.ended_with(done)  # type: ignore[arg-type]
        if record.thread_id is not None:
            self.threads.touch(record.thread_id)

    # -- records ---------------------------------------------------------------------------
    def create(
        self,
        run_id: str,
        *,
        thread_id: str | None = None,
        graph: str | None = None,
        principal: str | None = None,
        node: str | None = None,
        relayed_into: str | None = None,
        trace_id: str | None = None,
    ) -> RunRecord:
        """Register a run before its first event, so it can be joined at once.

        A run ``relayed_into`` another keeps its ``thread_id`` but is not listed on
        the thread: its events are shown inside the run that relays them.

        Raises:
            RunNotFoundError: ``thread_id`` belongs to another principal.
            RunError: ``run_id`` is already known.
        """
        if run_id in self._runs:
            raise RunError(f"run {run_id!r} already exists")
        if thread_id is not None and not self.claim_thread(thread_id, principal):
            raise RunNotFoundError(f"thread {thread_id!r} not found")
        record = self._admit(
            run_id, thread_id=thread_id, graph=graph, principal=principal, node=node, relayed_into=relayed_into
        )
        record.trace_id = trace_id
        for listener in self.on_created:
            try:
                listener(record)
            except Exception:
                logger.exception("run creation listener %r raised", listener)
        return record

    def adopt(
        self,
        run_id: str,
        *,
        thread_id: str | None = None,
        graph: str | None = None,
        principal: str | None = None,
        node: str | None = None,
        created_at: float | None = None,
        relayed_into: str | None = None,
    ) -> RunRecord:
        """The record of a run executing elsewhere, made from what its node published.

        Returns the existing record if the run is known. A new one joins its thread
        in start order (``created_at``), so thread streams replay runs oldest first
        (unless it is ``relayed_into`` another run, see :meth:`create`).
        """
        record = self._runs.get(run_id)
        if record is not None:
            return record
        return self._admit(
            run_id,
            thread_id=thread_id,
            graph=graph,
            principal=principal,
            node=node,
            relayed_into=relayed_into,
            created_at=created_at,
        )

    def _join_thread(self, record: RunRecord) -> None:
        """Put a new run on its thread's list, unless another run relays its events.

        A delegate whose events another run relays is not listed: the thread shows
        each agent's work once.
        """
        if record.thread_id is None or record.relayed_into is not None:
            return
        self.threads.add_run(
            record.thread_id, record.run_id, created_at=record.created_at, principal=record.principal, runs=self._runs
        )

    def set_syncing(self, record: RunRecord, syncing: bool) -> None:
        """Say whether ``record``'s history is still being fetched from the node running it.

        Set and cleared by the cross-node bridge (:attr:`RunLog.syncing`); the readers
        of the run and of its thread are woken when it changes.
        """
        if record.log.set_syncing(syncing):
            self.threads.notify(record.thread_id)

    def adopt_thread(self, thread_id: str, principal: str | None = None) -> ThreadRecord:
        """The record of a thread whose runs execute elsewhere (existing or new)."""
        return self.threads.adopt(thread_id, principal)

    # -- thread owners ---------------------------------------------------------------------
    def claim_thread(self, thread_id: str, principal: str | None, *, confirmed: bool = False) -> bool:
        """Make ``principal`` the thread's owner on this node unless someone else owns it;
        whether it is theirs. ``confirmed``: see :attr:`~kiki_events.core.owners.Owner.confirmed`."""
        return self.threads.claim(thread_id, principal, confirmed=confirmed)

    def decide_owner(self, thread_id: str, principal: str | None) -> None:
        """Record the owner the cluster decided on; it overrides what this node believed."""
        self.threads.decide(thread_id, principal)

    def owns(self, thread_id: str | None, principal: str | None) -> bool:
        """Whether nothing here says ``thread_id`` belongs to someone other than ``principal``."""
        return self.threads.owns(thread_id, principal)

    def peek(self, run_id: str) -> RunRecord | None:
        """The record of ``run_id`` whoever owns it, or ``None`` (for trusted callers)."""
        return self._runs.get(run_id)

    def records(self) -> list[RunRecord]:
        """Every run kept here whoever owns it, oldest first (for trusted callers)."""
        return list(self._runs.values())

    def peek_thread(self, thread_id: str) -> ThreadRecord | None:
        """The record of ``thread_id`` whoever owns it, or ``None`` (for trusted callers)."""
        return self._threads.get(thread_id)

    def forget(self, run_id: str) -> bool:
        """Drop a run's record now (its readers stop); returns whether it was known."""
        record = self._runs.get(run_id)
        if record is None:
            return False
        self._forget(record)
        return True

    def _admit(
        self,
        run_id: str,
        *,
        thread_id: str | None,
        graph: str | None,
        principal: str | None,
        node: str | None,
        relayed_into: str | None = None,
        created_at: float | None = None,
    ) -> RunRecord:
        """A new record, kept and on its thread (the oldest finished runs make room)."""
        record = RunRecord(
            run_id,
            RunLog(run_id, self.replay_events),
            thread_id=thread_id,
            graph=graph,
            principal=principal,
            node=node,
            relayed_into=relayed_into,
        )
        if created_at is not None:
            record.created_at = created_at
        self._runs[run_id] = record
        self._join_thread(record)
        if len(self._runs) > self.max_runs:
            self._evict_oldest_finished(len(self._runs) - self.max_runs)
        return record

    def get(self, run_id: str, principal: str | None = None) -> RunRecord:
        """The run ``run_id`` as seen by ``principal``.

        Raises:
            RunNotFoundError: unknown, forgotten, or owned by someone else.
        """
        record = self._runs.get(run_id)
        if record is None or not self.visible(record, principal):
            raise RunNotFoundError(f"run {run_id!r} not found")
        return record

    def visible(self, record: RunRecord, principal: str | None) -> bool:
        """Whether ``principal`` may see ``record``: the run and its thread are theirs."""
        return record.principal == principal and self.threads.owns(record.thread_id, principal)

    def thread(self, thread_id: str, principal: str | None = None) -> ThreadRecord:
        """The thread ``thread_id`` as seen by ``principal``.

        Raises:
            RunNotFoundError: unknown, forgotten, or owned by someone else.
        """
        return self.threads.visible(thread_id, principal)

    def thread_logs(self, thread: ThreadRecord) -> list[RunLog]:
        """Replay buffers of ``thread``'s runs that are still kept, oldest first.

        Runs of anyone but the thread's owner are left out: never mixed into their stream.
        """
        runs = self._runs
        owner = thread.principal
        return [
            record.log
            for run_id in thread.runs
            if (record := runs.get(run_id)) is not None and record.principal == owner
        ]

    def __len__(self) -> int:
        return len(self._runs)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._runs

    @property
    def following(self) -> bool:
        """Whether thread streams should wait for new runs (false once stopping)."""
        return not self._stopping

    def stop_following(self) -> None:
        """No new runs will start: thread streams end once their runs are delivered."""
        self._stopping = True
        self.threads.notify_all()

    def count_lagging(self) -> None:
        """Count a client that fell behind (the ``sse.slow_client`` policy was applied)."""
        self.lagging += 1

    def count_stalled(self) -> None:
        """Count a client dropped for accepting nothing for ``sse.send_timeout``."""
        self.stalled += 1

    def count_disconnect(self, reason: str) -> None:
        """Count a streaming connection that ended, and why (``completed``, ``client``, ``slow_client`` …)."""
        self.disconnects[reason] = self.disconnects.get(reason, 0) + 1

    @property
    def readers(self) -> int:
        """Readers currently waiting for new events, across all runs and threads."""
        return sum(record.log.changed.waiting for record in self._runs.values()) + self.threads.waiting

    # -- eviction --------------------------------------------------------------------------
    def evict_expired(self, now: float | None = None) -> int:
        """Forget finished runs older than ``replay_ttl``; returns how many."""
        now = time.time() if now is None else now
        deadline = now - self.replay_ttl
        expired = [r for r in self._runs.values() if r.ended_at is not None and r.ended_at <= deadline]
        for record in expired:
            self._forget(record)
        self.threads.expire(now)
        return len(expired)

    def _evict_oldest_finished(self, count: int) -> None:
        victims: list[RunRecord] = []
        for record in self._runs.values():
            if len(victims) >= count:
                break
            if record.ended:
                victims.append(record)
        for record in victims:
            self._forget(record)

    def _forget(self, record: RunRecord) -> None:
        if self._runs.pop(record.run_id, None) is None:
            return
        self.evicted += 1
        record.log.close()
        if record.thread_id is not None:
            self.threads.remove_run(record.thread_id, record.run_id)
