"""Redis clients built from settings, and blocking reads that end when their caller is cancelled.

The key and channel names are in :mod:`kiki_events.redis.keys`.

``redis`` is imported lazily: using the Redis transports without it raises
:class:`~kiki_events.errors.MissingDependencyError` naming what to install.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..config import RedisSettings, check_redis_url
from ..errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.connection import AbstractConnection

__all__ = [
    "Reading",
    "blocking_command",
    "connection_url",
    "create_redis",
    "ending_on_cancel",
]

T = TypeVar("T")

# ``[0-9]``, never ``\d``, ``str.isdigit()`` or bare ``int()``: those also accept ``²``, ``٣``,
# ``1_000`` or `` 5 ``, so what another node wrote would mean something else here.
_PORT = re.compile(r"[0-9]{1,5}")


class Reading:
    """What a read run by :func:`ending_on_cancel` tells its caller: the connection it reads on."""

    def __init__(self) -> None:
        self.connections: list[AbstractConnection] = []
        self.cancelled = False

    def use(self, connection: AbstractConnection) -> None:
        """The read goes on over ``connection`` (closed if the caller is cancelled)."""
        self.connections.append(connection)
        self.check()

    def done_with(self, connection: AbstractConnection) -> None:
        """The read no longer uses ``connection`` (about to hand it back to its pool): never close it now."""
        self.connections.remove(connection)

    def check(self) -> None:
        """Raise :class:`asyncio.CancelledError` if the caller was cancelled (redis-py may have lost it)."""
        if self.cancelled:
            raise asyncio.CancelledError


async def ending_on_cancel(read: Callable[[Reading], Awaitable[T]]) -> T:
    """Run ``read`` (a blocking Redis read) so that cancelling the caller always ends it at once.

    redis-py sends each command under ``asyncio.wait_for``, which on Python 3.11
    drops a cancellation that arrives just as the send completes: the task then
    sits in the blocking read until the server answers, and goes on as if never
    cancelled. So ``read`` runs in a task of its own that the caller waits on
    through a plain future, and names its connection with :meth:`Reading.use`.
    When the caller is cancelled, the read is cancelled and its connection
    closed (unless the read has handed it back to its pool already), which ends
    a read that lost the cancellation; the caller raises
    :class:`asyncio.CancelledError` once the read has ended, so no read outlives
    its caller.
    """
    reading = Reading()
    task = asyncio.ensure_future(read(reading))
    try:
        await asyncio.wait((task,))
    except asyncio.CancelledError:
        reading.cancelled = True
        task.cancel()
        for connection in list(reading.connections):
            if connection in reading.connections:  # not handed back meanwhile
                await connection.disconnect(nowait=True)
        while not task.done():
            try:
                await asyncio.wait((task,))
            except asyncio.CancelledError:
                continue  # it ends promptly now; the cancellation is raised below
        if not task.cancelled():
            task.exception()  # retrieved: whatever it ended with is moot
        raise
    return task.result()


async def blocking_command(redis: Redis, *args: Any, **options: Any) -> Any:
    """Send a blocking command (``XREAD … BLOCK``, ``XREADGROUP … BLOCK``) and return its parsed reply.

    It runs under :func:`ending_on_cancel` on a connection taken from ``redis``'s
    pool (and given back after), so a cancelled caller stops at once, whatever
    redis-py does with the cancellation. Nothing is retried underneath: the
    caller's loop decides when to try again.
    """

    async def read(reading: Reading) -> Any:
        pool = redis.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            reading.use(connection)
            await connection.send_command(*args)
            reading.check()
            return await redis.parse_response(connection, args[0], **options)
        finally:
            reading.done_with(connection)
            await pool.release(connection)

    return await ending_on_cancel(read)


def connection_url(settings: RedisSettings) -> str:
    """The ``redis://`` / ``rediss://`` URL that ``settings`` describe (password included)."""
    # Settings are checked when they are validated; these are settings copied with changes.
    if settings.url:
        try:
            check_redis_url(settings.url)
        except ValueError as exc:
            raise ConfigError(f"eventbus.redis.url: {exc}") from None
        return settings.url
    host, sep, port = settings.addr.rpartition(":")
    if not sep or not host or not _PORT.fullmatch(port) or int(port) > 65535:
        raise ConfigError(f"eventbus.redis.addr: expected host:port with a port of 0-65535, got {settings.addr!r}")
    scheme = "rediss" if settings.tls else "redis"
    return f"{scheme}://{host}:{port}/{settings.db}"


def create_redis(settings: RedisSettings, **options: Any) -> Redis:
    """An asyncio Redis client for ``settings`` (ACL user, password, TLS, db).

    The client is not connected yet; redis-py connects on first use and
    reconnects by itself. ``options`` go to ``Redis.from_url``.
    """
    try:
        from redis.asyncio import Redis
    except ImportError as exc:  # pragma: no cover - redis is a required dependency today
        raise MissingDependencyError("the Redis transports need redis: pip install 'kiki-events[redis]'") from exc
    kwargs: dict[str, Any] = {"health_check_interval": 10, "socket_connect_timeout": 2.0, **options}
    if settings.username is not None:
        kwargs["username"] = settings.username
    if settings.password is not None:
        kwargs["password"] = settings.password
    return Redis.from_url(connection_url(settings), **kwargs)
