"""Liveness and housekeeping: heartbeats, nodes that stopped, the periodic timers.

Every node says it is alive (a heartbeat with a short expiry). A node following
runs of other nodes checks that their owners still say so; after a few missed
checks in a row, the readers of those runs here are told (``missed``) and
released; a run that delivered nothing since the last check is looked up, and if
it ended without its end reaching this node, the rest is fetched. Checks happen
only while connected: an outage is not a sign that other nodes died. The same
periodic task drives the repair timers (:mod:`.repair`) and forgets copies of
remote runs nobody here follows any more.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from ..errors import TransportError
from ..log import get_logger
from .context import BridgeContext
from .follow import Following
from .repair import Repair

if TYPE_CHECKING:
    from .remote import RemoteRun

__all__ = ["Liveness"]

logger = get_logger("kiki_events.bridge")

_TICK = 0.1
_HEARTBEAT_EVERY = 5.0
_HEARTBEAT_TTL = 15.0
_GONE_AFTER = 2
"""Liveness checks in a row an owning node must miss before its runs are given up."""


class Liveness:
    """The heartbeat of this node, the liveness of the others, and the housekeeping loop.

    ``following``: the runs whose owners it checks; ``repair``: their repair timers.
    """

    def __init__(self, ctx: BridgeContext, following: Following, repair: Repair) -> None:
        self.ctx = ctx
        self.following = following
        self.repair = repair
        self._task: asyncio.Task[Any] | None = None

    def ensure_checking(self) -> None:
        """Start a heartbeat and liveness check unless one is running."""
        if self._task is None or self._task.done():
            self._task = self.ctx.spawn(self._check(), "kiki-bridge-liveness")

    async def run_forever(self) -> None:
        """The housekeeping loop: repair timers every tick, liveness every heartbeat period."""
        every = max(int(_HEARTBEAT_EVERY / _TICK), 1)
        count = 0
        while True:
            await asyncio.sleep(_TICK)
            count += 1
            try:
                self.repair.tick(time.monotonic())
                if count % every == 0:
                    self.following.sweep_unfollowed()
                    self.ensure_checking()
            except Exception:
                logger.exception("bridge housekeeping failed")

    async def _check(self) -> None:
        """Say this node is alive; give up the runs of owning nodes that stopped saying so."""
        ctx = self.ctx
        transport = ctx.transport
        if transport.state != "connected":
            return  # an outage is not a sign that other nodes died
        try:
            await transport.heartbeat(_HEARTBEAT_TTL)
            followed = [
                r
                for r in self.following.remote.values()
                if r.watching and r.owner and r.owner != ctx.node and r.record is not None and not r.record.ended
            ]
            if not followed:
                return
            alive = await transport.alive(sorted({r.owner for r in followed if r.owner}))
        except TransportError:
            return
        idle: list[RemoteRun] = []
        for remote in followed:
            if remote.owner in alive:
                remote.misses = 0
                if remote.final is None and remote.next_seq == remote.checked_seq:
                    idle.append(remote)
                remote.checked_seq = remote.next_seq
                continue
            remote.misses += 1
            if remote.misses >= _GONE_AFTER:
                self._owner_gone(remote)
        await self._check_idle(idle)

    async def _check_idle(self, idle: list[RemoteRun]) -> None:
        """Runs that delivered nothing since the last check: did they end without this node hearing of it?

        A run's last frames can only be lost here by a fault that nothing else
        noticed (no reconnect, no gap after them); the registry still says it
        ended, and then what is left is fetched and the run settled like any run
        found ended (:meth:`.Repair.fetch_end`).
        """
        transport = self.ctx.transport
        for remote in idle:
            try:
                info = await transport.lookup_run(remote.run_id)
            except TransportError:
                return
            record = remote.record
            if info is None or not info.ended or record is None or record.ended or remote.final is not None:
                continue
            logger.info(
                "run %s ended on %s without its end reaching here; fetching the rest",
                remote.run_id,
                info.node,
                extra={"run_id": remote.run_id},
            )
            self.following.ended_elsewhere(remote, info)
            self.repair.fetch_end(remote)

    def _owner_gone(self, remote: RemoteRun) -> None:
        record = remote.record
        if record is None or record.ended:
            return
        logger.warning(
            "node %s stopped while running run %s; its readers here are told and released",
            remote.owner,
            remote.run_id,
            extra={"run_id": remote.run_id},
        )
        detail = f"the node running this run ({remote.owner}) stopped; it will not continue"
        self.repair.end_here(remote, detail)
