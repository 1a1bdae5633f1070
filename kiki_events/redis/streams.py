"""Redis streams transport: durable; nothing is lost while Redis keeps its data.

Keys (names from :class:`~kiki_events.redis.keys.Keys`, under the prefix):

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

This module is the reader; what is sent, and how, is
:class:`~kiki_events.redis.streamwriter.StreamWriter`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..core.records import text_of
from ..core.tasks import Backoff, supervise
from ..errors import TransportError
from ..transports.base import WatchKind
from ..transports.options import TransportOptions
from ..transports.wire import run_frame_of
from .client import blocking_command
from .streamwriter import PAGE, StreamWriter

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisStreamsTransport"]

_BLOCK_MS = 100
"""Longest XREAD wait: a newly watched stream joins the loop within this time."""


class RedisStreamsTransport(StreamWriter):
    """See the module docstring."""

    name = "redis-streams"
    durable = True

    def __init__(
        self, redis: Redis, *, node: str, options: TransportOptions | None = None, owns_client: bool = False
    ) -> None:
        super().__init__(redis, node=node, options=options, owns_client=owns_client)
        self._positions: dict[str, str] = {}
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
                    self.redis, "XREAD", "COUNT", PAGE, "BLOCK", _BLOCK_MS, "STREAMS", *positions, *positions.values()
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
            entries: Any = await self._call(self.redis.xrange(key, min=start, max="+", count=PAGE))
            foreign: list[str] = []
            for entry_id, fields in entries:
                if self._entry(key, fields, live=False):
                    last = text_of(entry_id)
                else:
                    foreign.append(text_of(entry_id))
            if foreign:
                await self._remove_foreign(key, foreign)
            if len(entries) < PAGE:
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
