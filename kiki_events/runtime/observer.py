"""A node that only listens, built by the composition root like every other part.

:class:`Observer` is the transport of the settings delivering every frame it receives
to a listener of its own: no bus, no runs, no bridge, nothing registered. It watches
what the caller asks for (runs, threads) and, through ``eventbus.subscribe.events``,
the lifecycle broadcasts. ``kiki-events tail`` prints the traffic with it (README.md,
"Watch the traffic: ``kiki-events tail``"); :func:`check_redis` lets it fail fast
with one clear error.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..errors import ConfigError, TransportError
from ..redaction import redact_text, redact_url
from .build import create_transport
from .runtime import default_node_name

if TYPE_CHECKING:
    from ..config import Settings
    from ..transports import Transport
    from ..transports.base import TransportListener, WatchKind

__all__ = ["Observer", "check_redis", "redis_location"]


def redis_location(settings: Settings) -> str:
    """Where ``eventbus.redis`` points, for messages (a URL's password masked)."""
    redis = settings.eventbus.redis
    return redact_url(redis.url) if redis.url else redis.addr


async def check_redis(settings: Settings, timeout: float) -> None:
    """Return once the Redis of ``eventbus.redis`` answered a ping (within ``timeout`` seconds).

    Raises:
        TransportError: ``cannot reach Redis at <where>: <why>`` (no secret in it).
        ConfigError: the Redis address or URL is invalid.
    """
    from ..redis.client import create_redis

    redis = create_redis(settings.eventbus.redis, socket_connect_timeout=timeout)
    try:
        await asyncio.wait_for(redis.ping(), timeout)
    except Exception as exc:
        raise TransportError(
            f"cannot reach Redis at {redis_location(settings)}: {redact_text(str(exc)) or type(exc).__name__}"
        ) from None
    finally:
        await redis.aclose()


class Observer:
    """Listens to the other nodes without being one; an async context manager.

    Args:
        settings: the configuration; ``eventbus.subscribe.events`` says which lifecycle
            broadcasts arrive (``()``: none).
        listener: given every frame, control message and (re)connection.
        node: this listener's node name (default: ``<hostname>-<pid>``).

    Raises:
        ConfigError: the settings name no transport (``memory`` has none to listen to),
            or the Redis address is invalid.
    """

    def __init__(self, settings: Settings, listener: TransportListener, *, node: str | None = None) -> None:
        transport = create_transport(settings, node=node or default_node_name())
        if transport is None:
            raise ConfigError("no transport to listen to for these settings (eventbus.provider: redis has one)")
        self.transport: Transport = transport
        self._listener = listener

    async def watch(self, kind: WatchKind, key: str, *, connect_timeout: float | None = None) -> None:
        """Receive the frames of run (or the run announcements of thread) ``key`` from now on.

        With ``connect_timeout``, first wait up to that long for the connection, so the
        subscription is in place when this returns: before the reader is connected,
        ``watch`` only records the wish, and pub/sub messages sent until then are missed.
        """
        if connect_timeout is not None:
            await self.transport.connected(connect_timeout)
        await self.transport.watch(kind, key)

    async def __aenter__(self) -> Observer:
        await self.transport.start(self._listener)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.close(timeout=1.0)
