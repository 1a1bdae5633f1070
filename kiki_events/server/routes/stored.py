"""Runs served from the event store (``store.enabled``): docs/sse.md, "Resuming", and docs/history.md, "Replay".

``GET /runs/{run_id}/stream`` reads a run from the store when its events have left
memory: all of them (:func:`stored_run_stream`: the run is known only to the store)
or its first ones (:func:`backfilled`: a live run's bounded buffer lost them). The
store's rows are the same events, so the stream is the same: same ids, same frames,
in every format.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request, Response

from ...core.backfill import Fetch, Seen, Settle, StoredCursor
from ...core.cursors import ThreadCursor
from ...core.runrecord import RunRecord
from ...core.threadreplay import StoredThreadCursor
from ...core.threads import ThreadRecord
from ...errors import KikiEventsError, RunNotFoundError
from ...events import StreamEvent, TokenEvent
from ...formats import Format
from ...history.queries import MAX_LIMIT
from ...sinks.history import HistorySink
from ..auth import Principal
from .context import RouteContext, raise_http

if TYPE_CHECKING:
    from ...history import EventStore

__all__ = ["backfilled", "ended_in_store", "stored_run_stream", "stored_thread"]

_LOOKBACK = 512
"""Events before a resume point searched for the messages whose tokens began there."""
_SETTLE_TIMEOUT = 0.5
"""Seconds to wait for this node's writer to write what it holds (a busy writer is never idle: what is
still missing after that is waited for by reading the store again, see :class:`StoredCursor`)."""


def _fetcher(store: EventStore, run_id: str, principal: Principal) -> Fetch:
    async def fetch(after: int, limit: int) -> list[StreamEvent]:
        try:
            page = await store.events(principal, run_id=run_id, after=after, limit=limit)
        except RunNotFoundError:
            return []  # not stored (yet), or deleted by the retention meanwhile
        return page.events

    return fetch


def _seen(store: EventStore, run_id: str, principal: Principal) -> Seen:
    async def seen(after: int) -> set[str]:
        """Messages with a token at or shortly before ``after`` (so their next token is not their first)."""
        try:
            page = await store.events(
                principal, run_id=run_id, types=["token"], after=max(0, after - _LOOKBACK), limit=_LOOKBACK
            )
        except RunNotFoundError:
            return set()
        return {event.message_id for event in page.events if type(event) is TokenEvent and event.seq <= after}

    return seen


def _settle(ctx: RouteContext) -> Settle | None:
    writer = next((sink.writer for sink in ctx.runtime.sinks.sinks if isinstance(sink, HistorySink)), None)
    if writer is None:
        return None

    async def settle() -> object:
        return await writer.flush(_SETTLE_TIMEOUT)

    return settle


def backfilled(ctx: RouteContext, record: RunRecord, after: int, principal: Principal) -> StoredCursor | None:
    """A reader of ``record``'s run that turns to the store for what its buffer lost (``None``: the store is off).

    It reads the buffer while the buffer holds the next event, and the store whenever
    it does not: at the start (the first events were pushed out) or later (a reader
    slower than the run), so the reader never skips ahead.
    """
    store = ctx.runtime.history
    if store is None:
        return None
    return StoredCursor(
        record.run_id,
        _fetcher(store, record.run_id, principal),
        after=after,
        log=record.log,
        live=lambda log, at: ctx.run_cursor(log, at, record.thread_id),
        settle=_settle(ctx),
        seen=_seen(store, record.run_id, principal),
        thread_id=record.thread_id,
    )


async def ended_in_store(ctx: RouteContext, run_id: str, principal: Principal) -> bool:
    """Whether the store holds ``run_id`` whole (ended), for ``principal``: then it need not be asked of other nodes.

    ``False`` when it is not there, not theirs, still running, or the store cannot answer.
    """
    store = ctx.runtime.history
    if store is None:
        return False
    try:
        run = await store.run(run_id, principal)
    except KikiEventsError:
        return False
    return run.status != "running"


async def stored_run_stream(
    ctx: RouteContext,
    request: Request,
    run_id: str,
    principal: Principal,
    after: int,
    wire_format: Format,
    *,
    ended: bool = False,
) -> Response:
    """The stream of a run known only to the store (404 when it is not there either, or not ``principal``'s).

    Such a run is over as far as any node reachable from here knows: its stream ends
    after its last stored event, and 204 says there is nothing after ``after``.
    ``ended``: memory knows the run ended (204, not 404, when the store lacks it).
    """
    store = ctx.runtime.history
    if store is None:
        raise HTTPException(404, f"run {run_id!r} not found")
    settle = _settle(ctx)
    if settle is not None:
        await settle()  # a run that just left memory may still be in this node's writer
    try:
        run = await store.run(run_id, principal)
    except RunNotFoundError:
        if ended:
            return Response(status_code=204)
        raise HTTPException(404, f"run {run_id!r} not found") from None
    except KikiEventsError as exc:
        raise_http(exc)
    if after >= run.last_seq:
        return Response(status_code=204)
    cursor = StoredCursor(
        run_id,
        _fetcher(store, run_id, principal),
        after=after,
        seen=_seen(store, run_id, principal),
        thread_id=run.thread_id,
    )
    return ctx.stream(request, cursor, ctx.run_url(request, run_id), run_id, wire_format=wire_format)


async def stored_thread(
    ctx: RouteContext,
    thread_id: str,
    thread: ThreadRecord | None,
    principal: Principal,
    resume: tuple[str, int] | None,
    follow: Callable[[Callable[[str], bool], tuple[str, int] | None], ThreadCursor] | None,
) -> StoredThreadCursor:
    """A reader of the thread's stored runs (its latest 10,000) that ended or left memory, then ``follow``'s cursor.

    ``thread``: the thread in memory (``None``: known only to the store, 404 unless it
    holds runs of ``principal`` there; the stream then ends after them).
    """
    store = ctx.runtime.history
    if store is None:
        raise HTTPException(404, f"thread {thread_id!r} not found")
    settle = _settle(ctx)
    if settle is not None:
        await settle()
    try:
        page = await store.runs(principal, thread_id=thread_id, limit=MAX_LIMIT)
    except KikiEventsError as exc:
        raise_http(exc)
    runs = [run for run in reversed(page.runs) if run.relayed_into is None]
    if thread is None and not runs:
        raise HTTPException(404, f"thread {thread_id!r} not found")
    stored = [run.run_id for run in runs]
    ended = {run.run_id for run in runs if run.status != "running"}

    def in_memory() -> set[str]:
        """The runs the thread cursor reads: in memory from their first event, and not stored whole (an ended
        run's store is complete). A live run whose first events left its buffer is read as a stored one that
        hands over to its buffer."""
        if thread is None:
            return set()
        return {log.run_id for log in ctx.store.thread_logs(thread) if log.first_seq in (None, 1)} - ended

    def open_run(run_id: str, after: int) -> StoredCursor:
        fetch, seen = _fetcher(store, run_id, principal), _seen(store, run_id, principal)
        record = ctx.store.peek(run_id) if run_id not in ended else None
        if record is None:
            return StoredCursor(run_id, fetch, after=after, seen=seen, thread_id=thread_id)
        return StoredCursor(
            run_id,
            fetch,
            after=after,
            log=record.log,
            live=lambda log, at: ctx.run_cursor(log, at, thread_id),
            settle=_settle(ctx),
            seen=seen,
            thread_id=thread_id,
        )

    return StoredThreadCursor(thread_id, stored, in_memory, open_run, follow, resume=resume)
