"""Redis streams transport: durable; nothing is lost while Redis keeps its data.

Keys (names from :class:`~kiki_events.redis_client.Keys`, under the prefix):

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
import itertools
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import TransportError
from ..redaction import redact_text
from ..redis_client import blocking_command, reply_text
from .base import ControlMessage, WatchKind
from .common import Backoff, TransportOptions, control_extra, replay_frames, supervise
from .outbox import OutboxBatch, chunks
from .redis_common import RUNNING_TTL, RedisTransportBase
from .wire import KIND_BATCH, KIND_CONTROL, KIND_LIFECYCLE, KIND_THREAD, pack

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisStreamsTransport"]

_BLOCK_MS = 100
"""Longest XREAD wait: a newly watched stream joins the loop within this time."""
_PAGE = 512
_SHARED_MAXLEN = 10_000
_CONTROL_MAXLEN = 1_000
_CONTROL_TTL = 86400
_DUPLICATE = "equal or smaller"
_BOUNDED_MEMORY = 4096


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
            self._positions.setdefault(key, reply_text(tail[0][0]) if tail else "0-0")
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
                name = reply_text(key)
                for entry_id, fields in entries:
                    if name not in self._positions:
                        break  # unwatched meanwhile
                    self._positions[name] = reply_text(entry_id)
                    self._entry(fields, live=True)

    def _read_ok(self, backoff: Backoff) -> None:
        """Redis answered the reader: it is up (again), and the next outage backs off from the start."""
        if self._in_ok is not True:
            backoff.reset()
            self._reader_up()

    def _entry(self, fields: Mapping[Any, Any], *, live: bool) -> None:
        data = fields.get(b"d", fields.get("d"))
        if data is None:
            self.stats.drop("malformed")
            self._log_once("malformed", "dropped a frame from the transport: %s", "stream entry without a frame")
            return
        self._receive(data, live=live)

    async def _range(self, key: str, start: str) -> str | None:
        """Deliver the entries of ``key`` from id ``start`` on; returns the last id read."""
        last: str | None = None
        while True:
            entries: Any = await self._call(self.redis.xrange(key, min=start, max="+", count=_PAGE))
            for entry_id, fields in entries:
                last = reply_text(entry_id)
                self._entry(fields, live=False)
            if len(entries) < _PAGE or last is None:
                return last
            start = f"({last}"

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
        frames = 0
        for run_id, pending in batch.runs.items():
            events, seqs = pending.events, pending.seqs
            if any(a > b for a, b in itertools.pairwise(seqs)):
                order = sorted(range(len(seqs)), key=seqs.__getitem__)
                events, seqs = [events[i] for i in order], [seqs[i] for i in order]
            stream = keys.run_stream(run_id)
            for start, stop in chunks(events, opts.batch_size, opts.frame_bytes):
                frame = pack(KIND_BATCH, node, events[start:stop], sent_at=now, run_id=run_id)
                entry_id = self._entry_id(ids, run_id, seqs[stop - 1])
                pipe.xadd(stream, {"d": frame}, id=entry_id, maxlen=opts.stream_maxlen, approximate=True)
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
        self._check(results)
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

    def _check(self, results: Sequence[Any]) -> None:
        for result in results:
            if not isinstance(result, Exception):
                continue
            if isinstance(result, self._errors):
                raise result
            if _DUPLICATE in str(result):
                continue  # sent before, by a flush that failed after Redis took it
            self.stats.drop("redis_error")
            self._log_once("redis_error", "Redis refused a bridge command: %s", redact_text(str(result)))

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
