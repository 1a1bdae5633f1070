"""Out: the events of this node's runs go to the transport, and the run registry follows them.

:class:`Outbound` is a sink on the local bus (the hot path: no awaits, never raises).
Each event of a run that executes here goes into the transport's bounded outbox; a
run's first event, its ``started`` status and its ``done`` also update the registry
entry that tells the other nodes where the run executes and how it is doing.

What is sent is chosen by the run's owner (its record's ``node``), not by the
event's ``node``: events relayed into a run of this node keep the node that made
them (an agent served elsewhere) and still travel with the run, while the events of
other nodes' runs that the bridge delivers here are never sent back.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from ..events import DoneEvent, StatusEvent, StreamEvent
from ..transports.base import RunInfo, Transport

if TYPE_CHECKING:
    from ..core.runrecord import RunRecord
    from ..core.store import RunStore

__all__ = ["Outbound"]


class Outbound:
    """This node's events and registry updates, on their way to the other nodes."""

    def __init__(self, transport: Transport, store: RunStore) -> None:
        self.transport = transport
        self.node = transport.node
        self.store = store
        self._peek = store.peek  # bound once: the sink runs for every event
        self._announced: set[str] = set()
        """Runs of this node whose registry entry was written (until their ``done``)."""

    def sink(self, event: StreamEvent) -> None:
        """Send an event of a run of this node to the other nodes."""
        run_id = event.run_id
        record = self._peek(run_id)
        # The store's sink runs first, so a run not started by a RunManager has a
        # record too (owned by the node that stamped its first event).
        if (record.node if record is not None else event.node) != self.node or event.seq == 0:
            return
        self.transport.publish(event)
        kind = type(event)
        if kind is DoneEvent:
            self._announced.discard(run_id)
            self._register(record, event)
        elif run_id not in self._announced:
            self._announced.add(run_id)
            self._register(record, event, announce=True)
        elif kind is StatusEvent and event.status == "started":  # type: ignore[union-attr]
            self._register(record, event)

    def created(self, record: RunRecord) -> None:
        """A run was created here (before its first event): register and announce it."""
        if record.node == self.node:
            self._announced.add(record.run_id)
            self.transport.register(self._info(record, "pending"), announce=True)

    def _register(self, record: RunRecord | None, event: StreamEvent, *, announce: bool = False) -> None:
        run_id = event.run_id
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
        """The registry entry of a run of this node (``status``, not ended yet)."""
        if record is None:
            return RunInfo(run_id or "", self.node, status, thread_id=thread_id, created_at=time.time())
        return dataclasses.replace(record.info(), node=self.node, status=status, ended_at=None, last_seq=0)
