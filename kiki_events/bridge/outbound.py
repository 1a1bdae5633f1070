"""Out: events produced on this node go to the transport, and the run registry follows them.

:class:`Outbound` is a sink on the local bus (the hot path: no awaits, never raises).
Each event made here (``event.node == node``) goes into the transport's bounded
outbox; a run's first event, its ``started`` status and its ``done`` also update
the registry entry that tells the other nodes where the run executes and how it
is doing.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from ..events import DoneEvent, StatusEvent, StreamEvent
from ..transports.base import RunInfo, Transport

if TYPE_CHECKING:
    from ..runs import RunRecord, RunStore

__all__ = ["Outbound"]


class Outbound:
    """This node's events and registry updates, on their way to the other nodes."""

    def __init__(self, transport: Transport, store: RunStore) -> None:
        self.transport = transport
        self.node = transport.node
        self.store = store
        self._announced: set[str] = set()
        """Runs of this node whose registry entry was written (until their ``done``)."""

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

    def created(self, record: RunRecord) -> None:
        """A run was created here (before its first event): register and announce it."""
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
