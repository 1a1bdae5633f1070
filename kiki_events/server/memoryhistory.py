"""The history queries answered from the runs this node keeps in memory (the event store is off).

:class:`MemoryHistory` offers the query methods of an
:class:`~kiki_events.history.EventStore` (``runs``, ``run``, ``events``, ``search``,
``causation``) over the :class:`~kiki_events.core.store.RunStore`, with the same
ownership rules, results and cursors' behaviour. What differs (docs/history.md,
"Without a store"): only the runs this node still keeps (``runs.replay_ttl`` after
they end, at most ``runs.max_runs``) and only the events still in their replay
buffer (``runs.replay_events``); a run's totals count those events; ``started_at`` is
its first kept event's time (its record's creation before any); a run that is not
yet ``started`` is listed as ``running``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..core.runrecord import RunRecord
from ..core.store import RunStore
from ..errors import InvalidArgumentError, RunNotFoundError
from ..events import StreamEvent, Usage
from ..history import Causation, EventPage, Link, RunMeta, RunPage, StoredRun
from ..history.queries import MAX_LIMIT
from ..history.sql import caused_by, decode_cursor, encode_cursor, run_from_row, split_event_id
from ..history.tally import RunTally

__all__ = ["MemoryHistory"]

_STATUSES = ("running", "success", "error", "interrupted", "cancelled")


def _limit(limit: int) -> int:
    if isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgumentError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    return limit


def _events(record: RunRecord) -> list[StreamEvent]:
    log = record.log
    frames, _ = log.read(0, len(log) + 1)
    return [frame.event for frame in frames]


def _matches(event: StreamEvent, types: Sequence[str], agent: str | None) -> bool:
    if types and event.type not in types:
        return False
    if agent is not None:
        name = event.agent
        return name is not None and (name == agent or name.startswith(agent + "/"))
    return True


def stored_run(record: RunRecord) -> StoredRun:
    """``record`` as the event store would list it, counted over the events it still keeps."""
    events = _events(record)
    meta = RunMeta(record.principal, record.graph, record.node, record.thread_id, record.relayed_into, record.trace_id)
    if not events:
        status = record.status if record.status != "pending" else "running"
        return StoredRun(
            record.run_id, record.thread_id, record.graph, record.principal, record.node, status,
            record.created_at, record.ended_at, None, record.log.last_seq, 0, 0, 0, 0, 0, record.usage or Usage(),
            trace_id=record.trace_id, relayed_into=record.relayed_into,
        )  # fmt: skip
    tally = RunTally(events[0], meta)
    for event in events:
        tally.add(event)
        if event.agent is not None:
            tally.agents.add(event.agent)
    if record.ended and tally.status == "running" and record.status not in ("pending", "running"):
        tally.status = record.status
    return run_from_row(tally.row(), sorted(tally.agents))


class MemoryHistory:
    """The history queries over ``store`` (this node's runs in memory); see the module docstring."""

    backend = "memory"

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def _visible(self, principal: str | None) -> Iterable[RunRecord]:
        store = self.store
        return (r for r in store.records() if store.visible(r, principal))

    async def run(self, run_id: str, principal: str | None) -> StoredRun:
        """One run (:class:`RunNotFoundError` when not kept here or not ``principal``'s)."""
        return stored_run(self.store.get(run_id, principal))

    async def runs(
        self,
        principal: str | None,
        *,
        thread_id: str | None = None,
        graph: str | None = None,
        agent: str | None = None,
        status: Sequence[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Runs kept here matching every filter, newest first (as :meth:`EventStore.runs`)."""
        size = _limit(limit)
        statuses = list(status or ())
        if any(s not in _STATUSES for s in statuses):
            raise InvalidArgumentError(f"status must be among {', '.join(_STATUSES)}, got {statuses!r}")
        key: tuple[float, str] | None = None
        if cursor is not None:
            started, after_id = decode_cursor(cursor, (float, str))
            key = (float(started), after_id)
        candidates = [
            r for r in self._visible(principal)
            if (thread_id is None or r.thread_id == thread_id) and (graph is None or r.graph == graph)
        ]  # fmt: skip
        runs = [stored_run(r) for r in candidates]
        kept = [
            run for run in runs
            if (not statuses or run.status in statuses)
            and (since is None or run.started_at >= since)
            and (until is None or run.started_at < until)
            and (agent is None or any(a == agent or a.startswith(agent + "/") for a in run.agents))
            and (key is None or (run.started_at, run.run_id) < key)
        ]  # fmt: skip
        kept.sort(key=lambda run: (run.started_at, run.run_id), reverse=True)
        page = kept[:size]
        more = len(kept) > size
        return RunPage(page, encode_cursor(page[-1].started_at, page[-1].run_id) if more else None)

    async def events(
        self,
        principal: str | None,
        *,
        run_id: str | None = None,
        thread_id: str | None = None,
        types: Sequence[str] = (),
        agent: str | None = None,
        after: int = 0,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> EventPage:
        """The events kept of one run (``seq > after``) or one thread (its runs oldest first)."""
        if (run_id is None) == (thread_id is None):
            raise InvalidArgumentError("events() needs exactly one of run_id and thread_id")
        size = _limit(limit)
        if run_id is not None:
            record = self.store.get(run_id, principal)
            if cursor is not None:
                (after,) = decode_cursor(cursor, (int,))
            found = [e for e in _events(record) if e.seq > after and _matches(e, types, agent)]
            more = len(found) > size
            return EventPage(found[:size], encode_cursor(found[size - 1].seq) if more else None)
        thread = self.store.thread(str(thread_id), principal)
        records = [
            r for r in (self.store.peek(run) for run in thread.runs)
            if r is not None and r.relayed_into is None and self.store.visible(r, principal)
        ]  # fmt: skip
        keyed = [
            ((i, e.seq), e) for i, r in enumerate(records) for e in _events(r) if _matches(e, types, agent)
        ]  # fmt: skip
        if cursor is not None:
            index, seq = decode_cursor(cursor, (int, int))
            keyed = [item for item in keyed if item[0] > (index, seq)]
        more = len(keyed) > size
        return EventPage([e for _, e in keyed[:size]], encode_cursor(*keyed[size - 1][0]) if more else None)

    async def search(
        self,
        principal: str | None,
        *,
        types: Sequence[str] = (),
        agent: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> EventPage:
        """Events kept of every run ``principal`` may see, ``ts`` in ``[since, until)``, oldest first."""
        size = _limit(limit)
        key: tuple[float, str, int] | None = None
        if cursor is not None:
            ts, run_id, seq = decode_cursor(cursor, (float, str, int))
            key = (float(ts), run_id, seq)
        found = [
            e for r in self._visible(principal) for e in _events(r)
            if _matches(e, types, agent) and (since is None or e.ts >= since) and (until is None or e.ts < until)
            and (key is None or (e.ts, e.run_id, e.seq) > key)
        ]  # fmt: skip
        found.sort(key=lambda e: (e.ts, e.run_id, e.seq))
        more = len(found) > size
        last = found[size - 1] if more else None
        return EventPage(found[:size], encode_cursor(last.ts, last.run_id, last.seq) if last is not None else None)

    async def causation(
        self, principal: str | None, *, run_id: str | None = None, event_id: str | None = None, depth: int = 16
    ) -> Causation:
        """The causation chain of a run or event among the runs kept here (as :meth:`EventStore.causation`)."""
        if (run_id is None) == (event_id is None):
            raise InvalidArgumentError("causation() needs exactly one of run_id and event_id")
        event: StreamEvent | None = None
        if event_id is not None:
            run_id, seq = split_event_id(event_id)
            record = self.store.get(run_id, principal)
            event = next((e for e in _events(record) if e.seq == seq), None)
            if event is None:
                raise RunNotFoundError(f"event {event_id!r} not found")
        run = await self.run(str(run_id), principal)
        cause = (event.causation_id if event is not None else None) or run.causation_id
        causes: list[Link] = []
        seen = {run.run_id}
        while cause is not None and len(causes) < depth:
            parent = caused_by(cause)
            if parent is None or parent in seen or not self._sees(parent, principal):
                break
            seen.add(parent)
            found = await self.run(parent, principal)
            causes.append(Link(found, len(causes) + 1, cause))
            cause = found.causation_id
        return Causation(run, event, causes, self._effects(principal, run.run_id, event_id, depth))

    def _sees(self, run_id: str, principal: str | None) -> bool:
        record = self.store.peek(run_id)
        return record is not None and self.store.visible(record, principal)

    def _effects(self, principal: str | None, root: str, event_id: str | None, depth: int) -> list[Link]:
        runs = [stored_run(r) for r in self._visible(principal)]
        links: list[Link] = []
        seen = {root}
        frontier = {root}
        for level in range(1, depth + 1):
            if level == 1 and event_id is not None:
                step = [run for run in runs if run.causation_id == event_id]
            else:
                step = [run for run in runs if run.caused_by in frontier]
            step = sorted((run for run in step if run.run_id not in seen), key=lambda run: run.run_id)
            if not step:
                break
            frontier = set()
            for run in step:
                seen.add(run.run_id)
                frontier.add(run.run_id)
                links.append(Link(run, level, run.causation_id))
        return sorted(links, key=lambda link: (link.depth, link.run.started_at, link.run.run_id))
