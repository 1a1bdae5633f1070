"""The :class:`Bridge`: its lifecycle, the transport's listener, the public API and health.

The bridge is assembled from parts, each in its own module (see the package
docstring); this module wires them to the bus, the run store and the transport,
supervises their background tasks and answers ``/healthz``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from ..core.tasks import stop_tasks
from ..errors import KikiEventsError
from ..events import StreamEvent
from ..log import get_logger
from ..transports.base import ControlMessage, RunInfo, Transport
from ..transports.wire import KIND_LIFECYCLE, KIND_THREAD, Message
from .context import BridgeContext, BridgeStats
from .control import Control, ControlHandler
from .follow import Following
from .inbound import Inbound
from .lease import Lease
from .liveness import Liveness
from .outbound import Outbound
from .ownership import Ownership
from .threads import ThreadWatches

if TYPE_CHECKING:
    from ..config import EventBusSettings
    from ..core.bus import EventBus
    from ..core.manager import RunManager
    from ..core.runrecord import RunRecord
    from ..core.store import RunStore
    from ..core.threads import ThreadRecord

__all__ = ["Bridge", "BridgeStats"]

logger = get_logger("kiki_events.bridge")


class Bridge:
    """See the package docstring. Stable API for code built on it: :attr:`node`,
    :attr:`transport`, :meth:`connected`, :meth:`send_control`, :meth:`add_control_handler`,
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
        self._state: Literal["new", "running", "closed"] = "new"
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._removers: list[Callable[[], None]] = []
        self._bus_leases: dict[tuple[str, str], Lease] = {}
        # The parts: each gets the shared context and the parts it works with.
        self._ctx = ctx = BridgeContext(
            transport,
            bus,
            store,
            runs,
            self.stats,
            spawn=self._spawn,
            running=lambda: self._state == "running",
            linger=settings.subscribe.interest_linger,
            repair_timeout=settings.subscribe.repair_timeout,
            lookup_wait=lookup_wait,
        )
        self._outbound = Outbound(transport, store)
        self._inbound = Inbound(bus, self.stats, settings.subscribe.events)
        self._ownership = Ownership(ctx)
        self._following = Following(ctx, self._ownership, self._inbound)
        self._threads = ThreadWatches(ctx, self._following)
        self._control = Control(ctx, self._following)
        self._liveness = Liveness(ctx, self._following, self._following.repair)

    @property
    def linger(self) -> float:
        """``eventbus.subscribe.interest_linger``: how long a run or thread stays followed after its last lease."""
        return self._ctx.linger

    @linger.setter
    def linger(self, value: float) -> None:
        self._ctx.linger = value

    @property
    def repair_timeout(self) -> float:
        """``eventbus.subscribe.repair_timeout``."""
        return self._ctx.repair_timeout

    @repair_timeout.setter
    def repair_timeout(self, value: float) -> None:
        self._ctx.repair_timeout = value

    @property
    def lookup_wait(self) -> float:
        """How long a run nobody here knows is looked up in the registry (:meth:`open_run`)."""
        return self._ctx.lookup_wait

    @lookup_wait.setter
    def lookup_wait(self, value: float) -> None:
        self._ctx.lookup_wait = value

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def state(self) -> str:
        """The transport's state: ``connecting``, ``connected``, ``reconnecting`` … or ``closed``."""
        return "closed" if self._state == "closed" else self.transport.state

    async def connected(self, timeout: float | None = None) -> bool:
        """Wait until the bridge is connected to the other nodes (its transport's reader is up).

        A :meth:`watch_run` or :meth:`watch_thread` made after this returned ``True``
        receives what is published from then on. Returns ``False`` if the connection
        is not up within ``timeout`` seconds (``None``: no limit), or once closed;
        it never raises. Woken by the transport's state changes, not by polling.
        """
        if self._state == "closed":
            return False
        return await self.transport.connected(timeout)

    async def start(self) -> None:
        """Attach to the bus and the run store, and start the transport (not waiting for Redis)."""
        if self._state != "new":
            raise KikiEventsError(f"the bridge cannot be started: it is {self._state}")
        self._state = "running"
        self._removers.append(self.bus.add_sink(self._outbound.sink))
        self._removers.append(self.bus.add_interest_listener(self._interest))
        self.store.on_created.append(self._outbound.created)
        await self.transport.start(self)
        self._ticker = asyncio.get_running_loop().create_task(self._liveness.run_forever(), name="kiki-bridge-tick")
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
            self.store.on_created.remove(self._outbound.created)
        ticker, self._ticker = self._ticker, None
        await stop_tasks([t for t in (ticker, *self._tasks) if t is not None])
        await self.transport.close(timeout=timeout)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any] | None:
        """Run ``coro`` in a supervised task (cancelled on close); ``None`` once closed."""
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

    # -- out ---------------------------------------------------------------------------------------
    def sink(self, event: StreamEvent) -> None:
        """Send an event of a run of this node to the other nodes (never blocks, never raises)."""
        self._outbound.sink(event)

    # -- the transport's listener --------------------------------------------------------------------
    def on_frame(self, message: Message) -> None:
        """Called by the transport for every accepted frame (on the event loop)."""
        kind = message.kind
        if kind == KIND_LIFECYCLE:
            self._inbound.broadcast(message.events, self._following.remote)
        elif kind == KIND_THREAD:
            self._threads.announced(message)
        else:
            self._following.frame(message)

    def on_control(self, message: ControlMessage) -> None:
        """Called by the transport for every control message."""
        self._control.received(message)

    def on_connected(self, resumed: bool) -> None:
        """Called by the transport when it (re)connects."""
        self._liveness.ensure_checking()  # alive from now on
        self._following.reconnected(resumed)
        self._threads.reconnected()

    # -- following runs and threads -------------------------------------------------------------------
    def watch_run(self, run_id: str, *, owner: str | None = None) -> Lease:
        """Follow ``run_id`` (a remote run) until the lease is released.

        Returns at once; the subscription and catch-up happen in the background.
        Runs of this node need no lease (an inert one is returned).
        """
        return self._following.watch_run(run_id, owner=owner)

    def watch_thread(self, thread_id: str) -> Lease:
        """Follow every run of ``thread_id`` started on other nodes until the lease is released."""
        return self._threads.watch_thread(thread_id)

    async def lookup(self, run_id: str, *, wait: float = 0.0) -> RunInfo | None:
        """The registry's entry for ``run_id``, trying for up to ``wait`` seconds.

        A run started a moment ago on another node may not be registered yet;
        ``wait`` covers that.

        Raises:
            TransportError: the registry could not be reached at all.
        """
        return await self._following.lookup(run_id, wait=wait)

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
        return await self._following.open_run(run_id, principal, check_owner=check_owner, wait=wait)

    async def run_info(
        self, run_id: str, principal: str | None = None, *, check_owner: bool = True, wait: float = 0.2
    ) -> RunInfo:
        """What the registry says about ``run_id`` (status, node …), waiting up to ``wait`` for it.

        Raises:
            RunNotFoundError: no node knows it, or it belongs to someone else.
            TransportError: the registry cannot be reached.
        """
        return await self._following.run_info(run_id, principal, check_owner=check_owner, wait=wait)

    async def claim_thread(self, thread_id: str, principal: str | None = None) -> None:
        """Make ``thread_id`` ``principal``'s on every node, unless it belongs to someone else.

        Decided once for the cluster: set-if-absent in the registry
        (``threadowner:{<thread>}``), so two principals starting runs on one thread on
        two nodes at once never both get it. What this node already knows is checked
        first; what the registry says is remembered here.

        Raises:
            RunNotFoundError: the thread belongs to someone else.
            TransportError: the registry cannot be reached, and this node does not know
                for sure that the thread is ``principal``'s (it never claims blindly).
        """
        await self._ownership.claim_thread(thread_id, principal)

    async def owns(self, thread_id: str | None, principal: str | None) -> bool:
        """Whether nothing, here or in the registry, says ``thread_id`` is someone else's.

        Raises:
            TransportError: the registry cannot be reached.
        """
        return await self._ownership.owns(thread_id, principal)

    async def open_thread(self, thread_id: str, principal: str | None = None) -> ThreadRecord:
        """The record of ``thread_id``, with the runs other nodes started on it adopted.

        Raises:
            RunNotFoundError: no node knows the thread, or it belongs to someone else.
            TransportError: it is not known here and the registry cannot be reached.
        """
        return await self._threads.open_thread(thread_id, principal)

    def _interest(self, kind: Literal["run", "thread"], key: str, present: bool) -> None:
        """Bus subscriptions to a run or thread hold a lease while they exist."""
        leases = self._bus_leases
        lease_key = (kind, key)
        if present:
            if lease_key not in leases:
                leases[lease_key] = self.watch_run(key) if kind == "run" else self._threads.bus_lease(key)
        else:
            lease = leases.pop(lease_key, None)
            if lease is not None:
                lease.release()

    # -- control -----------------------------------------------------------------------------------------
    def add_control_handler(self, op: str, handler: ControlHandler) -> Callable[[], None]:
        """Handle control messages of operation ``op`` (sync or async); returns a remover."""
        return self._control.add_handler(op, handler)

    async def send_control(self, op: str, payload: Mapping[str, Any] | None = None, *, node: str | None = None) -> None:
        """Send a control message to ``node`` (``None``: every node, this one excluded).

        ``payload`` must be JSON-serialisable.

        Raises:
            TransportError: it could not be sent now.
        """
        await self._control.send(op, payload, node)

    async def cancel(self, run_id: str, principal: str | None = None, *, check_owner: bool = True) -> RunInfo:
        """Ask the node running ``run_id`` to cancel it; a run that ended stays ended.

        Returns the registry's entry as it was before the request.

        Raises:
            RunNotFoundError: no node knows it, or it belongs to someone else.
            TransportError: the registry or the other node cannot be reached.
        """
        return await self._control.cancel(run_id, principal, check_owner=check_owner)

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
            "following": {
                "runs": sum(1 for r in self._following.remote.values() if r.watching),
                "threads": len(self._threads.watches),
            },
            "gaps": {"seen": self.stats.gaps, "repaired": self.stats.repaired, "missed": self.stats.missed},
            "duplicates": self.stats.duplicates,
        }
