"""Following remote runs: leases, the subscription, adoption and catch-up.

A remote run is followed while something here holds a :class:`~.lease.Lease` on
it (an SSE reader, :meth:`KikiRuntime.follow`, a bus subscription, a thread
watch) and for ``eventbus.subscribe.interest_linger`` after the last one is
released. One task per run (:meth:`Following.reconcile`) brings the subscription
in line with the leases: it adopts the run from the registry (a run nobody
registered yet is adopted on its first frame), watches it, then catches up with
what it produced before the watch took effect — from the stream (streams mode)
or from the owning node's replay log. Until it has (and while a gap is repaired) its
log is marked ``syncing``, so that readers of its thread hold the thread's later runs
back (:class:`~kiki_events.core.cursors.ThreadCursor`); a catch-up that takes too long is
given up, which clears it. How its events then reach the local bus, in order, and how
gaps are repaired: :mod:`.repair`.

A run the registry says has ended gets no more live traffic: a catch-up made once that
is known brings everything still kept, so what it did not bring is gone (a trimmed or
expired stream, a node that restarted). The run's readers are told so and the run ends
here (:meth:`~.repair.Repair.settle`); they never wait for a ``done`` that cannot come.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from ..errors import RunNotFoundError, TransportError
from ..log import get_logger
from ..transports.base import RunInfo
from ..transports.wire import KIND_REPLAY, Message
from .context import BridgeContext
from .inbound import Inbound
from .lease import NO_LEASE, Lease
from .ownership import Ownership
from .remote import READY_TIMEOUT, RemoteRun
from .repair import Repair

if TYPE_CHECKING:
    from ..core.runrecord import RunRecord

__all__ = ["Following"]

logger = get_logger("kiki_events.bridge")


class Following:
    """The remote runs this node follows (:attr:`remote`, by run id).

    Their events go through its :attr:`repair` (in order, gaps repaired) to ``inbound``;
    ``ownership`` says whether a principal may see a run of another node.
    """

    def __init__(self, ctx: BridgeContext, ownership: Ownership, inbound: Inbound) -> None:
        self.ctx = ctx
        self.ownership = ownership
        self.remote: dict[str, RemoteRun] = {}
        self.repair = Repair(ctx, self, inbound)
        """Delivers the followed runs in order and repairs their gaps."""
        self._unfollowed: dict[str, float] = {}
        """Copies of unfinished remote runs nobody here follows any more, since when."""

    # -- leases ------------------------------------------------------------------------------------
    def watch_run(self, run_id: str, *, owner: str | None = None, info: RunInfo | None = None) -> Lease:
        """See :meth:`Bridge.watch_run <kiki_events.bridge.Bridge.watch_run>`.

        ``info``: the registry's entry, when the caller just read it.
        """
        ctx = self.ctx
        record = ctx.store.peek(run_id)
        if not ctx.running() or (record is not None and ctx.is_local(record)):
            return NO_LEASE
        remote = self.remote.get(run_id)
        if remote is None:
            remote = self.remote[run_id] = RemoteRun(run_id, owner or (record.node if record else None))
            self._unfollowed.pop(run_id, None)
        remote.leases += 1
        if info is not None and info.ended and remote.final is None and not remote.watching:
            self.ended_elsewhere(remote, info)  # so the catch-up about to start is complete
        self.update_syncing(remote)
        self.kick(remote)
        return Lease(lambda: self._release(remote))

    def _release(self, remote: RemoteRun) -> None:
        remote.leases -= 1
        if remote.leases <= 0:
            linger = self.ctx.linger
            remote.keep_until = time.monotonic() + linger
            loop = asyncio.get_running_loop()
            loop.call_later(linger, self.kick, remote)
            self.kick(remote)

    def _wanted(self, remote: RemoteRun) -> bool:
        record = remote.record
        if record is not None and (record.ended or self.ctx.is_local(record)):
            return False  # nothing more will come from elsewhere
        return remote.leases > 0 or time.monotonic() < remote.keep_until

    def update_syncing(self, remote: RemoteRun) -> None:
        """Mark the run's log as :attr:`~kiki_events.core.runlog.RunLog.syncing` while its history is
        being fetched: until the first catch-up is done (or given up), and while a gap is
        being repaired; cleared once it is in sync, ended, or no longer followed.

        Thread readers hold the thread's later runs back meanwhile. Called at each
        change of those states (cheap when nothing changed).
        """
        ctx = self.ctx
        record = remote.record or ctx.store.peek(remote.run_id)
        if record is None:
            return
        syncing = (
            (not remote.ready.is_set() or remote.gap_since is not None)
            and not record.ended
            and self.remote.get(remote.run_id) is remote
            and (remote.leases > 0 or time.monotonic() < remote.keep_until)
            and not ctx.is_local(record)
        )
        ctx.store.set_syncing(record, syncing)

    def kick(self, remote: RemoteRun) -> None:
        """Make sure the run's reconcile task runs (it checks what to do)."""
        if self.remote.get(remote.run_id) is not remote:
            return
        if remote.task is None or remote.task.done():
            remote.task = self.ctx.spawn(self.reconcile(remote), f"kiki-bridge-watch:{remote.run_id}")

    async def reconcile(self, remote: RemoteRun) -> None:
        """Bring the subscription in line with the leases (one task per run at a time)."""
        transport = self.ctx.transport
        while self.remote.get(remote.run_id) is remote:
            wanted = self._wanted(remote)
            if wanted and not remote.watching:
                await self._start(remote)
            elif not wanted and remote.watching:
                remote.watching = False
                remote.synced = False
                self.update_syncing(remote)
                with contextlib.suppress(TransportError):
                    await transport.unwatch("run", remote.run_id)
            else:
                if remote.leases <= 0 and not wanted and time.monotonic() >= remote.keep_until:
                    del self.remote[remote.run_id]
                    self.update_syncing(remote)
                    record = remote.record
                    if record is not None and not record.ended and not self.ctx.is_local(record):
                        self._unfollowed[remote.run_id] = time.monotonic()
                return

    # -- adoption and catch-up ---------------------------------------------------------------------
    async def _start(self, remote: RemoteRun) -> None:
        ctx = self.ctx
        store = ctx.store
        record = remote.record or store.peek(remote.run_id)
        info: RunInfo | None = None
        if record is None:
            info = await self._lookup_quietly(remote.run_id, ctx.lookup_wait)
            record = store.peek(remote.run_id)  # adopted meanwhile?
            if record is None and info is not None and info.node != ctx.node:
                record = self.adopt(info)
        if record is None:
            # No node registered it yet (a subscription made before the run started):
            # listen anyway; its first frame makes this node look it up again.
            logger.debug("following run %s before any node registered it", remote.run_id)
            remote.ready.set()
            remote.watching = True
            await ctx.transport.watch("run", remote.run_id)
            return
        remote.record = record
        if ctx.is_local(record) or record.ended:
            remote.ready.set()
            self.update_syncing(remote)
            return
        remote.owner = remote.owner or record.node
        remote.next_seq = max(remote.next_seq, record.log.last_seq + 1)
        remote.watching = True
        self.update_syncing(remote)
        if remote.final is None:
            # Whether it ended, asked before the watch: if it did, the catch-up below is
            # complete; if not, its end comes live.
            if info is None:
                info = await self._lookup_quietly(remote.run_id, 0.0)
            if info is not None and info.ended and not record.ended:
                self.ended_elsewhere(remote, info)
        complete = remote.final is not None
        confirmed = await ctx.transport.watch("run", remote.run_id, after=remote.next_seq - 1)
        if confirmed:
            await self.sync(remote, complete=complete)

    def ended_elsewhere(self, remote: RemoteRun, info: RunInfo) -> None:
        """The registry says the run ended: the next catch-up counts as the first of its last ones."""
        remote.final = info
        remote.final_asked = time.monotonic()
        remote.final_attempts = 1

    def frame(self, message: Message) -> None:
        """A frame of a run (live, replayed or backfilled): deliver it if the run is followed."""
        run_id = message.run_id
        remote = self.remote.get(run_id) if run_id is not None else None
        if remote is None:
            return  # not followed (any more)
        if remote.owner is None:
            remote.owner = message.sender
        repair = self.repair
        if remote.record is None:
            repair.hold(remote, message.events)
            if not remote.adopting:
                remote.adopting = True
                self.ctx.spawn(self._adopt_late(remote), f"kiki-bridge-adopt:{remote.run_id}")
            return
        if message.kind == KIND_REPLAY:
            repair.replayed(remote, message)
        else:
            repair.accept(remote, message.events)

    async def _adopt_late(self, remote: RemoteRun) -> None:
        """A followed run whose frames arrived before this node knew it: adopt it, then deliver."""
        ctx = self.ctx
        info = await self._lookup_quietly(remote.run_id, ctx.lookup_wait)
        record = ctx.store.peek(remote.run_id)
        if record is None and info is not None and info.node != ctx.node:
            record = self.adopt(info)
        if record is None or self.remote.get(remote.run_id) is not remote:
            remote.held.clear()  # nobody can say whose run this is: deliver nothing
            remote.adopting = False
            return
        remote.record = record
        remote.adopting = False
        remote.owner = remote.owner or record.node
        repair = self.repair
        if remote.held and min(remote.held) > remote.next_seq:
            repair.repair(remote)
        repair.accept(remote, [])

    async def sync(self, remote: RemoteRun, *, complete: bool = False) -> None:
        """Fetch what the run produced before the subscription took effect.

        ``complete``: streams, the watch read the stream after the run had ended.
        """
        transport = self.ctx.transport
        if transport.durable:
            # watch() already read the stream; a gap seen meanwhile is repaired below.
            remote.synced = True
            if complete:
                self.repair.settle(remote)  # what the stream lacks is gone
            remote.ready.set()
            self.update_syncing(remote)
            if remote.held:
                await transport.backfill(remote.run_id, remote.next_seq - 1)
            return
        if remote.owner is None:
            remote.ready.set()
            self.update_syncing(remote)
            return
        if await self.repair.ask_replay(remote):
            remote.synced = True

    async def _resync(self, remote: RemoteRun) -> None:
        if not self.ctx.transport.durable:
            if await self.repair.ask_replay(remote):
                remote.synced = True
            return
        # The watch was not confirmed (Redis was down): the run may have ended meanwhile.
        record = remote.record
        if remote.final is None and record is not None and not record.ended:
            info = await self._lookup_quietly(remote.run_id, 0.0)
            if info is not None and info.ended and not record.ended:
                self.ended_elsewhere(remote, info)
        await self.sync(remote, complete=False)
        if remote.final is not None:
            await self.repair.backfill_end(remote)  # read after the run ended: complete

    def reconnected(self, resumed: bool) -> None:
        """The transport (re)connected: catch up every followed run that may have missed something.

        After a pub/sub reconnect what was sent meanwhile is gone from Redis: the
        readers are told (``missed``), then the run is repaired from its node.
        """
        ctx = self.ctx
        durable = ctx.transport.durable
        for remote in list(self.remote.values()):
            if not remote.watching:
                continue
            record = remote.record
            if record is None or record.ended:
                continue
            if resumed and not durable:
                if remote.synced or record.log.last_seq:
                    self.repair.notify_missed(
                        remote, "the bridge lost its connection to Redis; events sent meanwhile may be missing", None
                    )
                remote.synced = False
            if not remote.synced:
                ctx.spawn(self._resync(remote), f"kiki-bridge-resync:{remote.run_id}")

    def adopt(self, info: RunInfo) -> RunRecord:
        """The local record of a run the registry says executes elsewhere (existing or new)."""
        return self.ctx.store.adopt(
            info.run_id,
            thread_id=info.thread_id,
            graph=info.graph,
            principal=info.principal,
            node=info.node,
            created_at=info.created_at,
            relayed_into=info.relayed_into,
        )

    def sweep_unfollowed(self) -> None:
        """Forget copies of remote runs nobody here followed for a while (a join adopts them again)."""
        store = self.ctx.store
        deadline = time.monotonic() - store.replay_ttl
        for run_id, since in list(self._unfollowed.items()):
            if since > deadline:
                continue
            del self._unfollowed[run_id]
            record = store.peek(run_id)
            if record is not None and not record.ended and run_id not in self.remote:
                store.forget(run_id)

    # -- the registry ----------------------------------------------------------------------------------
    async def _lookup_quietly(self, run_id: str, wait: float) -> RunInfo | None:
        try:
            return await self.lookup(run_id, wait=wait)
        except TransportError:
            return None

    async def lookup(self, run_id: str, *, wait: float = 0.0) -> RunInfo | None:
        """See :meth:`Bridge.lookup <kiki_events.bridge.Bridge.lookup>`."""
        transport = self.ctx.transport
        deadline = time.monotonic() + wait
        delay = 0.01
        failure: TransportError | None = None
        while True:
            try:
                info = await transport.lookup_run(run_id)
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

    async def open_run(self, run_id: str, principal: str | None, *, check_owner: bool, wait: float | None) -> RunRecord:
        """See :meth:`Bridge.open_run <kiki_events.bridge.Bridge.open_run>`."""
        ctx = self.ctx
        record = ctx.store.peek(run_id)
        info: RunInfo | None = None
        if record is not None:
            if check_owner and not ctx.store.visible(record, principal):
                raise RunNotFoundError(f"run {run_id!r} not found")
            if ctx.is_local(record) or record.ended:
                return record
        else:
            info = await self.lookup(run_id, wait=ctx.lookup_wait if wait is None else wait)
            if info is None or info.node == ctx.node or (check_owner and not await self._visible(info, principal)):
                raise RunNotFoundError(f"run {run_id!r} not found")
            record = self.adopt(info)
        with self.watch_run(run_id, owner=info.node if info else None, info=info):
            remote = self.remote.get(run_id)
            if remote is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(remote.ready.wait(), READY_TIMEOUT)
        return record

    async def run_info(self, run_id: str, principal: str | None, *, check_owner: bool, wait: float) -> RunInfo:
        """See :meth:`Bridge.run_info <kiki_events.bridge.Bridge.run_info>`."""
        info = await self.lookup(run_id, wait=wait)
        if info is None or (check_owner and not await self._visible(info, principal)):
            raise RunNotFoundError(f"run {run_id!r} not found")
        return info

    async def _visible(self, info: RunInfo, principal: str | None) -> bool:
        """Whether ``principal`` may see the run: it is theirs, and so is its thread."""
        return info.principal == principal and await self.ownership.owns(info.thread_id, principal)
