"""The history sink: hands this node's runs and their events to the event store's writer.

Built when ``store.enabled``. Its ``__call__`` decides whether an event is stored and
hands it to :meth:`HistoryWriter.add <kiki_events.history.HistoryWriter.add>` (a
buffer append); the writer's own task does the rest. Which node stores what: with
``store.scope: local`` (the default) each node stores the runs it executes — relayed
copies of other nodes' runs are stored by the node that ran them — so a shared
PostgreSQL database holds every run once; ``scope: all`` also stores the runs of
other nodes this node follows (written once all the same: writes are idempotent on
``(run_id, seq)``). Connection notices (``seq`` 0) are never stored. A run's owner,
graph and node come from the run store (:attr:`SinkContext.lookup_run`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..events import StreamEvent
from ..history import HistoryWriter, RunMeta, create_writer
from .base import Sink, SinkContext

if TYPE_CHECKING:
    from ..core.runrecord import RunRecord
    from ..history import EventStore

__all__ = ["HistorySink", "create"]

_KEPT_DECISIONS = 10_000
"""Runs whose store-or-skip decision is remembered (the oldest are forgotten first)."""


class HistorySink(Sink):
    """Feeds :attr:`writer` with the events this node stores (see the module docstring)."""

    name = "history"
    replayed = False
    """Replayed events (re-published from the store) are never stored again."""

    def __init__(
        self,
        writer: HistoryWriter,
        *,
        node: str | None,
        scope: str = "local",
        lookup: Callable[[str], RunRecord | None] | None = None,
    ) -> None:
        self.writer = writer
        self.node = node
        self.scope = scope
        self._lookup = lookup
        self._decided: dict[str, bool] = {}

    @property
    def store(self) -> EventStore:
        """The event store written to (query it for history)."""
        return self.writer.store

    def __call__(self, event: StreamEvent) -> None:
        if event.seq == 0:
            return
        keep = self._decided.get(event.run_id)
        if keep is None:
            keep = self._decide(event)
        if keep:
            self.writer.add(event)
        if event.type == "done":
            self._decided.pop(event.run_id, None)

    def _decide(self, event: StreamEvent) -> bool:
        if self.scope == "all":
            keep = True
        else:
            record = self._lookup(event.run_id) if self._lookup is not None else None
            node = record.node if record is not None else event.node
            keep = node is None or node == self.node
        decided = self._decided
        decided[event.run_id] = keep
        if len(decided) > _KEPT_DECISIONS:
            del decided[next(iter(decided))]
        return keep

    async def start(self) -> None:
        await self.writer.start()

    async def close(self) -> None:
        await self.writer.close()


def run_meta(lookup: Callable[[str], RunRecord | None]) -> Callable[[str], RunMeta | None]:
    """What the run store (``lookup``) knows of a run, as the writer wants it."""

    def meta(run_id: str) -> RunMeta | None:
        record = lookup(run_id)
        if record is None:
            return None
        return RunMeta(
            principal=record.principal,
            graph=record.graph,
            node=record.node,
            thread_id=record.thread_id,
            relayed_into=record.relayed_into,
            trace_id=record.trace_id,
        )

    return meta


def create(context: SinkContext) -> HistorySink | None:
    """The history sink when ``store.enabled``, else ``None``."""
    settings = context.settings.store
    if not settings.enabled:
        return None
    dropped = context.metrics.dropped if context.metrics is not None else None
    on_drop = (lambda reason: dropped.labels(reason=reason).inc()) if dropped is not None else None
    lookup = context.lookup_run
    writer = create_writer(settings, on_drop=on_drop, lookup=run_meta(lookup) if lookup is not None else None)
    return HistorySink(writer, node=context.node, scope=settings.scope, lookup=lookup)
