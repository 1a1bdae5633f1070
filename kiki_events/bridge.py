"""Where events cross nodes: this node's bus ⇄ a transport ⇄ the other nodes' buses.

The :class:`Bridge` is created and owned by :class:`~kiki_events.runtime.KikiRuntime`
when a transport is configured (``eventbus.provider: redis``, or a
:class:`~kiki_events.transports.memory.MemoryHub`). It does four things:

* **Out.** It is a sink on the local bus: every event produced here
  (``event.node == node``) goes to the transport's bounded outbox, without
  blocking and without ever raising into the graph. It also keeps the run
  registry up to date (which node runs what, and how it ended).
* **In, on demand.** A remote run's events reach this node only while something
  here wants them: an SSE reader, :meth:`KikiRuntime.follow`, or a bus
  subscription to that run or thread. They are delivered into the local bus (so
  the run store keeps a replay log and readers are served as for a local run)
  strictly in ``seq`` order, each once; a node never re-delivers its own events.
* **Repair.** A gap in a remote run's ``seq`` (a lost message, a reconnect) holds
  later events back while the missing ones are fetched again — from the stream
  (streams mode) or from the owning node's replay log (pub/sub, memory). What
  cannot be recovered within ``eventbus.subscribe.repair_timeout`` is skipped
  with an explicit ``missed`` notice to the run's readers. After a pub/sub
  reconnect every followed run gets a ``missed`` notice too (messages sent while
  disconnected are gone from Redis), then is repaired from its node.
* **Control.** Cancel a run on the node that runs it, ask a node to replay a run,
  or your own operations (:meth:`add_control_handler`, :meth:`send_control`).

Lifecycle events (``agent:*``, ``multiagent:sync``) of every run are broadcast
and offered to this node's topic subscribers when ``eventbus.subscribe.events``
lists them, whether or not the run is followed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .codec import encode
from .errors import RunNotFoundError, TransportError
from .events import DoneEvent, StatusEvent, StreamEvent
from .topics import topic_matches, topic_of
from .transports.base import ControlMessage, RunInfo, Transport
from .transports.common import stop_tasks
from .transports.wire import KIND_LIFECYCLE, KIND_REPLAY, KIND_THREAD, Message

if TYPE_CHECKING:
    from .bus import EventBus
    from .config import EventBusSettings
    from .runs import RunManager, RunRecord, RunStore, ThreadRecord

__all__ = ["Bridge", "BridgeStats", "ControlHandler", "Lease"]

logger = logging.getLogger("kiki_events.bridge")

ControlHandler = Callable[[ControlMessage], Awaitable[object] | object]
"""Handles a control message; may be async. Exceptions are logged, never propagated."""

_TICK = 0.1
_HEARTBEAT_EVERY = 5.0
_HEARTBEAT_TTL = 15.0
_REPAIR_ATTEMPTS = 3
"""Repair requests for one gap (each after ``repair_timeout`` without progress) before it is given up."""
_GONE_AFTER = 2
"""Liveness checks in a row an owning node must miss before its runs are given up."""
_READY_TIMEOUT = 2.0
_MAX_HELD = 10_000
_SEEN_BROADCASTS = 4096
_OP_CANCEL = "cancel"
_OP_REPLAY = "replay"


@dataclass
class BridgeStats:
    """Counters of one bridge (the transport has its own: ``bridge.transport.stats``)."""

    delivered: int = 0
    """Remote run events delivered into the local bus."""
    duplicates: int = 0
    """Remote events received more than once (dropped)."""
    gaps: int = 0
    """Gaps seen in remote runs."""
    repaired: int = 0
    """Gaps filled by a replay or backfill before the repair timeout."""
    missed: int = 0
    """``missed`` notices sent to readers."""
    broadcasts: int = 0
    """Remote lifecycle events offered to topic subscribers."""
    control_in: int = 0
    control_errors: int = 0


def _count(value: object) -> bool:
    """A non-negative int from a control message (never a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _drain(held: dict[int, StreamEvent], expected: int, out: list[StreamEvent]) -> int:
    """Move the held events that follow on from ``expected`` to ``out``; returns the next seq expected."""
    while expected in held:
        out.append(held.pop(expected))
        expected += 1
    return expected


class Lease:
    """Keeps a remote run (or thread) followed until :meth:`release` (idempotent)."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], None] | None) -> None:
        self._release = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_NO_LEASE = Lease(None)


@dataclass(eq=False)
class _Remote:
    """A remote run this node follows."""

    run_id: str
    owner: str | None
    record: RunRecord | None = None
    leases: int = 0
    keep_until: float = 0.0
    next_seq: int = 1
    held: dict[int, StreamEvent] = field(default_factory=dict)
    gap_since: float | None = None
    repair_since: float | None = None
    gap_notice_due: bool = False
    watching: bool = False
    synced: bool = False
    adopting: bool = False
    attempts: int = 0
    misses: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _ThreadWatch:
    thread_id: str
    principal: str | None
    leases: int = 0
    keep_until: float = 0.0
    watching: bool = False
    runs: dict[str, Lease] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


class Bridge:
    """See the module docstring. Stable API for code built on it: :attr:`node`,
    :attr:`transport`, :meth:`send_control`, :meth:`add_control_handler`,
    :meth:`lookup`, :meth:`watch_run`, :meth:`watch_thread`, :meth:`health`.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        bus: EventBus,
        store: RunStore,
        runs: RunManager,
        settings: EventBusSettings,
        lookup_wait: float = 1.0,
    ) -> None:
        self.transport = transport
        """The transport (its ``stats``, ``publish`` path and, for Redis, ``redis`` client)."""
        self.node = transport.node
        """This node's name."""
        self.bus = bus
        self.store = store
        self.runs = runs
        self.stats = BridgeStats()
        self.linger = settings.subscribe.interest_linger
        self.repair_timeout = settings.subscribe.repair_timeout
        self.lookup_wait = lookup_wait
        self._max_held = max(_MAX_HELD, store.replay_events)
        self._topics = tuple(settings.subscribe.events)
        self._remote: dict[str, _Remote] = {}
        self._threads: dict[str, _ThreadWatch] = {}
        self._announced: set[str] = set()
        self._bus_leases: dict[tuple[str, str], Lease] = {}
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._handlers: dict[str, list[ControlHandler]] = {
            _OP_CANCEL: [self._handle_cancel],
            _OP_REPLAY: [self._handle_replay],
        }
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unfollowed: dict[str, float] = {}
        self._liveness_task: asyncio.Task[Any] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._removers: list[Callable[[], None]] = []
        self._state: Literal["new", "running", "closed"] = "new"

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def state(self) -> str:
        """The transport's state: ``connecting``, ``connected``, ``reconnecting`` … or ``closed``."""
        return "closed" if self._state == "closed" else self.transport.state

    async def start(self) -> None:
        """Attach to the bus and the run store, and start the transport (not waiting for Redis)."""
        if self._state != "new":
            raise RuntimeError(f"the bridge cannot be started: it is {self._state}")
        self._state = "running"
        self._removers.append(self.bus.add_sink(self.sink))
        self._removers.append(self.bus.add_interest_listener(self._interest))
        self.store.on_created.append(self._created)
        await self.transport.start(self)
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever(), name="kiki-bridge-tick")
        logger.info("bridge started: %s as node %s", self.transport.name, self.node)

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to ``timeout``), then stop following and disconnect."""
        if self._state != "running":
            self._state = "closed"
            return
        self._state = "closed"
        for remove in self._removers:
            remove()
        with contextlib.suppress(ValueError):
            self.store.on_created.remove(self._created)
        ticker, self._ticker = self._ticker, None
        await stop_tasks([t for t in (ticker, *self._tasks) if t is not None])
        await self.transport.close(timeout=timeout)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any] | None:
        if self._state != "running":
            if asyncio.iscoroutine(coro):
                coro.close()
            return None
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("bridge task %s failed", task.get_name(), exc_info=task.exception())

    # -- out: the bus sink (hot path: no awaits, never raises) ------------------------------------
    def sink(self, event: StreamEvent) -> None:
        """Send an event produced on this node to the other nodes."""
        if event.node != self.node or event.seq == 0:
            return
        self.transport.publish(event)
        run_id = event.run_id
        kind = type(event)
        if kind is DoneEvent:
            self._announced.discard(run_id)
            self._register(run_id, event)
        elif run_id not in self._announced:
            self._announced.add(run_id)
            self._register(run_id, event, announce=True)
        elif kind is StatusEvent and event.status == "started":  # type: ignore[union-attr]
            self._register(run_id, event)

    def _created(self, record: RunRecord) -> None:
        if record.node == self.node:
            self._announced.add(record.run_id)
            self.transport.register(self._info(record, "pending"), announce=True)

    def _register(self, run_id: str, event: StreamEvent, *, announce: bool = False) -> None:
        record = self.store.peek(run_id)
        if type(event) is DoneEvent:
            status = event.status
            info = self._info(record, status, run_id=run_id, thread_id=event.thread_id)
            info = dataclasses.replace(info, ended_at=event.ts, last_seq=event.seq)
        else:
            info = self._info(record, "running", run_id=run_id, thread_id=event.thread_id)
        self.transport.register(info, announce=announce)

    def _info(
        self, record: RunRecord | None, status: str, *, run_id: str | None = None, thread_id: str | None = None
    ) -> RunInfo:
        if record is None:
            return RunInfo(run_id or "", self.node, status, thread_id=thread_id, created_at=time.time())
        return RunInfo(
            record.run_id,
            self.node,
            status,
            thread_id=record.thread_id,
            graph=record.graph,
            principal=record.principal,
            created_at=record.created_at,
        )

    # -- following remote runs ------------------------------------------------------------------
    def _is_local(self, record: RunRecord) -> bool:
        return record.node is None or record.node == self.node or self.runs.is_local(record.run_id)

    def watch_run(self, run_id: str, *, owner: str | None = None) -> Lease:
        """Follow ``run_id`` (a remote run) until the lease is released.

        Returns at once; the subscription and catch-up happen in the background.
        Runs of this node need no lease (an inert one is returned).
        """
        record = self.store.peek(run_id)
        if self._state != "running" or (record is not None and self._is_local(record)):
            return _NO_LEASE
        remote = self._remote.get(run_id)
        if remote is None:
            remote = self._remote[run_id] = _Remote(run_id, owner or (record.node if record else None))
            self._unfollowed.pop(run_id, None)
        remote.leases += 1
        self._kick(remote)
        return Lease(lambda: self._release(remote))

    def _release(self, remote: _Remote) -> None:
        remote.leases -= 1
        if remote.leases <= 0:
            remote.keep_until = time.monotonic() + self.linger
            loop = asyncio.get_running_loop()
            loop.call_later(self.linger, self._kick, remote)
            self._kick(remote)

    def _wanted(self, remote: _Remote) -> bool:
        record = remote.record
        if record is not None and (record.ended or self._is_local(record)):
            return False  # nothing more will come from elsewhere
        return remote.leases > 0 or time.monotonic() < remote.keep_until

    def _kick(self, remote: _Remote) -> None:
        if self._remote.get(remote.run_id) is not remote:
            return
        if remote.task is None or remote.task.done():
            remote.task = self._spawn(self._reconcile(remote), f"kiki-bridge-watch:{remote.run_id}")

    async def _reconcile(self, remote: _Remote) -> None:
        """Bring the subscription in line with the leases (one task per run at a time)."""
        while self._remote.get(remote.run_id) is remote:
            wanted = self._wanted(remote)
            if wanted and not remote.watching:
                await self._start(remote)
            elif not wanted and remote.watching:
                remote.watching = False
                remote.synced = False
                with contextlib.suppress(TransportError):
                    await self.transport.unwatch("run", remote.run_id)
            else:
                if remote.leases <= 0 and not wanted and time.monotonic() >= remote.keep_until:
                    del self._remote[remote.run_id]
                    record = remote.record
                    if record is not None and not record.ended and not self._is_local(record):
                        self._unfollowed[remote.run_id] = time.monotonic()
                return

    async def _start(self, remote: _Remote) -> None:
        record = remote.record or self.store.peek(remote.run_id)
        if record is None:
            info = await self._lookup_quietly(remote.run_id, self.lookup_wait)
            record = self.store.peek(remote.run_id)  # adopted meanwhile?
            if record is None and info is not None and info.node != self.node:
                record = self._adopt(info)
        if record is None:
            # No node registered it yet (a subscription made before the run started):
            # listen anyway; its first frame makes this node look it up again.
            logger.debug("following run %s before any node registered it", remote.run_id)
            remote.ready.set()
            remote.watching = True
            await self.transport.watch("run", remote.run_id)
            return
        remote.record = record
        if self._is_local(record) or record.ended:
            remote.ready.set()
            return
        remote.owner = remote.owner or record.node
        remote.next_seq = max(remote.next_seq, record.log.last_seq + 1)
        remote.watching = True
        confirmed = await self.transport.watch("run", remote.run_id, after=remote.next_seq - 1)
        if confirmed:
            await self._sync(remote)

    async def _adopt_late(self, remote: _Remote) -> None:
        """A followed run whose frames arrived before this node knew it: adopt it, then deliver."""
        info = await self._lookup_quietly(remote.run_id, self.lookup_wait)
        record = self.store.peek(remote.run_id)
        if record is None and info is not None and info.node != self.node:
            record = self._adopt(info)
        if record is None or self._remote.get(remote.run_id) is not remote:
            remote.held.clear()  # nobody can say whose run this is: deliver nothing
            remote.adopting = False
            return
        remote.record = record
        remote.adopting = False
        remote.owner = remote.owner or record.node
        if remote.held and min(remote.held) > remote.next_seq:
            self._repair(remote)
        self._accept(remote, [])

    async def _sync(self, remote: _Remote) -> None:
        """Fetch what the run produced before the subscription took effect."""
        if self.transport.durable:
            # watch() already read the stream; a gap seen meanwhile is repaired below.
            remote.synced = True
            remote.ready.set()
            if remote.held:
                await self.transport.backfill(remote.run_id, remote.next_seq - 1)
            return
        if remote.owner is None:
            remote.ready.set()
            return
        if await self._ask_replay(remote):
            remote.synced = True

    async def _ask_replay(self, remote: _Remote) -> bool:
        owner = remote.owner
        if owner is None:
            return False
        remote.repair_since = time.monotonic()
        request: dict[str, Any] = {"run_id": remote.run_id, "after": remote.next_seq - 1}
        if remote.held:
            request["until"] = min(remote.held) - 1  # what is missing, not what already came
        try:
            await self.send_control(_OP_REPLAY, request, node=owner)
        except TransportError:
            remote.repair_since = None
            return False
        return True

    def _adopt(self, info: RunInfo) -> RunRecord:
        return self.store.adopt(
            info.run_id,
            thread_id=info.thread_id,
            graph=info.graph,
            principal=info.principal,
            node=info.node,
            created_at=info.created_at,
        )

    async def _lookup_quietly(self, run_id: str, wait: float) -> RunInfo | None:
        try:
            return await self.lookup(run_id, wait=wait)
        except TransportError:
            return None

    async def lookup(self, run_id: str, *, wait: float = 0.0) -> RunInfo | None:
        """The registry's entry for ``run_id``, trying for up to ``wait`` seconds.

        A run started a moment ago on another node may not be registered yet;
        ``wait`` covers that.

        Raises:
            TransportError: the registry could not be reached at all.
        """
        deadline = time.monotonic() + wait
        delay = 0.01
        failure: TransportError | None = None
        while True:
            try:
                info = await self.transport.lookup_run(run_id)
                failure = None
            except TransportError as exc:
                info, failure = None, exc
            remaining = deadline - time.monotonic()
            if info is not None or remaining <= 0:
                if info is None and failure is not None:
                    raise failure
                return info
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.2)

    async def open_run(
        self,
        run_id: str,
        principal: str | None = None,
        *,
        check_owner: bool = True,
        wait: float | None = None,
    ) -> RunRecord:
        """The record of ``run_id`` wherever it runs, caught up with what it produced so far.

        A run not known here is looked up in the registry (for up to ``wait``
        seconds, default ``lookup_wait``) and adopted; a remote run is followed
        until caught up (at most a couple of seconds), then for
        ``interest_linger`` more — take a :meth:`watch_run` lease to keep it.

        Raises:
            RunNotFoundError: no node knows it, or it belongs to someone else
                (``check_owner``).
            TransportError: it is not known here and the registry cannot be reached.
        """
        record = self.store.peek(run_id)
        owner: str | None = None
        if record is not None:
            if check_owner and record.principal != principal:
                raise RunNotFoundError(f"run {run_id!r} not found")
            if self._is_local(record) or record.ended:
                return record
        else:
            info = await self.lookup(run_id, wait=self.lookup_wait if wait is None else wait)
            if info is None or info.node == self.node or (check_owner and info.principal != principal):
                raise RunNotFoundError(f"run {run_id!r} not found")
            record = self._adopt(info)
            owner = info.node
        with self.watch_run(run_id, owner=owner):
            remote = self._remote.get(run_id)
            if remote is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(remote.ready.wait(), _READY_TIMEOUT)
        return record

    async def run_info(
        self, run_id: str, principal: str | None = None, *, check_owner: bool = True, wait: float = 0.2
    ) -> RunInfo:
        """What the registry says about ``run_id`` (status, node …), waiting up to ``wait`` for it.

        Raises:
            RunNotFoundError: no node knows it, or it belongs to someone else.
            TransportError: the registry cannot be reached.
        """
        info = await self.lookup(run_id, wait=wait)
        if info is None or (check_owner and info.principal != principal):
            raise RunNotFoundError(f"run {run_id!r} not found")
        return info

    # -- threads -----------------------------------------------------------------------------------
    async def open_thread(self, thread_id: str, principal: str | None = None) -> ThreadRecord:
        """The record of ``thread_id``, with the runs other nodes started on it adopted.

        Raises:
            RunNotFoundError: no node knows the thread, or it belongs to someone else.
            TransportError: it is not known here and the registry cannot be reached.
        """
        thread = self.store.peek_thread(thread_id)
        if thread is not None and thread.principal != principal:
            raise RunNotFoundError(f"thread {thread_id!r} not found")
        try:
            infos = await self.transport.thread_runs(thread_id)
        except TransportError:
            if thread is None:
                raise
            infos = []
        if thread is None and not infos:
            raise RunNotFoundError(f"thread {thread_id!r} not found")
        if any(info.principal != principal for info in infos):
            raise RunNotFoundError(f"thread {thread_id!r} not found")
        thread = self.store.adopt_thread(thread_id, principal)
        for info in infos:
            if info.node != self.node:
                self._adopt(info)
        return thread

    def watch_thread(self, thread_id: str) -> Lease:
        """Follow every run of ``thread_id`` started on other nodes until the lease is released."""
        if self._state != "running":
            return _NO_LEASE
        watch = self._threads.get(thread_id)
        if watch is None:
            thread = self.store.peek_thread(thread_id)
            watch = self._threads[thread_id] = _ThreadWatch(thread_id, thread.principal if thread else None)
        watch.leases += 1
        self._kick_thread(watch)
        return Lease(lambda: self._release_thread(watch))

    def _release_thread(self, watch: _ThreadWatch) -> None:
        watch.leases -= 1
        if watch.leases <= 0:
            watch.keep_until = time.monotonic() + self.linger
            asyncio.get_running_loop().call_later(self.linger, self._kick_thread, watch)
            self._kick_thread(watch)

    def _kick_thread(self, watch: _ThreadWatch) -> None:
        if self._threads.get(watch.thread_id) is not watch:
            return
        if watch.task is None or watch.task.done():
            watch.task = self._spawn(self._reconcile_thread(watch), f"kiki-bridge-thread:{watch.thread_id}")

    async def _reconcile_thread(self, watch: _ThreadWatch) -> None:
        while self._threads.get(watch.thread_id) is watch:
            wanted = watch.leases > 0 or time.monotonic() < watch.keep_until
            if wanted and not watch.watching:
                watch.watching = True
                await self.transport.watch("thread", watch.thread_id)
                await self._refresh_thread(watch)
            elif not wanted and watch.watching:
                watch.watching = False
                with contextlib.suppress(TransportError):
                    await self.transport.unwatch("thread", watch.thread_id)
                leases, watch.runs = watch.runs, {}
                for lease in leases.values():
                    lease.release()
            else:
                if not wanted:
                    del self._threads[watch.thread_id]
                return

    async def _refresh_thread(self, watch: _ThreadWatch) -> None:
        try:
            infos = await self.transport.thread_runs(watch.thread_id)
        except TransportError:
            return  # refreshed again on reconnect
        for info in infos:
            self._thread_run(watch, info)

    def _thread_run(self, watch: _ThreadWatch, info: RunInfo) -> None:
        if info.run_id in watch.runs or info.node == self.node or info.thread_id != watch.thread_id:
            return
        if info.principal != watch.principal:
            return  # not this thread's owner: never mix someone else's run in
        record = self._adopt(info)
        if self._is_local(record):
            return
        watch.runs[info.run_id] = self.watch_run(info.run_id, owner=info.node)

    # -- in: the transport listener ----------------------------------------------------------------
    def on_frame(self, message: Message) -> None:
        """Called by the transport for every accepted frame (on the event loop)."""
        kind = message.kind
        if kind == KIND_LIFECYCLE:
            self._broadcast(message.events)
            return
        if kind == KIND_THREAD:
            self._announcement(message)
            return
        run_id = message.run_id
        remote = self._remote.get(run_id) if run_id is not None else None
        if remote is None:
            return  # not followed (any more)
        if remote.owner is None:
            remote.owner = message.sender
        if remote.record is None:
            self._hold(remote, message.events)
            if not remote.adopting:
                remote.adopting = True
                self._spawn(self._adopt_late(remote), f"kiki-bridge-adopt:{remote.run_id}")
            return
        if kind == KIND_REPLAY:
            self._replayed(remote, message)
        else:
            self._accept(remote, message.events)

    def _replayed(self, remote: _Remote, message: Message) -> None:
        header = message.header
        first = header.get("f")
        if header.get("g"):
            remote.ready.set()
            remote.repair_since = None
            record = remote.record
            if record is not None and not record.ended and not remote.held:
                self._notify_missed(remote, "the node that ran this run no longer has it", None)
                record.log.close()
            return
        if isinstance(first, int) and not isinstance(first, bool) and first > remote.next_seq:
            # The owner no longer keeps what came before ``first``.
            if remote.next_seq > 1:
                self._notify_missed(remote, "events before this point are no longer kept by their node", first)
            remote.next_seq = first
            for seq in [s for s in remote.held if s < first]:
                del remote.held[seq]
        self._accept(remote, message.events)
        if header.get("e"):
            remote.ready.set()
            remote.repair_since = None

    def _hold(self, remote: _Remote, events: list[StreamEvent]) -> None:
        held = remote.held
        for event in events:
            if event.seq >= remote.next_seq and len(held) < self._max_held:
                held[event.seq] = event

    def _accept(self, remote: _Remote, events: list[StreamEvent]) -> None:
        """Deliver ``events`` in seq order, once each; hold back what comes after a gap.

        Nothing is dropped silently: when the held-back events reach their bound
        the gap is given up at once (readers get a ``missed`` notice), so whatever
        arrives next still has room.
        """
        out: list[StreamEvent] = []
        start = remote.next_seq
        held = remote.held
        expected = _drain(held, start, out)
        duplicates = 0
        for event in events:
            seq = event.seq
            if seq < expected or seq in held:
                duplicates += 1
                continue
            if seq == expected:
                out.append(event)
                expected = _drain(held, expected + 1, out)
                continue
            if len(held) >= self._max_held:
                remote.next_seq = expected
                if out:
                    self._deliver(out)
                    out = []
                first = min(held)
                self._notify_missed(remote, f"events {expected}-{first - 1} of this run were lost in transit", first)
                expected = _drain(held, first, out)
                if seq < expected:
                    duplicates += 1
                    continue
            held[seq] = event
            expected = _drain(held, expected, out)
        remote.next_seq = expected
        self.stats.duplicates += duplicates
        if out:
            self._deliver(out)
        if held:
            now = time.monotonic()
            if remote.gap_since is None:
                self.stats.gaps += 1
                self._repair(remote)
                remote.gap_since = now
            elif expected > start:
                remote.gap_since = now  # a repair is making progress: give it time
                remote.attempts = 0
        elif remote.gap_since is not None:
            remote.gap_since = None
            remote.attempts = 0
            self.stats.repaired += 1
        if out:
            record = remote.record
            if record is not None and record.ended:
                self._kick(remote)  # the run is over: stop receiving it

    def _deliver(self, events: list[StreamEvent]) -> None:
        seen = self._seen
        if seen and any((e.run_id, e.seq) in seen for e in events):
            for event in events:
                key = (event.run_id, event.seq)
                if key in seen:
                    del seen[key]
                    self.bus.deliver((event,), topics=False)
                else:
                    self.bus.deliver((event,))
        else:
            self.bus.deliver(events)
        self.stats.delivered += len(events)

    def _repair(self, remote: _Remote) -> None:
        if remote.repair_since is not None:
            return
        if self.transport.durable:
            remote.repair_since = time.monotonic()
            self._spawn(self._backfill(remote), f"kiki-bridge-backfill:{remote.run_id}")
        else:
            self._spawn(self._ask_replay(remote), f"kiki-bridge-repair:{remote.run_id}")

    async def _backfill(self, remote: _Remote) -> None:
        try:
            await self.transport.backfill(remote.run_id, remote.next_seq - 1)
        finally:
            remote.repair_since = None

    def _skip_gap(self, remote: _Remote) -> None:
        """Give up on a gap: tell the readers, then deliver what came after it."""
        if not remote.held:
            return
        first = min(remote.held)
        self._notify_missed(remote, f"events {remote.next_seq}-{first - 1} of this run were lost in transit", first)
        remote.next_seq = first
        remote.gap_since = None
        remote.attempts = 0
        self._accept(remote, [])

    def _notify_missed(self, remote: _Remote, detail: str, first_seq: int | None) -> None:
        record = remote.record
        notice = StatusEvent(
            run_id=remote.run_id,
            seq=0,
            ts=round(time.time(), 3),
            thread_id=record.thread_id if record is not None else None,
            node=self.node,
            status="missed",
            detail=detail,
            first_seq=first_seq,
        )
        self.stats.missed += 1
        self.bus.deliver((notice,))

    def _broadcast(self, events: list[StreamEvent]) -> None:
        topics = self._topics
        seen = self._seen
        for event in events:
            if event.run_id in self._remote:
                continue  # followed: its run frames bring it
            topic = topic_of(event)
            if topic is None or not any(topic_matches(p, topic) for p in topics):
                continue
            seen[(event.run_id, event.seq)] = None
            if len(seen) > _SEEN_BROADCASTS:
                seen.popitem(last=False)
            self.stats.broadcasts += 1
            self.bus.broadcast(event)

    def _announcement(self, message: Message) -> None:
        fields = message.header.get("i")
        if message.run_id is None or not isinstance(fields, dict):
            return
        info = RunInfo.from_fields(message.run_id, fields)
        if info is None or info.thread_id is None:
            return
        watch = self._threads.get(info.thread_id)
        if watch is not None and watch.watching:
            self._thread_run(watch, info)

    def on_connected(self, resumed: bool) -> None:
        """Called by the transport when it (re)connects."""
        if self._liveness_task is None or self._liveness_task.done():
            self._liveness_task = self._spawn(self._liveness(), "kiki-bridge-liveness")  # alive from now on
        durable = self.transport.durable
        for remote in list(self._remote.values()):
            if not remote.watching:
                continue
            record = remote.record
            if record is None or record.ended:
                continue
            if resumed and not durable:
                if remote.synced or record.log.last_seq:
                    self._notify_missed(
                        remote, "the bridge lost its connection to Redis; events sent meanwhile may be missing", None
                    )
                remote.synced = False
            if not remote.synced:
                self._spawn(self._resync(remote), f"kiki-bridge-resync:{remote.run_id}")
        for watch in list(self._threads.values()):
            if watch.watching:
                self._spawn(self._refresh_thread(watch), f"kiki-bridge-thread-refresh:{watch.thread_id}")

    async def _resync(self, remote: _Remote) -> None:
        if self.transport.durable:
            await self._sync(remote)
        elif await self._ask_replay(remote):
            remote.synced = True

    # -- control --------------------------------------------------------------------------------------
    def add_control_handler(self, op: str, handler: ControlHandler) -> Callable[[], None]:
        """Handle control messages of operation ``op`` (sync or async); returns a remover."""
        self._handlers.setdefault(op, []).append(handler)

        def remove() -> None:
            handlers = self._handlers.get(op, [])
            if handler in handlers:
                handlers.remove(handler)

        return remove

    async def send_control(self, op: str, payload: Mapping[str, Any] | None = None, *, node: str | None = None) -> None:
        """Send a control message to ``node`` (``None``: every node, this one excluded).

        ``payload`` must be JSON-serialisable.

        Raises:
            TransportError: it could not be sent now.
        """
        await self.transport.send_control(ControlMessage(op, self.node, dict(payload or {})), node)

    def on_control(self, message: ControlMessage) -> None:
        """Called by the transport for every control message."""
        self.stats.control_in += 1
        for handler in list(self._handlers.get(message.op, ())):
            try:
                result = handler(message)
            except Exception:
                self._control_failed(message)
                continue
            if asyncio.iscoroutine(result):
                self._spawn(self._guard(result, message), f"kiki-bridge-control:{message.op}")

    async def _guard(self, result: Awaitable[object], message: ControlMessage) -> None:
        try:
            await result
        except Exception:
            self._control_failed(message)

    def _control_failed(self, message: ControlMessage) -> None:
        self.stats.control_errors += 1
        logger.exception("handling control message %r from %s failed", message.op, message.sender)

    async def cancel(self, run_id: str, principal: str | None = None, *, check_owner: bool = True) -> RunInfo:
        """Ask the node running ``run_id`` to cancel it; a run that ended stays ended.

        Returns the registry's entry as it was before the request.

        Raises:
            RunNotFoundError: no node knows it, or it belongs to someone else.
            TransportError: the registry or the other node cannot be reached.
        """
        info = await self.run_info(run_id, principal, check_owner=check_owner)
        record = self.store.peek(run_id)
        if record is not None and record.ended and not info.ended:
            # Its done reached this node before the registry heard of it.
            info = dataclasses.replace(info, status=record.status, last_seq=record.log.last_seq)
        if info.ended:
            return info
        if info.node == self.node:
            record = self.store.peek(run_id)
            if record is not None:
                self.runs.cancel(run_id, record.principal)
            return info
        await self.send_control(_OP_CANCEL, {"run_id": run_id}, node=info.node)
        return info

    def _handle_cancel(self, message: ControlMessage) -> None:
        run_id = message.payload.get("run_id")
        if not isinstance(run_id, str):
            return
        record = self.store.peek(run_id)
        if record is not None and self.runs.is_local(run_id) and not record.ended:
            logger.info("cancelling run %s at the request of node %s", run_id, message.sender)
            self.runs.cancel(run_id, record.principal)

    async def _handle_replay(self, message: ControlMessage) -> None:
        payload = message.payload
        run_id = payload.get("run_id")
        after = payload.get("after", 0)
        until = payload.get("until")
        if not isinstance(run_id, str) or not _count(after) or (until is not None and not _count(until)):
            return
        record = self.store.peek(run_id)
        if record is None or not self._is_local(record):
            await self.transport.send_replay(message.sender, run_id, [], gone=True)
            return
        log = record.log
        limit = log.capacity + 1024 if until is None else max(until - after, 0)
        frames, first = log.read(after, limit)
        events = [encode(frame.event) for frame in frames if until is None or frame.seq <= until]
        await self.transport.send_replay(message.sender, run_id, events, first=first)

    # -- housekeeping ------------------------------------------------------------------------------------
    def _interest(self, kind: Literal["run", "thread"], key: str, present: bool) -> None:
        """Bus subscriptions to a run or thread hold a lease while they exist."""
        leases = self._bus_leases
        lease_key = (kind, key)
        if present:
            if lease_key not in leases:
                leases[lease_key] = self.watch_run(key) if kind == "run" else self._bus_thread_lease(key)
        else:
            lease = leases.pop(lease_key, None)
            if lease is not None:
                lease.release()

    def _bus_thread_lease(self, thread_id: str) -> Lease:
        lease = self.watch_thread(thread_id)
        self._spawn(self._adopt_thread(thread_id), f"kiki-bridge-thread-adopt:{thread_id}")
        return lease

    async def _adopt_thread(self, thread_id: str) -> None:
        watch = self._threads.get(thread_id)
        if watch is None or watch.principal is not None or self.store.peek_thread(thread_id) is not None:
            return
        try:
            infos = await self.transport.thread_runs(thread_id)
        except TransportError:
            return
        if infos:
            watch.principal = infos[0].principal
            self.store.adopt_thread(thread_id, watch.principal)
            for info in infos:
                self._thread_run(watch, info)

    async def _tick_forever(self) -> None:
        every = max(int(_HEARTBEAT_EVERY / _TICK), 1)
        count = 0
        while True:
            await asyncio.sleep(_TICK)
            count += 1
            try:
                self._tick()
                if count % every == 0:
                    self._sweep_unfollowed()
                    if self._liveness_task is None or self._liveness_task.done():
                        self._liveness_task = self._spawn(self._liveness(), "kiki-bridge-liveness")
            except Exception:
                logger.exception("bridge housekeeping failed")

    async def _liveness(self) -> None:
        """Say this node is alive; give up the runs of owning nodes that stopped saying so."""
        if self.transport.state != "connected":
            return  # an outage is not a sign that other nodes died
        try:
            await self.transport.heartbeat(_HEARTBEAT_TTL)
            followed = [
                r
                for r in self._remote.values()
                if r.watching and r.owner and r.owner != self.node and r.record is not None and not r.record.ended
            ]
            if not followed:
                return
            alive = await self.transport.alive(sorted({r.owner for r in followed if r.owner}))
        except TransportError:
            return
        for remote in followed:
            if remote.owner in alive:
                remote.misses = 0
                continue
            remote.misses += 1
            if remote.misses >= _GONE_AFTER:
                self._owner_gone(remote)

    def _owner_gone(self, remote: _Remote) -> None:
        record = remote.record
        if record is None or record.ended:
            return
        logger.warning(
            "node %s stopped while running run %s; its readers here are told and released", remote.owner, remote.run_id
        )
        self._notify_missed(remote, f"the node running this run ({remote.owner}) stopped; it will not continue", None)
        record.log.close()
        record.ended_at = time.time()
        self._kick(remote)

    def _sweep_unfollowed(self) -> None:
        """Forget copies of remote runs nobody here followed for a while (a join adopts them again)."""
        deadline = time.monotonic() - self.store.replay_ttl
        for run_id, since in list(self._unfollowed.items()):
            if since > deadline:
                continue
            del self._unfollowed[run_id]
            record = self.store.peek(run_id)
            if record is not None and not record.ended and run_id not in self._remote:
                self.store.forget(run_id)

    def _tick(self) -> None:
        now = time.monotonic()
        timeout = self.repair_timeout
        for remote in list(self._remote.values()):
            if remote.record is None:
                continue  # being adopted: its events wait until this node knows whose run it is
            if remote.gap_since is not None and now - remote.gap_since >= timeout:
                if remote.attempts < _REPAIR_ATTEMPTS - 1:
                    # No progress: the request or its answer may be lost, or the owner busy. Ask again.
                    remote.attempts += 1
                    remote.gap_since = now
                    remote.repair_since = None
                    self._repair(remote)
                else:
                    self._skip_gap(remote)
            if remote.repair_since is not None and now - remote.repair_since >= max(timeout, _READY_TIMEOUT):
                remote.repair_since = None  # the answer never came: allow another attempt
                remote.ready.set()

    # -- health -------------------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Non-secret state and counters for ``/healthz``."""
        transport = self.transport
        stats = transport.stats
        return {
            **transport.describe(),
            "node": self.node,
            "state": self.state,
            "outbox": transport.outbox_depth,
            "messages": {"in": stats.messages_in, "out": stats.messages_out},
            "events": {
                "in": stats.events_in,
                "out": stats.events_out,
                "lifecycle_in": stats.lifecycle_in,
                "delivered": self.stats.delivered,
            },
            "reconnects": stats.reconnects,
            "dropped": dict(stats.dropped),
            "following": {"runs": sum(1 for r in self._remote.values() if r.watching), "threads": len(self._threads)},
            "gaps": {"seen": self.stats.gaps, "repaired": self.stats.repaired, "missed": self.stats.missed},
            "duplicates": self.stats.duplicates,
        }
