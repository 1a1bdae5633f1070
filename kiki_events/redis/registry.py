"""What both Redis transports share: the run registry, error mapping, a redacted URL.

Registry layout (names from :class:`~kiki_events.redis.keys.Keys`):

* ``<prefix>runinfo:{<run_id>}`` – a hash: ``node``, ``status``, ``thread_id``,
  ``graph``, ``principal``, ``created_at``, ``ended_at``, ``last_seq``. It expires
  ``run_ttl`` after the run ends (and a week after it starts, should its node die).
* ``<prefix>threadruns:{<thread_id>}`` – a sorted set of the thread's run ids,
  scored by start time; expires with the newest of its runs.
* ``<prefix>threadowner:{<thread_id>}`` – the principal the thread belongs to, set once
  (``SET NX``: by the first claim, or by the first registry update of a run of the
  thread). Each update of a run's entry extends it (``EXPIRE GT``) to at least that
  entry's lifetime and ``runs.thread_ttl``: it never expires before the thread's runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..core.records import RunInfo, ThreadOwner
from ..errors import TransportError
from ..redaction import redact_text
from ..transports.common import BaseTransport
from ..transports.options import TransportOptions
from .keys import Keys

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

__all__ = ["RUNNING_TTL", "RedisTransportBase", "connection_errors", "redis_location"]

T = TypeVar("T")

RUNNING_TTL = 7 * 86400
"""Seconds a registry entry of a run that never reported its end is kept."""


def connection_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "Redis cannot be reached right now"."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError, TransportError)


def redis_location(redis: Redis) -> str:
    """``redis://host:port/db`` of a client, never with its password."""
    pool = redis.connection_pool
    kwargs = pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}"
    scheme = "rediss" if "SSL" in getattr(pool.connection_class, "__name__", "") else "redis"
    user = kwargs.get("username")
    auth = f"{user}@" if user else ""
    return f"{scheme}://{auth}{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


class RedisTransportBase(BaseTransport):
    """A transport on a redis-py asyncio client (given, not owned, unless ``owns_client``)."""

    def __init__(
        self, redis: Redis, *, node: str, options: TransportOptions | None = None, owns_client: bool = False
    ) -> None:
        super().__init__(node=node, options=options)
        self.redis = redis
        """The client; code built on the bridge may use it for its own keys (under :attr:`keys`)."""
        self.keys = Keys(self.options.prefix)
        self._owns_client = owns_client
        self._errors = connection_errors()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": redis_location(self.redis)}

    def _reader_up(self) -> None:
        first = not self._ever_in
        super()._reader_up()
        if first:
            self._tasks.append(asyncio.get_running_loop().create_task(self._warm_up(), name="kiki-bridge-warm-up"))

    async def _warm_up(self) -> None:
        """Open spare connections once connected: a replay or control message sent later (maybe
        while this node is busy flushing a flood of events) then needs no handshake first."""
        with contextlib.suppress(*self._errors):
            await asyncio.wait_for(asyncio.gather(*(self.redis.ping() for _ in range(2))), self.options.timeout)

    async def _close_connections(self) -> None:
        if self._owns_client:
            # Closing a broken connection may raise; nothing is left to do about it.
            with contextlib.suppress(Exception):
                await self.redis.aclose()

    async def _call(self, awaitable: Awaitable[T]) -> T:
        """Await a Redis call; connection problems become :class:`TransportError`."""
        try:
            async with asyncio.timeout(self.options.timeout):  # never loses a cancellation, unlike wait_for
                return await awaitable
        except self._errors as exc:
            raise TransportError(f"Redis is unreachable: {redact_text(str(exc)) or type(exc).__name__}") from None

    # -- registry ---------------------------------------------------------------------------
    def _queue_registry(self, pipe: Pipeline, info: RunInfo) -> None:
        keys = self.keys
        key = keys.run_info(info.run_id)
        ttl = int(self.options.run_ttl) if info.ended else RUNNING_TTL
        pipe.hset(key, mapping=info.to_fields())  # type: ignore[arg-type]
        pipe.expire(key, ttl)
        if info.thread_id:
            thread_key = keys.thread_runs(info.thread_id)
            pipe.zadd(thread_key, {info.run_id: info.created_at})
            pipe.expire(thread_key, ttl)
            owner_key = keys.thread_owner(info.thread_id)
            owner_ttl = self.options.owner_ttl(ttl)
            pipe.set(owner_key, ThreadOwner(info.principal).encode(), nx=True, ex=owner_ttl)
            pipe.expire(owner_key, owner_ttl, gt=True)

    async def heartbeat(self, ttl: float) -> None:
        await self._call(self.redis.set(self.keys.node(self.node), b"1", px=max(int(ttl * 1000), 1)))

    async def alive(self, nodes: Sequence[str]) -> set[str]:
        names = list(nodes)
        if not names:
            return set()
        values = await self._call(self.redis.mget([self.keys.node(n) for n in names]))
        return {name for name, value in zip(names, values, strict=True) if value is not None}

    async def lookup_run(self, run_id: str) -> RunInfo | None:
        fields = await self._call(self.redis.hgetall(self.keys.run_info(run_id)))
        return RunInfo.from_fields(run_id, fields) if fields else None

    async def thread_runs(self, thread_id: str) -> list[RunInfo]:
        keys = self.keys
        ids = await self._call(self.redis.zrange(keys.thread_runs(thread_id), 0, -1))
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        names = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
        for run_id in names:
            pipe.hgetall(keys.run_info(run_id))
        rows = await self._call(pipe.execute())
        infos = [RunInfo.from_fields(run_id, row) for run_id, row in zip(names, rows, strict=True) if row]
        return sorted((info for info in infos if info is not None), key=lambda info: info.created_at)

    async def claim_thread(self, thread_id: str, principal: str | None) -> ThreadOwner:
        mine = ThreadOwner(principal)
        key = self.keys.thread_owner(thread_id)
        # One atomic command: set if absent, else tell who has it.
        previous = await self._call(self.redis.set(key, mine.encode(), nx=True, get=True, ex=self.options.owner_ttl(0)))
        return mine if previous is None else ThreadOwner.decode(previous)

    async def thread_owner(self, thread_id: str) -> ThreadOwner | None:
        value = await self._call(self.redis.get(self.keys.thread_owner(thread_id)))
        return None if value is None else ThreadOwner.decode(value)
