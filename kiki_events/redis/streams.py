"""Redis streams transport: durable; nothing is lost while Redis keeps its data.

Keys (names from :class:`~kiki_events.redis.client.Keys`, under the prefix):

* ``stream:{<run_id>}`` – the run: one entry per frame (field ``d``), trimmed with
  ``MAXLEN ~`` (``eventbus.persistence.stream_maxlen`` entries) and expiring
  ``run_ttl`` after the run ends. Entry ids are ``<seq>-<n>``, where ``<seq>`` is
  the highest seq of the entry (or of an earlier one): resuming after seq ``N``
  reads from id ``N+1-0``, and a frame sent twice (a retried flush) is refused by
  Redis instead of stored twice.
* ``threadstream:{<thread_id>}`` – one entry per run started on the thread.
* ``lifecyclestream`` – lifecycle events of every run (bounded).
* ``controlstream`` and ``controlstream:<node>`` – control messages.

A node reads every stream it watches with **one** ``XREAD BLOCK`` loop; when it
starts watching a run it first reads what is stored (``XRANGE``), so a reader
can resume on any node, even after the producing node is gone. When Redis cannot
be reached, the loop tries again with backoff (at most 1 s between attempts) and
reports the reader up again only once Redis has answered. Outbound frames
stay in the outbox until Redis has them: with persistence on (AOF) a Redis
restart loses nothing. Without persistence, a restart loses what Redis held.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import OrderedDict
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.records import text_of
from ..core.tasks import Backoff, supervise
from ..errors import TransportError
from ..redaction import redact_text
from ..transports.base import ControlMessage, WatchKind
from ..transports.common import TransportOptions, control_extra, replay_frames
from ..transports.outbox import OutboxBatch, chunks
from ..transports.wire import KIND_BATCH, KIND_CONTROL, KIND_LIFECYCLE, KIND_THREAD, pack, run_frame_of
from .client import blocking_command
from .registry import RUNNING_TTL, RedisTransportBase

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

__all__ = ["RedisStreamsTransport"]

_BLOCK_MS = 100
"""Longest XREAD wait: a newly watched stream joins the loop within this time."""
_PAGE = 512
_SHARED_MAXLEN = 10_000
_CONTROL_MAXLEN = 1_000
_CONTROL_TTL = 86400
_DUPLICATE = "equal or smaller"
_BOUNDED_MEMORY = 4096


_SETTLE_ROUNDS = 3
"""Tries of a refused run entry after the one that failed (each removes what blocks it)."""


@dataclass(frozen=True, slots=True)
class _Write:
    """One frame for a run stream, at its ``<seq>-<n>`` id."""

    run_id: str
    stream: str
    entry_id: str
    frame: bytes
    events: int


def _id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RedisStreamsTransport(RedisTransportBase):
    """See the module docstring."""

    name = "redis-streams"
    durable = True

    def __init__(
        self, redis: Redis, *, node: str, options: TransportOptions | None = None, owns_client: bool = False
    ) -> None:
        super().__init__(redis, node=node, options=options, owns_client=owns_client)
        self._positions: dict[str, str] = {}
        self._last_ids: dict[str, tuple[int, int]] = {}
        self._bounded: OrderedDict[str, None] = OrderedDict()
        """Runs whose stream already has its safety expiry (in case their node dies before the end)."""
        self._tails_known = False
        self._run_streams = self.keys.run_stream("")[:-1]
        """What the key of every run stream starts with (``<prefix>stream:{``)."""

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "streams": len(self._positions)}

    # -- the reader ------------------------------------------------------------------------
    async def _start_reader(self) -> None:
        self._tasks.append(supervise(f"kiki-bridge-read:{self.name}", self._read_forever))

    async def _find_tails(self) -> None:
        """Start shared streams at their current end (``$``, without losing what comes meanwhile)."""
        keys = self.keys
        shared = [keys.control_stream(), keys.control_stream(self.node)]
        if self.options.lifecycle:
            shared.append(keys.lifecycle_stream())
        pipe = self.redis.pipeline(transaction=False)
        for key in shared:
            pipe.xrevrange(key, count=1)
        tails = await self._call(pipe.execute())
        for key, tail in zip(shared, tails, strict=True):
            self._positions.setdefault(key, text_of(tail[0][0]) if tail else "0-0")
        self._tails_known = True

    async def _read_forever(self) -> None:
        backoff = Backoff()
        while not self._closed:
            try:
                if not self._tails_known:
                    await self._find_tails()
                    self._read_ok(backoff)
                positions = dict(self._positions)
                reply: Any = await blocking_command(
                    self.redis, "XREAD", "COUNT", _PAGE, "BLOCK", _BLOCK_MS, "STREAMS", *positions, *positions.values()
                )
            except self._errors as exc:
                self._reader_down(exc)
                await asyncio.sleep(backoff.next())
                continue
            self._read_ok(backoff)
            for key, entries in reply.items() if isinstance(reply, dict) else reply or ():
                name = text_of(key)
                foreign: list[str] = []
                for entry_id, fields in entries:
                    if name not in self._positions:
                        break  # unwatched meanwhile
                    if self._entry(name, fields, live=True):
                        self._positions[name] = text_of(entry_id)
                    else:
                        foreign.append(text_of(entry_id))
                if foreign:
                    await self._remove_foreign(name, foreign)

    def _read_ok(self, backoff: Backoff) -> None:
        """Redis answered the reader: it is up (again), and the next outage backs off from the start."""
        if self._in_ok is not True:
            backoff.reset()
            self._reader_up()

    def _entry(self, stream: str, fields: Mapping[Any, Any], *, live: bool) -> bool:
        """Deliver one entry of ``stream``; ``False`` if it is foreign to a run stream (dropped and counted).

        Entries of a run stream carry ids ``<seq>-<n>``: reading on past one that some
        other client added (an auto id, far higher) would skip the run's next entries,
        so the position stays before it and the entry is removed.
        """
        data = fields.get(b"d", fields.get("d"))
        if data is None or len(fields) != 1:
            self.stats.drop("malformed")
            self._log_once("malformed", "dropped a frame from the transport: %s", "stream entry without a frame")
            return not stream.startswith(self._run_streams)
        dropped = self._receive(data, live=live)
        if dropped is None or not stream.startswith(self._run_streams):
            return True
        return run_frame_of(data, stream[len(self._run_streams) : -1]) is not None

    async def _remove_foreign(self, stream: str, entry_ids: Sequence[str]) -> None:
        """Delete entries that are not frames of the run from its stream (read again if this fails)."""
        with contextlib.suppress(TransportError):
            await self._call(self.redis.xdel(stream, *entry_ids))

    async def _range(self, key: str, start: str) -> str | None:
        """Deliver the entries of ``key`` from id ``start`` on; returns the id of the last one delivered."""
        last: str | None = None
        while True:
            entries: Any = await self._call(self.redis.xrange(key, min=start, max="+", count=_PAGE))
            foreign: list[str] = []
            for entry_id, fields in entries:
                if self._entry(key, fields, live=False):
                    last = text_of(entry_id)
                else:
                    foreign.append(text_of(entry_id))
            if foreign:
                await self._remove_foreign(key, foreign)
            if len(entries) < _PAGE:
                return last
            start = f"({text_of(entries[-1][0])}"

    # -- watching ------------------------------------------------------------------------------
    def _key(self, kind: WatchKind, key: str) -> str:
        return self.keys.run_stream(key) if kind == "run" else self.keys.thread_stream(key)

    async def watch(self, kind: WatchKind, key: str, *, after: int = 0) -> bool:
        name = self._key(kind, key)
        if name in self._positions:
            return True
        start = f"{after + 1}-0" if kind == "run" else "-"
        try:
            last = await self._range(name, start)
        except TransportError:
            # The loop reads everything from this position once Redis is back.
            self._positions[name] = f"{after}-0" if kind == "run" else "0-0"
            return False
        self._positions[name] = last or (f"{after}-0" if kind == "run" else "0-0")
        return True

    async def unwatch(self, kind: WatchKind, key: str) -> None:
        self._positions.pop(self._key(kind, key), None)

    async def backfill(self, run_id: str, after: int) -> bool:
        try:
            await self._range(self.keys.run_stream(run_id), f"{after + 1}-0")
        except TransportError:
            return False
        return True

    # -- sending ---------------------------------------------------------------------------------
    def _entry_id(self, ids: dict[str, tuple[int, int]], run_id: str, seq: int) -> str:
        last = ids.get(run_id) or self._last_ids.get(run_id)
        if last is None or seq > last[0]:
            ms, sub = seq, 0
        else:  # a late event: keep ids increasing, under a seq at least as high as it
            ms, sub = last[0], last[1] + 1
        ids[run_id] = (ms, sub)
        return f"{ms}-{sub}"

    async def _send(self, batch: OutboxBatch) -> None:
        keys, node, opts, stats = self.keys, self.node, self.options, self.stats
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        ended = []
        for info, announce in batch.registry.values():
            if info.ended:
                ended.append(info)
                continue
            self._queue_registry(pipe, info)
            if announce and info.thread_id:
                marker = pack(KIND_THREAD, node, sent_at=now, run_id=info.run_id, i=info.to_fields())
                stream = keys.thread_stream(info.thread_id)
                pipe.xadd(stream, {"d": marker}, maxlen=_CONTROL_MAXLEN, approximate=True)
                pipe.expire(stream, RUNNING_TTL)
        ids: dict[str, tuple[int, int]] = {}
        writes: dict[int, _Write] = {}
        """The run entries queued, by their place in the pipeline."""
        frames = 0
        for run_id, pending in batch.runs.items():
            events, seqs = pending.events, pending.seqs
            if any(a > b for a, b in itertools.pairwise(seqs)):
                order = sorted(range(len(seqs)), key=seqs.__getitem__)
                events, seqs = [events[i] for i in order], [seqs[i] for i in order]
            stream = keys.run_stream(run_id)
            for start, stop in chunks(events, opts.batch_size, opts.frame_bytes):
                frame = pack(KIND_BATCH, node, events[start:stop], sent_at=now, run_id=run_id)
                write = _Write(run_id, stream, self._entry_id(ids, run_id, seqs[stop - 1]), frame, stop - start)
                writes[len(pipe)] = write
                self._queue_write(pipe, write)
                frames += 1
            if run_id not in self._bounded:
                pipe.expire(stream, RUNNING_TTL, nx=True)
        lifecycle = batch.lifecycle
        for start, stop in chunks(lifecycle, opts.batch_size, opts.frame_bytes):
            frame = pack(KIND_LIFECYCLE, node, lifecycle[start:stop], sent_at=now)
            pipe.xadd(keys.lifecycle_stream(), {"d": frame}, maxlen=_SHARED_MAXLEN, approximate=True)
            frames += 1
        for info in ended:
            self._queue_registry(pipe, info)
            pipe.expire(keys.run_stream(info.run_id), int(opts.run_ttl))
        results = await pipe.execute(raise_on_error=False)
        refused = self._check(results, writes)
        if refused:
            lost = await self._settle(refused)
            frames -= len(lost)
            stats.events_out -= sum(write.events for write in lost)
        self._last_ids.update(ids)
        for run_id in batch.runs:
            self._bounded[run_id] = None
        for info in ended:
            self._last_ids.pop(info.run_id, None)
            self._bounded.pop(info.run_id, None)
        while len(self._bounded) > _BOUNDED_MEMORY:
            self._bounded.popitem(last=False)
        stats.messages_out += frames
        stats.events_out += batch.count

    def _queue_write(self, pipe: Pipeline, write: _Write) -> None:
        pipe.xadd(
            write.stream, {"d": write.frame}, id=write.entry_id, maxlen=self.options.stream_maxlen, approximate=True
        )

    def _check(
        self, results: Sequence[Any], writes: Mapping[int, _Write], *, expected: Container[int] = ()
    ) -> list[_Write]:
        """Raise a connection error, count other errors (not at ``expected``); return run entries refused as old."""
        refused: list[_Write] = []
        for index, result in enumerate(results):
            if not isinstance(result, Exception) or index in expected:
                continue
            if isinstance(result, self._errors):
                raise result
            write = writes.get(index)
            if write is not None and _DUPLICATE in str(result):
                refused.append(write)
                continue
            self.stats.drop("redis_error")
            self._log_once("redis_error", "Redis refused a bridge command: %s", redact_text(str(result)))
        return refused

    async def _settle(self, refused: list[_Write]) -> list[_Write]:
        """Run entries Redis refused because their stream's last id is as high as theirs, or higher.

        What is stored from the first refused id on says why: our own entry at the
        same id is the frame sent before (a flush that failed after Redis took it:
        nothing to do). Anything else there is foreign: some client added it, most
        likely with an auto id, far above ``<seq>-<n>``, so it would block every
        later entry of the run; it is removed (counted as ``foreign``, logged once).
        The stream's last id (which Redis keeps past deleted entries, such as one a
        reader removed) is then set back to its top entry and the entries are sent
        again. Returns those still refused after that (counted as ``refused``,
        logged once): lost.
        """
        for _ in range(_SETTLE_ROUNDS):
            by_stream: dict[str, list[_Write]] = {}
            for write in refused:
                by_stream.setdefault(write.stream, []).append(write)
            pipe = self.redis.pipeline(transaction=False)
            for stream, waiting in by_stream.items():
                pipe.xrange(stream, min=waiting[0].entry_id, max="+", count=len(waiting) + _PAGE)
                pipe.xrevrange(stream, max=f"({waiting[0].entry_id}", min="-", count=1)
            stored = iter(await self._call(pipe.execute()))
            pipe = self.redis.pipeline(transaction=False)
            again: dict[int, _Write] = {}
            resets: set[int] = set()
            """Where ``XSETID`` is: it fails if something was added meanwhile (and the entries with it)."""
            removed = 0
            for stream, waiting in by_stream.items():
                entries, below = next(stored), next(stored)
                ours: list[str] = []
                foreign: list[str] = []
                for entry_id, fields in entries:
                    data = fields.get(b"d", fields.get("d"))
                    own = len(fields) == 1 and run_frame_of(data, waiting[0].run_id) == self.node
                    (ours if own else foreign).append(text_of(entry_id))
                if foreign:
                    pipe.xdel(stream, *foreign)
                    removed += len(foreign)
                retry = [write for write in waiting if write.entry_id not in ours]
                if not retry:
                    continue
                top = max(ours, key=_id_order) if ours else text_of(below[0][0]) if below else "0-0"
                resets.add(len(pipe))
                pipe.execute_command("XSETID", stream, top)
                for write in retry:
                    again[len(pipe)] = write
                    self._queue_write(pipe, write)
            if removed:
                self.stats.drop("foreign", removed)
                self._log_once("foreign", "removed %d entries that are not frames of the run from run streams", removed)
            if not len(pipe):
                return []
            refused = self._check(await self._call(pipe.execute(raise_on_error=False)), again, expected=resets)
            if not refused:
                return []
        self.stats.drop("refused", sum(write.events for write in refused))
        first = refused[0]
        self._log_once(
            "refused",
            "Redis refused %d frame(s) of run streams (first: %s at %s): their events are lost",
            len(refused),
            first.stream,
            first.entry_id,
        )
        return refused

    async def _send_frames(self, stream: str, frames: Sequence[bytes]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for frame in frames:
            pipe.xadd(stream, {"d": frame}, maxlen=_CONTROL_MAXLEN, approximate=True)
        pipe.expire(stream, _CONTROL_TTL)
        await self._call(pipe.execute())
        self.stats.messages_out += len(frames)

    async def send_control(self, message: ControlMessage, node: str | None = None) -> None:
        frame = pack(KIND_CONTROL, self.node, sent_at=time.time(), **control_extra(message))
        await self._send_frames(self.keys.control_stream(node), [frame])

    async def send_replay(
        self, node: str, run_id: str, events: Sequence[bytes], *, first: int | None = None, gone: bool = False
    ) -> None:
        frames = replay_frames(self.node, run_id, events, self.options, first=first, gone=gone)
        await self._send_frames(self.keys.control_stream(node), frames)
