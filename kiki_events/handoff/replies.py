"""One reader for the reply streams of every request a node waits on.

Each waiting ``delegate``/``stream`` call has an :class:`Inbox`; the
:class:`ReplyReader` reads the reply streams of all of them in one multi-key
``XREAD`` on one connection and routes each entry to its inbox. So a node
waiting on a hundred requests holds one Redis connection, not a hundred.

A new request must be part of the next ``XREAD``. When the reader is idle (no
request outstanding) :meth:`ReplyReader.add` wakes it in-process. When it is
blocked in an ``XREAD`` that does not include the new reply stream yet, the
requester appends an entry to the node's wake stream (``replywake:<node>``, part
of every ``XREAD``) in the same pipeline that sends the task
(:meth:`ReplyReader.wake`), so the reader loops at once and includes it; the
reply cannot arrive earlier than the task, so none is missed, and the wake costs
no round trip of its own.

An inbox holds at most ``capacity`` unread entries; a full inbox's stream is left
out of the reads until its waiter catches up (nothing is dropped: reading resumes
from the last entry routed).
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from typing import TYPE_CHECKING, Any

from ..core.records import text_fields, text_of
from ..core.tasks import stop_tasks
from ..errors import HandoffError
from ..redis.client import blocking_command
from .common import MAX_BLOCK, STOP_TIMEOUT, Retry, logger, reraise_if_cancelled

if TYPE_CHECKING:
    from ..redis.types import Pipeline, Redis

__all__ = ["Inbox", "ReplyReader", "wake_key"]

_WAKE_TTL = 3600
"""Seconds a node's wake stream outlives its last request (it holds one entry)."""


def wake_key(prefix: str, node: str) -> str:
    """The wake stream of ``node``'s reply reader."""
    return f"{prefix}replywake:{re.sub(r'[^A-Za-z0-9_.:-]', '_', node)}"


class Inbox:
    """The replies of one request, as the reader routed them; read with :meth:`get`."""

    def __init__(self, key: str, capacity: int) -> None:
        self.key = key
        self.capacity = capacity
        self.last_id = "0-0"
        """Id of the last entry routed here (the reader reads on from it)."""
        self.finished = False
        """Its ``result`` was routed: nothing more to read for it."""
        self._entries: deque[dict[str, str]] = deque()
        self._ready = asyncio.Event()
        self._error: BaseException | None = None

    @property
    def free(self) -> int:
        """Entries it can still take."""
        return self.capacity - len(self._entries)

    def full(self) -> bool:
        return self.free <= 0

    def push(self, entry_id: str, fields: dict[str, str]) -> None:
        self._entries.append(fields)
        self.last_id = entry_id
        self.finished = fields.get("kind") == "result"
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        """Make :meth:`get` raise ``error`` once the entries already routed are read."""
        self._error = error
        self._ready.set()

    def drain(self) -> list[dict[str, str]]:
        """Take every entry routed and not read yet."""
        entries = list(self._entries)
        self._entries.clear()
        return entries

    async def get(self) -> dict[str, str]:
        """The next reply (waits for one)."""
        while not self._entries:
            if self._error is not None:
                raise self._error
            self._ready.clear()
            await self._ready.wait()
        return self._entries.popleft()


class ReplyReader:
    """Reads the reply streams of every outstanding request of one node (one task, one connection).

    Args:
        redis: the client; the reader holds one of its pooled connections while it reads.
        wake: key of this node's wake stream.
        capacity: unread entries an inbox holds.
        stats: counters (``redis_errors`` is incremented).
    """

    def __init__(self, redis: Redis, wake: str, *, capacity: int = 16, stats: dict[str, int] | None = None) -> None:
        self.redis = redis
        self.wake_key = wake
        self.capacity = capacity
        self.stats = stats if stats is not None else {}
        self._inboxes: dict[str, Inbox] = {}
        self._wanted = asyncio.Event()
        self._reading: frozenset[str] = frozenset()
        """Reply streams of the ``XREAD`` in flight (empty: not reading)."""
        self._wake_last = "0-0"
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="kiki-handoff-replies")

    async def close(self) -> None:
        """Stop reading; requests still waiting fail with :class:`HandoffError`."""
        self._closed = True
        task, self._task = self._task, None
        await stop_tasks((task,), timeout=STOP_TIMEOUT)
        for inbox in list(self._inboxes.values()):
            inbox.fail(HandoffError("the Handoff was closed while waiting for a reply"))
        self._inboxes.clear()

    @property
    def outstanding(self) -> int:
        """Requests being waited on."""
        return len(self._inboxes)

    def add(self, key: str) -> Inbox:
        """Start routing the entries of reply stream ``key``; call :meth:`wake` before the task is sent.

        Raises:
            HandoffError: the reader is closed, or ``key`` is waited on already.
        """
        if self._closed:
            raise HandoffError("cannot wait for a reply: the Handoff is closed")
        if key in self._inboxes:
            raise HandoffError(f"a request with reply stream {key!r} is waited on already")
        inbox = self._inboxes[key] = Inbox(key, self.capacity)
        self._wanted.set()
        return inbox

    def remove(self, inbox: Inbox) -> None:
        """Stop routing to ``inbox`` (its request is over)."""
        if self._inboxes.get(inbox.key) is inbox:
            del self._inboxes[inbox.key]

    def wake(self, pipe: Pipeline, inbox: Inbox) -> None:
        """Queue on ``pipe`` what makes the reader include ``inbox`` now, if it must be told."""
        if self._reading and inbox.key not in self._reading:
            pipe.xadd(self.wake_key, {"w": "1"}, maxlen=1, approximate=False)
            pipe.expire(self.wake_key, _WAKE_TTL)

    async def _run(self) -> None:
        retry = Retry("reading handoff replies", self.stats, first=0.05, cap=1.0)
        while not self._closed:
            readable = [inbox for inbox in self._inboxes.values() if not inbox.finished]
            if not readable:
                self._wanted.clear()
                await self._wanted.wait()
                continue
            streams = {self.wake_key: self._wake_last}
            streams.update({inbox.key: inbox.last_id for inbox in readable if not inbox.full()})
            count = min((inbox.free for inbox in readable if not inbox.full()), default=1)
            self._reading = frozenset(streams)
            try:
                reply: Any = await blocking_command(
                    self.redis,
                    "XREAD", "COUNT", max(1, count), "BLOCK", int(MAX_BLOCK * 1000),
                    "STREAMS", *streams, *streams.values(),
                )  # fmt: skip
                retry.ok()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await retry.failed(exc)
                continue
            finally:
                self._reading = frozenset()
            reraise_if_cancelled()
            try:
                self._route(reply)
            except Exception:  # a malformed reply must not stop the replies of every other request
                logger.exception("could not route handoff replies")

    def _route(self, reply: Any) -> None:
        for raw_key, entries in reply or ():
            key = text_of(raw_key)
            if key == self.wake_key:
                if entries:
                    self._wake_last = text_of(entries[-1][0])
                continue
            inbox = self._inboxes.get(key)
            if inbox is None or inbox.finished:
                continue  # its request ended meanwhile
            for entry_id, raw in entries:
                if inbox.full():
                    break  # read again from inbox.last_id once there is room
                inbox.push(text_of(entry_id), text_fields(raw))
