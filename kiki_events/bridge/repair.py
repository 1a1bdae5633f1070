"""In-order delivery of remote runs, and gap repair.

The events of a followed run reach the local bus strictly in ``seq`` order, each
once (:meth:`Repair.accept`). A gap (a lost message, a reconnect) holds later
events back while the missing ones are fetched again — from the stream (streams
mode: a backfill) or from the owning node's replay log (pub/sub, memory: a
``replay`` control request, answered with replay frames). Each request that
brings no progress within ``eventbus.subscribe.repair_timeout`` is made again; after
a few, the gap is given up and the run's readers get an explicit ``missed``
notice (``status``, ``seq == 0``), never a silent skip. The held-back events are
bounded: reaching the bound gives the gap up at once, so what arrives next still
has room.

A run the registry says has ended is settled instead (:meth:`Repair.settle`): once a
catch-up asked for after its end is complete, whatever it did not bring is gone, so
its readers are told at once what is missing, get what is left, and the run ends
here. Should that catch-up not complete (no answer, Redis failing), it is asked for
again, and after a few tries the run is settled all the same.
"""

from __future__ import annotations

import time
from typing import Any, cast, get_args

from ..errors import TransportError
from ..events import RunStatus, StatusEvent, StreamEvent
from ..transports.wire import Message
from .context import BridgeContext
from .inbound import Inbound
from .remote import READY_TIMEOUT, FollowedRuns, RemoteRun

__all__ = ["OP_REPLAY", "Repair"]

OP_REPLAY = "replay"
"""Control operation asking a node to replay (part of) one of its runs."""
_REPAIR_ATTEMPTS = 3
"""Repair requests for one gap (each after ``repair_timeout`` without progress) before it is given up."""
_MAX_HELD = 10_000
_FINAL_STATUSES: frozenset[str] = frozenset(get_args(RunStatus))


def _drain(held: dict[int, StreamEvent], expected: int, out: list[StreamEvent]) -> int:
    """Move the held events that follow on from ``expected`` to ``out``; returns the next seq expected."""
    while expected in held:
        out.append(held.pop(expected))
        expected += 1
    return expected


class Repair:
    """Delivers followed runs in order and repairs their gaps.

    ``following``: the runs it delivers (:class:`.Following`); ``inbound``: where their
    events go.
    """

    def __init__(self, ctx: BridgeContext, following: FollowedRuns, inbound: Inbound) -> None:
        self.ctx = ctx
        self.following = following
        self.inbound = inbound
        self.max_held = max(_MAX_HELD, ctx.store.replay_events)
        """Most events held back per run behind a gap."""

    def hold(self, remote: RemoteRun, events: list[StreamEvent]) -> None:
        """Keep ``events`` until they can be delivered (the run is being adopted)."""
        held = remote.held
        for event in events:
            if event.seq >= remote.next_seq and len(held) < self.max_held:
                held[event.seq] = event

    def accept(self, remote: RemoteRun, events: list[StreamEvent]) -> None:
        """Deliver ``events`` in seq order, once each; hold back what comes after a gap.

        Nothing is dropped silently: when the held-back events reach their bound
        the gap is given up at once (readers get a ``missed`` notice), so whatever
        arrives next still has room.
        """
        start = remote.next_seq
        out = self._order(remote, events)
        if out:
            self.inbound.deliver(out)
        self._track_gap(remote, start)
        following = self.following
        following.update_syncing(remote)
        if out:
            record = remote.record
            if record is not None and record.ended:
                following.kick(remote)  # the run is over: stop receiving it

    def _order(self, remote: RemoteRun, events: list[StreamEvent]) -> list[StreamEvent]:
        """Put ``events`` in order: what can be delivered now is returned, the rest held back.

        Advances ``remote.next_seq`` and counts the duplicates.
        """
        out: list[StreamEvent] = []
        held = remote.held
        expected = _drain(held, remote.next_seq, out)
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
            if len(held) >= self.max_held:
                out, expected = self._overflow(remote, expected, out)
                if seq < expected:
                    duplicates += 1
                    continue
            held[seq] = event
            expected = _drain(held, expected, out)
        remote.next_seq = expected
        self.ctx.stats.duplicates += duplicates
        return out

    def _overflow(self, remote: RemoteRun, expected: int, out: list[StreamEvent]) -> tuple[list[StreamEvent], int]:
        """The held-back events reached their bound: deliver ``out``, then give the gap up at once.

        Returns the events now deliverable after the gap, and the next seq expected.
        """
        remote.next_seq = expected
        if out:
            self.inbound.deliver(out)
            out = []
        held = remote.held
        first = min(held)
        self.notify_missed(remote, f"events {expected}-{first - 1} of this run were lost in transit", first)
        return out, _drain(held, first, out)

    def _track_gap(self, remote: RemoteRun, start: int) -> None:
        """After delivery from ``start`` on: open, extend or close the run's current gap."""
        stats = self.ctx.stats
        if remote.held:
            now = time.monotonic()
            if remote.gap_since is None:
                # Live events ahead of the first catch-up's answer are no gap: the answer fills them in.
                if remote.ready.is_set():
                    stats.gaps += 1
                    remote.gap_counted = True
                self.repair(remote)
                remote.gap_since = now
            elif remote.next_seq > start:
                remote.gap_since = now  # a repair is making progress: give it time
                remote.attempts = 0
        elif remote.gap_since is not None:
            remote.gap_since = None
            remote.attempts = 0
            if remote.gap_counted:
                remote.gap_counted = False
                stats.repaired += 1

    def replayed(self, remote: RemoteRun, message: Message) -> None:
        """A frame of the owning node's answer to a replay request."""
        header = message.header
        first = header.get("f")
        following = self.following
        if header.get("g"):
            remote.ready.set()
            remote.repair_since = None
            self.settle(remote, "the node that ran this run no longer has it")
            following.update_syncing(remote)
            return
        if isinstance(first, int) and not isinstance(first, bool) and first > remote.next_seq:
            # The owner no longer keeps what came before ``first``.
            if remote.next_seq > 1:
                self.notify_missed(remote, "events before this point are no longer kept by their node", first)
            remote.next_seq = first
            for seq in [s for s in remote.held if s < first]:
                del remote.held[seq]
        self.accept(remote, message.events)
        if header.get("e"):
            remote.ready.set()
            remote.repair_since = None
            if remote.final is not None:
                self.settle(remote)  # asked for after the run ended: the answer holds all its node keeps
            following.update_syncing(remote)

    def repair(self, remote: RemoteRun) -> None:
        """Ask again for what is missing (unless a request is in flight)."""
        if remote.repair_since is not None:
            return
        ctx = self.ctx
        if ctx.transport.durable:
            remote.repair_since = time.monotonic()
            ctx.spawn(self._backfill(remote), f"kiki-bridge-backfill:{remote.run_id}")
        else:
            ctx.spawn(self.ask_replay(remote), f"kiki-bridge-repair:{remote.run_id}")

    async def _backfill(self, remote: RemoteRun) -> None:
        try:
            await self.ctx.transport.backfill(remote.run_id, remote.next_seq - 1)
        finally:
            remote.repair_since = None

    async def ask_replay(self, remote: RemoteRun) -> bool:
        """Ask the owning node to replay what this node lacks; ``False`` if it could not be asked."""
        owner = remote.owner
        if owner is None:
            return False
        remote.repair_since = time.monotonic()
        request: dict[str, Any] = {"run_id": remote.run_id, "after": remote.next_seq - 1}
        if remote.held and remote.final is None:
            # What is missing, not what already came (the end of a run that ended comes
            # only from a replay: ask for it too).
            request["until"] = min(remote.held) - 1
        try:
            await self.ctx.send_control(OP_REPLAY, request, owner)
        except TransportError:
            remote.repair_since = None
            return False
        return True

    def _skip_gap(self, remote: RemoteRun, why: str = "were lost in transit") -> None:
        """Give up on a gap: tell the readers, then deliver what came after it."""
        if not remote.held:
            return
        first = min(remote.held)
        self.notify_missed(remote, f"events {remote.next_seq}-{first - 1} of this run {why}", first)
        remote.next_seq = first
        remote.gap_since = None
        remote.gap_counted = False
        remote.attempts = 0
        self.accept(remote, [])

    def settle(self, remote: RemoteRun, reason: str | None = None) -> None:
        """A catch-up that brought all that is left of the run is done: end what it lacks.

        Called once the run has ended elsewhere (or its node no longer has it, ``reason``):
        nothing more will come. A gap is skipped with a ``missed`` notice saying which
        events are gone, what came after it is delivered, and if the run's end is still
        missing the readers are told so and the run ends here.
        """
        record = remote.record
        if record is None or record.ended:
            return
        self._skip_gap(remote, "are no longer available")
        if record.ended:
            return
        final = remote.final
        start = remote.next_seq
        if final is not None and final.last_seq >= start:
            missing = f"events {start}-{final.last_seq} of this run are no longer available"
        else:
            missing = f"the events of this run from seq {start} on are no longer available"
        self.end_here(remote, f"{missing} ({reason})" if reason else missing)

    def fetch_end(self, remote: RemoteRun) -> None:
        """Ask again for what is left of a run that ended elsewhere; after a few tries, settle it."""
        owner = remote.owner or "its node"
        if remote.final_attempts >= _REPAIR_ATTEMPTS:
            self.settle(remote, f"no complete answer from {owner} after {remote.final_attempts} requests")
            return
        remote.final_attempts += 1
        remote.final_asked = time.monotonic()
        ctx = self.ctx
        if ctx.transport.durable:
            ctx.spawn(self.backfill_end(remote), f"kiki-bridge-backfill:{remote.run_id}")
        else:
            ctx.spawn(self.ask_replay(remote), f"kiki-bridge-repair:{remote.run_id}")

    async def backfill_end(self, remote: RemoteRun) -> None:
        """Streams: read the rest of a run known to have ended; then what the stream lacks is gone."""
        if await self.ctx.transport.backfill(remote.run_id, remote.next_seq - 1):
            self.settle(remote)

    def end_here(self, remote: RemoteRun, detail: str) -> None:
        """The run will not continue: tell its readers here why (``missed``), then end it here.

        Its status is the one the registry gave when it ended elsewhere, if known.
        """
        record = remote.record
        if record is None or record.ended:
            return
        self.notify_missed(remote, detail, None)
        final = remote.final
        status = cast(RunStatus, final.status) if final is not None and final.status in _FINAL_STATUSES else None
        record.log.close(status)
        record.ended_at = final.ended_at if final is not None and final.ended_at else time.time()
        following = self.following
        following.update_syncing(remote)
        following.kick(remote)  # the run is over: stop receiving it

    def notify_missed(self, remote: RemoteRun, detail: str, first_seq: int | None) -> None:
        """Tell the run's readers here that events were lost (a ``missed`` notice, ``seq == 0``)."""
        ctx = self.ctx
        record = remote.record
        notice = StatusEvent(
            run_id=remote.run_id,
            seq=0,
            ts=round(time.time(), 3),
            thread_id=record.thread_id if record is not None else None,
            node=ctx.node,
            status="missed",
            detail=detail,
            first_seq=first_seq,
        )
        ctx.stats.missed += 1
        ctx.bus.deliver((notice,))

    def tick(self, now: float) -> None:
        """The repair timers: ask again after ``repair_timeout`` without progress, or give the gap up.

        A first catch-up that did not finish within a few such periods (its node does
        not answer, Redis is down) is given up too: the run's thread readers stop
        waiting for it (it goes on catching up in the background).
        """
        ctx = self.ctx
        timeout = ctx.repair_timeout
        following = self.following
        answer_within = max(timeout, READY_TIMEOUT)
        give_up = answer_within * _REPAIR_ATTEMPTS
        connected = ctx.transport.state == "connected"
        for remote in list(following.remote.values()):
            if not remote.ready.is_set() and now - remote.since >= give_up:
                remote.ready.set()
                following.update_syncing(remote)
            record = remote.record
            if record is None:
                continue  # being adopted: its events wait until this node knows whose run it is
            if (
                remote.final_asked is not None
                and now - remote.final_asked >= answer_within
                and remote.watching
                and connected  # an outage is no reason to give the rest of a run up
                and not record.ended
            ):
                self.fetch_end(remote)
            if remote.gap_since is not None and now - remote.gap_since >= timeout:
                if remote.attempts < _REPAIR_ATTEMPTS - 1:
                    # No progress: the request or its answer may be lost, or the owner busy. Ask again.
                    remote.attempts += 1
                    remote.gap_since = now
                    remote.repair_since = None
                    self.repair(remote)
                else:
                    self._skip_gap(remote)
            if remote.repair_since is not None and now - remote.repair_since >= max(timeout, READY_TIMEOUT):
                remote.repair_since = None  # the answer never came: allow another attempt
                remote.ready.set()
                following.update_syncing(remote)
