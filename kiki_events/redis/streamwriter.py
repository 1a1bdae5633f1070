"""The sending side of the Redis streams transport: run entries at ``<seq>-<n>`` ids.

Every flush is one pipeline: registry updates (and thread announcements), the run
frames at ids derived from their events' seqs (so a retried flush is refused
instead of stored twice), lifecycle frames, then the entries of runs that ended.
Entries Redis refuses are settled: ours already stored is fine, anything foreign
in the way is removed and the entry sent again (see :meth:`StreamWriter._settle`).
Key layout: :mod:`kiki_events.redis.streams`.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.records import RunInfo, text_of
from ..redaction import redact_text
from ..transports.frames import announcement, framed
from ..transports.options import TransportOptions
from ..transports.outbox import OutboxBatch, PendingRun
from ..transports.wire import KIND_BATCH, KIND_LIFECYCLE, run_frame_of
from .registry import RUNNING_TTL, RedisTransportBase

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

__all__ = ["PAGE", "StreamWriter"]

PAGE = 512
"""Most entries read in one command."""
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


class StreamWriter(RedisTransportBase):
    """What the streams transport sends, and how.

    Its reader is :class:`~kiki_events.redis.streams.RedisStreamsTransport`.
    """

    def __init__(
        self, redis: Redis, *, node: str, options: TransportOptions | None = None, owns_client: bool = False
    ) -> None:
        super().__init__(redis, node=node, options=options, owns_client=owns_client)
        self._last_ids: dict[str, tuple[int, int]] = {}
        self._bounded: OrderedDict[str, None] = OrderedDict()
        """Runs whose stream already has its safety expiry (in case their node dies before the end)."""

    def _entry_id(self, ids: dict[str, tuple[int, int]], run_id: str, seq: int) -> str:
        last = ids.get(run_id) or self._last_ids.get(run_id)
        if last is None or seq > last[0]:
            ms, sub = seq, 0
        else:  # a late event: keep ids increasing, under a seq at least as high as it
            ms, sub = last[0], last[1] + 1
        ids[run_id] = (ms, sub)
        return f"{ms}-{sub}"

    async def _send(self, batch: OutboxBatch) -> None:
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        ended = self._queue_registry_updates(pipe, batch, now)
        ids: dict[str, tuple[int, int]] = {}
        writes: dict[int, _Write] = {}
        """The run entries queued, by their place in the pipeline."""
        frames = 0
        for run_id, pending in batch.runs.items():
            frames += self._queue_run(pipe, run_id, pending, now, ids, writes)
        for _, _, frame in framed(KIND_LIFECYCLE, self.node, batch.lifecycle, self.options, sent_at=now):
            pipe.xadd(self.keys.lifecycle_stream(), {"d": frame}, maxlen=_SHARED_MAXLEN, approximate=True)
            frames += 1
        for info in ended:
            self._queue_registry(pipe, info)
            pipe.expire(self.keys.run_stream(info.run_id), int(self.options.run_ttl))
        results = await pipe.execute(raise_on_error=False)
        refused = self._check(results, writes)
        if refused:
            lost = await self._settle(refused)
            frames -= len(lost)
            self.stats.events_out -= sum(write.events for write in lost)
        self._sent(batch, ids, ended)
        self.stats.messages_out += frames
        self.stats.events_out += batch.count

    def _queue_registry_updates(self, pipe: Pipeline, batch: OutboxBatch, now: float) -> list[RunInfo]:
        """Queue the registry updates of runs still going (and their announcements); returns those that ended.

        An ended run's entry is queued after its last frames, so its stream expires after them.
        """
        ended = []
        for info, announce in batch.registry.values():
            if info.ended:
                ended.append(info)
                continue
            self._queue_registry(pipe, info)
            if announce and info.thread_id:
                stream = self.keys.thread_stream(info.thread_id)
                marker = announcement(self.node, info, sent_at=now)
                pipe.xadd(stream, {"d": marker}, maxlen=_CONTROL_MAXLEN, approximate=True)
                pipe.expire(stream, RUNNING_TTL)
        return ended

    def _queue_run(
        self,
        pipe: Pipeline,
        run_id: str,
        pending: PendingRun,
        now: float,
        ids: dict[str, tuple[int, int]],
        writes: dict[int, _Write],
    ) -> int:
        """Queue the frames of one run at their ``<seq>-<n>`` ids; returns how many."""
        events, seqs = pending.events, pending.seqs
        if any(a > b for a, b in itertools.pairwise(seqs)):
            order = sorted(range(len(seqs)), key=seqs.__getitem__)
            events, seqs = [events[i] for i in order], [seqs[i] for i in order]
        stream = self.keys.run_stream(run_id)
        frames = 0
        for start, stop, frame in framed(KIND_BATCH, self.node, events, self.options, sent_at=now, run_id=run_id):
            write = _Write(run_id, stream, self._entry_id(ids, run_id, seqs[stop - 1]), frame, stop - start)
            writes[len(pipe)] = write
            self._queue_write(pipe, write)
            frames += 1
        if run_id not in self._bounded:
            pipe.expire(stream, RUNNING_TTL, nx=True)
        return frames

    def _sent(self, batch: OutboxBatch, ids: Mapping[str, tuple[int, int]], ended: Sequence[RunInfo]) -> None:
        """Remember the last entry id of each run (and forget the runs that ended)."""
        self._last_ids.update(ids)
        for run_id in batch.runs:
            self._bounded[run_id] = None
        for info in ended:
            self._last_ids.pop(info.run_id, None)
            self._bounded.pop(info.run_id, None)
        while len(self._bounded) > _BOUNDED_MEMORY:
            self._bounded.popitem(last=False)

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
                pipe.xrange(stream, min=waiting[0].entry_id, max="+", count=len(waiting) + PAGE)
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

    async def _send_control_frames(self, node: str | None, frames: Sequence[bytes]) -> None:
        stream = self.keys.control_stream(node)
        pipe = self.redis.pipeline(transaction=False)
        for frame in frames:
            pipe.xadd(stream, {"d": frame}, maxlen=_CONTROL_MAXLEN, approximate=True)
        pipe.expire(stream, _CONTROL_TTL)
        await self._call(pipe.execute())
        self.stats.messages_out += len(frames)
