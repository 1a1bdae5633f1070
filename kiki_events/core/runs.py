"""Runs: where graph runs execute, and what is remembered about them.

* :class:`RunStore` sees every event on the bus (it is a bus sink) and keeps, per
  run, its metadata and a bounded replay buffer (:class:`~kiki_events.core.runlog.RunLog`),
  plus a thread index. Finished runs are kept ``replay_ttl``, at most
  ``max_runs`` runs in all; a supervised task sweeps expired ones.
* :class:`RunManager` starts registered graphs as supervised asyncio tasks with a
  :class:`~kiki_events.capture.handler.KikiCallbackHandler` attached, cancels them, and
  shuts them down gracefully. Every run ends with exactly one ``done`` event,
  whatever happened to its task.

Ownership: a run or thread started by principal ``P`` is invisible (``RunNotFoundError``)
to any other principal, so another user's run looks like it does not exist. A thread
stays ``P``'s after its runs are forgotten, for ``runs.thread_ttl`` (see
:mod:`~kiki_events.core.owners`); with a bridge the cluster decides (``Bridge.claim_thread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from ..capture.handler import KikiCallbackHandler, new_run_id
from ..config import HandlerSettings, RunSettings
from ..errors import RunError, RunLimitError, RunNotFoundError
from ..events import RunStatus, StatusEvent, StreamEvent
from ..redaction import redact_text
from .bus import EventBus
from .graphs import GraphRegistry
from .owners import ThreadOwners
from .records import RunInfo
from .runlog import Notifier, RunLog

__all__ = [
    "RunHandle",
    "RunManager",
    "RunRecord",
    "RunState",
    "RunStore",
    "ThreadRecord",
    "ensure_done",
    "execute_run",
    "new_thread_id",
]

logger = logging.getLogger("kiki_events.core.runs")

RunState: TypeAlias = Literal["pending", "running", "success", "error", "interrupted", "cancelled"]
"""``pending`` (accepted, graph not started yet), ``running``, or a final :data:`RunStatus`."""

_MAX_THREAD_RUNS = 256


@dataclass(eq=False)
class RunRecord:
    """What is known about one run: metadata and its replay buffer."""

    run_id: str
    log: RunLog
    thread_id: str | None = None
    graph: str | None = None
    principal: str | None = None
    node: str | None = None
    created_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    started: bool = False
    """Its ``started`` status event was seen."""
    relayed_into: str | None = None
    """The run that relays this one's events (this run is its delegate): the thread
    shows this run's work there, not as a run of its own."""

    @property
    def status(self) -> RunState:
        """Current state, derived from the events seen."""
        if self.log.final_status is not None:
            return self.log.final_status
        if self.log.closed:
            return "error"
        return "running" if self.started else "pending"

    @property
    def ended(self) -> bool:
        """Whether the run has finished."""
        return self.log.ended

    def info(self) -> RunInfo:
        """This run as the registry and ``GET /runs/{id}`` describe it (:meth:`.RunInfo.public`)."""
        return RunInfo(
            self.run_id,
            self.node or "",
            self.status,
            thread_id=self.thread_id,
            graph=self.graph,
            principal=self.principal,
            created_at=self.created_at,
            ended_at=self.ended_at,
            last_seq=self.log.last_seq,
            relayed_into=self.relayed_into,
        )


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


def _visible(owner: str | None, principal: str | None) -> bool:
    return owner == principal


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
        self.lagging = 0
        """Clients that fell behind (see ``sse.slow_client``, ``sse.max_backlog``)."""
        self.stalled = 0
        """Clients dropped for accepting nothing for ``sse.send_timeout``."""
        self.clients = 0
        """Streaming clients connected now (maintained by the server)."""
        self.connections = 0
        """Streaming clients connected since start (maintained by the server)."""
        self._runs: OrderedDict[str, RunRecord] = OrderedDict()
        self._threads: dict[str, ThreadRecord] = {}
        self.owners = ThreadOwners(ttl=thread_ttl, max_threads=max_threads)
        """Who each thread belongs to (outlives the thread's runs here)."""
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
            record.ended_at = time.time()
            if record.thread_id is not None:
                self.owners.touch(record.thread_id)
        if record.thread_id is not None:
            thread = self._threads.get(record.thread_id)
            if thread is not None:
                thread.changed.notify()

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
        """Put a new run in its thread's list at its place in start order (``created_at``).

        Runs of other nodes are adopted in whatever order this node hears of them;
        thread streams read the list in this order. A delegate whose events another
        run relays is not listed: the thread shows each agent's work once.
        """
        if record.thread_id is None or record.relayed_into is not None:
            return
        thread = self._threads.get(record.thread_id)
        if thread is None:
            owner = self.owners.get(record.thread_id)
            principal = owner.principal if owner is not None else record.principal
            thread = self._threads[record.thread_id] = ThreadRecord(record.thread_id, principal)
        runs = self._runs
        position = len(thread.runs)
        while position > 0:
            before = runs.get(thread.runs[position - 1])
            if before is None or before.created_at <= record.created_at:
                break
            position -= 1
        if len(thread.runs) == thread.runs.maxlen:
            thread.runs.popleft()
            position = max(position - 1, 0)
        thread.runs.insert(position, record.run_id)
        thread.changed.notify()

    def set_syncing(self, record: RunRecord, syncing: bool) -> None:
        """Say whether ``record``'s history is still being fetched from the node running it.

        Set and cleared by the cross-node bridge (:attr:`RunLog.syncing`); the readers
        of the run and of its thread are woken when it changes.
        """
        if record.log.set_syncing(syncing) and record.thread_id is not None:
            thread = self._threads.get(record.thread_id)
            if thread is not None:
                thread.changed.notify()

    def adopt_thread(self, thread_id: str, principal: str | None = None) -> ThreadRecord:
        """The record of a thread whose runs execute elsewhere (existing or new)."""
        thread = self._threads.get(thread_id)
        if thread is None:
            thread = self._threads[thread_id] = ThreadRecord(thread_id, principal)
        return thread

    # -- thread owners ---------------------------------------------------------------------
    def claim_thread(self, thread_id: str, principal: str | None, *, confirmed: bool = False) -> bool:
        """Make ``principal`` the thread's owner on this node unless someone else owns it;
        whether it is theirs. ``confirmed``: see :attr:`~kiki_events.core.owners.Owner.confirmed`."""
        thread = self._threads.get(thread_id)
        first = principal
        if thread is not None and self.owners.get(thread_id) is None:
            first = thread.principal  # known here before an owner was recorded for it
        owner = self.owners.claim(thread_id, first, confirmed=confirmed and first == principal, active=self._threads)
        return owner.principal == principal

    def decide_owner(self, thread_id: str, principal: str | None) -> None:
        """Record the owner the cluster decided on; it overrides what this node believed."""
        self.owners.decide(thread_id, principal, active=self._threads)
        thread = self._threads.get(thread_id)
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
        thread = self._threads.get(thread_id)
        return thread is None or thread.principal == principal

    def peek(self, run_id: str) -> RunRecord | None:
        """The record of ``run_id`` whoever owns it, or ``None`` (for trusted callers)."""
        return self._runs.get(run_id)

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
        return _visible(record.principal, principal) and self.owns(record.thread_id, principal)

    def thread(self, thread_id: str, principal: str | None = None) -> ThreadRecord:
        """The thread ``thread_id`` as seen by ``principal``.

        Raises:
            RunNotFoundError: unknown, forgotten, or owned by someone else.
        """
        thread = self._threads.get(thread_id)
        if thread is None or not _visible(thread.principal, principal) or not self.owns(thread_id, principal):
            raise RunNotFoundError(f"thread {thread_id!r} not found")
        return thread

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
        for thread in self._threads.values():
            thread.changed.notify()

    def count_lagging(self) -> None:
        """Count a client that fell behind (the ``sse.slow_client`` policy was applied)."""
        self.lagging += 1

    def count_stalled(self) -> None:
        """Count a client dropped for accepting nothing for ``sse.send_timeout``."""
        self.stalled += 1

    @property
    def readers(self) -> int:
        """Readers currently waiting for new events, across all runs and threads."""
        waiting = sum(record.log.changed.waiting for record in self._runs.values())
        return waiting + sum(thread.changed.waiting for thread in self._threads.values())

    # -- eviction --------------------------------------------------------------------------
    def evict_expired(self, now: float | None = None) -> int:
        """Forget finished runs older than ``replay_ttl``; returns how many."""
        now = time.time() if now is None else now
        deadline = now - self.replay_ttl
        expired = [r for r in self._runs.values() if r.ended_at is not None and r.ended_at <= deadline]
        for record in expired:
            self._forget(record)
        self.owners.expire(self._threads, now)
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
            thread = self._threads.get(record.thread_id)
            if thread is not None:
                with contextlib.suppress(ValueError):
                    thread.runs.remove(record.run_id)
                thread.changed.notify()
                if not thread.runs:
                    del self._threads[record.thread_id]


async def execute_run(
    graph: Any, input: Any, config: Mapping[str, Any], handler: KikiCallbackHandler, run_id: str, *, label: str
) -> RunStatus:
    """Run ``graph`` and make sure ``run_id`` ends with exactly one ``done``.

    The graph's exception is logged with its traceback here and becomes the run's
    ``error`` status (its client sees only the redacted message); cancellation
    becomes ``cancelled`` and is re-raised.
    """
    try:
        await graph.ainvoke(input, config=dict(config))
    except asyncio.CancelledError:
        handler.finish_run(run_id, "cancelled")
        raise
    except Exception as exc:
        # The whole traceback goes to the server log, with secrets in its text
        # masked; the client gets only the handler's redacted one-line message.
        trace = redact_text("".join(traceback.format_exception(exc)).rstrip())
        logger.error("run %s of graph %r failed\n%s", run_id, label, trace)
        handler.finish_run(run_id, "error", exc)
        return "error"
    except BaseException:
        handler.finish_run(run_id, "cancelled")
        raise
    handler.finish_run(run_id, "success")
    return "success"


def ensure_done(task: asyncio.Task[RunStatus], handler: KikiCallbackHandler, run_id: str) -> None:
    """Give ``run_id`` its ``done`` if its task ended without one (idempotent).

    A task cancelled before its first step never executes :func:`execute_run`'s
    body, so the task's done callback is the only place that sees it.
    """
    if task.cancelled():
        handler.finish_run(run_id, "cancelled")
        return
    error = task.exception()
    if error is not None:  # execute_run handles Exception; this is a BaseException
        logger.error("run %s task crashed", run_id, exc_info=error)
        handler.finish_run(run_id, "error", error)
    else:
        handler.finish_run(run_id, task.result())


@dataclass(eq=False)
class RunHandle:
    """A run started by :meth:`RunManager.start`."""

    run_id: str
    thread_id: str
    graph: str
    record: RunRecord
    task: asyncio.Task[RunStatus]


class RunManager:
    """Starts, tracks, cancels and shuts down graph runs on this node."""

    def __init__(
        self,
        *,
        bus: EventBus,
        store: RunStore,
        graphs: GraphRegistry,
        settings: RunSettings | None = None,
        handler_settings: HandlerSettings | None = None,
        node: str | None = None,
    ) -> None:
        self.bus = bus
        self.store = store
        self.graphs = graphs
        self.settings = settings or RunSettings()
        self.handler_settings = handler_settings or HandlerSettings()
        self.node = node
        self.started = 0
        """Runs started since creation."""
        self.finished: dict[str, int] = {}
        """Runs ended on this node, by final status."""
        self.configurable: dict[str, Any] = {}
        """Entries added to every run's ``configurable`` (the composition root adds what graph nodes look up)."""
        self._tasks: dict[str, asyncio.Task[RunStatus]] = {}
        self._closing = False

    @property
    def active(self) -> int:
        """Runs executing on this node now."""
        return len(self._tasks)

    @property
    def closing(self) -> bool:
        """Whether :meth:`shutdown` began; new runs are refused."""
        return self._closing

    def start(
        self,
        graph_name: str,
        input: Any,
        *,
        thread_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        principal: str | None = None,
        handler_factory: Callable[..., KikiCallbackHandler] = KikiCallbackHandler,
        relayed_into: str | None = None,
    ) -> RunHandle:
        """Start a run of the graph registered as ``graph_name``; returns at once.

        ``relayed_into``: the run whose stream carries this run's events (it
        delegated the work and relays it); the thread then lists only that run.

        Raises:
            UnknownGraphError: no such graph.
            RunLimitError: ``runs.max_active`` runs are executing already.
            RunNotFoundError: ``thread_id`` belongs to another principal.
            RunError: the manager is shutting down.
        """
        if self._closing:
            raise RunError("the server is shutting down; no new runs are accepted")
        graph = self.graphs.get(graph_name)
        if len(self._tasks) >= self.settings.max_active:
            raise RunLimitError(f"{self.settings.max_active} runs are executing already (runs.max_active); retry later")
        thread_id = thread_id or new_thread_id()
        run_uuid, run_id = new_run_id()
        record = self.store.create(
            run_id,
            thread_id=thread_id,
            graph=graph_name,
            principal=principal,
            node=self.node,
            relayed_into=relayed_into,
        )
        handler = handler_factory(
            self.bus,
            node=self.node,
            thread_id=thread_id,
            graph_name=graph_name,
            max_payload_chars=self.handler_settings.max_payload_chars,
        )
        config: dict[str, Any] = {
            "callbacks": [handler],
            "run_id": run_uuid,
            "configurable": {**self.configurable, "thread_id": thread_id},
            "metadata": {**(metadata or {}), "kiki_run_id": run_id, "thread_id": thread_id},
        }
        task = asyncio.get_running_loop().create_task(
            execute_run(graph, input, config, handler, run_id, label=graph_name), name=f"kiki-run:{run_id}"
        )
        self._tasks[run_id] = task
        self.started += 1
        task.add_done_callback(lambda t: self._finished_task(run_id, record, handler, t))
        return RunHandle(run_id, thread_id, graph_name, record, task)

    def _finished_task(
        self, run_id: str, record: RunRecord, handler: KikiCallbackHandler, task: asyncio.Task[RunStatus]
    ) -> None:
        self._tasks.pop(run_id, None)
        ensure_done(task, handler, run_id)
        if not record.ended:
            # The final ``done`` never reached the store (bus full or closed):
            # still end the record so readers stop waiting.
            logger.warning("run %s ended without its done event reaching the run store", run_id)
            record.log.close()
            record.ended_at = time.time()
        status = record.status
        self.finished[status] = self.finished.get(status, 0) + 1

    def get(self, run_id: str, principal: str | None = None) -> RunRecord:
        """See :meth:`RunStore.get`."""
        return self.store.get(run_id, principal)

    def cancel(self, run_id: str, principal: str | None = None) -> RunRecord:
        """Ask the run's task to stop; a run that already ended stays ended.

        Raises:
            RunNotFoundError: unknown here, or someone else's.
        """
        record = self.store.get(run_id, principal)
        task = self._tasks.get(run_id)
        if task is not None and not record.ended:
            task.cancel()
        return record

    async def cancel_and_wait(self, run_id: str, principal: str | None = None, *, timeout: float = 5.0) -> RunRecord:
        """:meth:`cancel`, then wait up to ``timeout`` for the run to end."""
        record = self.cancel(run_id, principal)
        task = self._tasks.get(run_id)
        if task is not None:
            await asyncio.wait({task}, timeout=timeout)
        return record

    def is_local(self, run_id: str) -> bool:
        """Whether the run executes on this node (so :meth:`cancel` can stop it)."""
        return run_id in self._tasks

    async def shutdown(self, grace: float | None = None) -> None:
        """Refuse new runs, give running ones ``grace`` seconds, cancel the rest, await all."""
        self._closing = True
        grace = self.settings.shutdown_grace if grace is None else grace
        tasks = list(self._tasks.values())
        if not tasks:
            return
        logger.info("waiting up to %.1fs for %d run(s) to finish", grace, len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=grace) if grace > 0 else (set(), set(tasks))
        for task in pending:
            task.cancel()
        if pending:
            logger.info("cancelled %d run(s) still executing after the grace period", len(pending))
        await asyncio.gather(*tasks, return_exceptions=True)
