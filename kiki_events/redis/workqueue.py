"""A Redis stream consumed through a consumer group: each item goes to exactly one consumer.

The Redis primitives behind :mod:`kiki_events.handoff`, kept free of agents and runs:

* :meth:`WorkQueue.put` appends an item (``XADD`` with an approximate length cap);
* :meth:`WorkQueue.read` hands new items to this consumer (``XREADGROUP``); an item
  stays *pending* (owned by this consumer) until :meth:`WorkQueue.ack`;
* :meth:`WorkQueue.touch` resets the idle time of items still being worked on
  (``XCLAIM … JUSTID``, which does not count as a delivery), so only items of a
  consumer that stopped touching them (a dead node) go idle;
* :meth:`WorkQueue.reclaim` takes over items idle longer than ``min_idle``
  (``XAUTOCLAIM``) and tells how many times each was delivered;
* :meth:`WorkQueue.bury` moves an item to the dead-letter stream.

Items acknowledged are also deleted from the stream, so it holds only pending and
unread work. The values of an item's fields are text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.records import text_fields, text_of
from .client import blocking_command

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["WorkItem", "WorkQueue"]


@dataclass(frozen=True)
class WorkItem:
    """One entry of a work stream, as delivered to this consumer."""

    id: str
    """Stream entry id."""
    fields: dict[str, str]
    deliveries: int = 1
    """How many times the item was delivered, this time included."""


class WorkQueue:
    """One work stream, one consumer group, one consumer (this node).

    Args:
        redis: an asyncio Redis client.
        stream: key of the work stream.
        group: consumer group name (every node serving the stream uses the same).
        consumer: this consumer's name, unique within the group (the node name).
        dead_letter: key of the stream items are buried in.
        maxlen: approximate cap of the work stream's length.
    """

    def __init__(
        self,
        redis: Redis,
        stream: str,
        *,
        group: str,
        consumer: str,
        dead_letter: str,
        maxlen: int = 100_000,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.dead_letter = dead_letter
        self.maxlen = maxlen

    async def ensure_group(self) -> None:
        """Create the stream and its group if they do not exist (idempotent)."""
        from redis.exceptions import ResponseError

        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def put(self, fields: Mapping[str, str]) -> str:
        """Append an item; returns its entry id."""
        entry = await self.redis.xadd(self.stream, dict(fields), maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
        return text_of(entry)

    async def remove(self, entry_id: str) -> int:
        """Delete an item that should no longer be handled (e.g. its requester gave up)."""
        return int(await self.redis.xdel(self.stream, entry_id))

    async def read(self, count: int, block: float) -> list[WorkItem]:
        """Up to ``count`` new items for this consumer, waiting up to ``block`` seconds.

        Cancelling the caller ends the wait at once (see :func:`~kiki_events.redis.client.blocking_command`).
        """
        reply: Any = await blocking_command(
            self.redis,
            "XREADGROUP", "GROUP", self.group, self.consumer,
            "COUNT", count, "BLOCK", max(1, int(block * 1000)), "STREAMS", self.stream, ">",
        )  # fmt: skip
        items: list[WorkItem] = []
        for _stream, entries in reply or ():
            items.extend(WorkItem(text_of(i), text_fields(f)) for i, f in entries if f is not None)
        return items

    async def touch(self, entry_ids: Sequence[str]) -> list[str]:
        """Keep owning ``entry_ids`` (reset their idle time); returns those still owned here."""
        if not entry_ids:
            return []
        owned = await self.redis.xclaim(self.stream, self.group, self.consumer, 0, list(entry_ids), justid=True)
        return [text_of(i) for i in owned]

    async def release(self, entry_ids: Sequence[str], min_idle: float) -> None:
        """Give up ``entry_ids`` now: mark them idle, so the next :meth:`reclaim` anywhere takes them.

        Not a delivery: their delivery count stays as it is.
        """
        if entry_ids:
            idle = int(min_idle * 1000) + 1
            await self.redis.xclaim(self.stream, self.group, self.consumer, 0, list(entry_ids), idle=idle, justid=True)

    async def reclaim(self, min_idle: float, count: int = 16) -> list[WorkItem]:
        """Take over up to ``count`` items idle for ``min_idle`` seconds (their consumer died).

        Each returned item's ``deliveries`` includes this one. Items deleted from the
        stream while pending are dropped from the group by Redis.
        """
        reply: Any = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, max(0, int(min_idle * 1000)), "0-0", count=count
        )
        entries = reply[1] if len(reply) > 1 else []
        claimed = [(text_of(i), text_fields(f)) for i, f in entries if f is not None]
        if not claimed:
            return []
        counts = await self._deliveries([i for i, _ in claimed])
        return [WorkItem(i, f, counts.get(i, 1)) for i, f in claimed]

    async def _deliveries(self, entry_ids: list[str]) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry in entry_ids:
                pipe.xpending_range(self.stream, self.group, entry, entry, 1)
            replies = await pipe.execute()
        counts: dict[str, int] = {}
        for rows in replies:
            for row in rows:
                counts[text_of(row["message_id"])] = int(row["times_delivered"])
        return counts

    async def ack(self, entry_id: str) -> None:
        """Done with ``entry_id``: acknowledge it and delete it from the stream."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, self.group, entry_id)
            pipe.xdel(self.stream, entry_id)
            await pipe.execute()

    async def bury(self, item: WorkItem, reason: str) -> str:
        """Move ``item`` to the dead-letter stream (with why and how often it was tried)."""
        record = {
            **item.fields,
            "dead_reason": reason,
            "dead_deliveries": str(item.deliveries),
            "dead_entry": item.id,
            "dead_consumer": self.consumer,
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_letter, record, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            pipe.xack(self.stream, self.group, item.id)
            pipe.xdel(self.stream, item.id)
            replies = await pipe.execute()
        return text_of(replies[0])

    async def pending(self) -> int:
        """Items delivered to some consumer and not acknowledged yet."""
        summary = await self.redis.xpending(self.stream, self.group)
        return int(summary.get("pending", 0) if isinstance(summary, dict) else summary[0])
