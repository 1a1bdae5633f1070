"""How the composition root builds each part from the settings.

One function per part, called by :class:`~kiki_events.runtime.KikiRuntime` only.
``create_transport`` picks a transport from ``eventbus.provider`` and
``eventbus.redis.mode``::

    memory + a MemoryHub   → MemoryTransport      (runtimes of one process)
    redis, mode: pubsub    → RedisPubSubTransport (lowest latency, at-most-once)
    redis, mode: streams   → RedisStreamsTransport (durable)

The Redis client is created from ``eventbus.redis`` (and owned by the transport)
unless one is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..transports import MemoryHub, MemoryTransport, Transport, TransportOptions

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..config import Settings

__all__ = ["create_transport"]


def create_transport(
    settings: Settings, *, node: str, redis: Redis | None = None, hub: MemoryHub | None = None
) -> Transport | None:
    """The transport the settings ask for, or ``None`` (memory without a hub: no bridge).

    Raises:
        ConfigError: the Redis address or URL is invalid.
        MissingDependencyError: ``redis`` is not installed.
    """
    bus = settings.eventbus
    options = TransportOptions.from_settings(settings)
    if bus.provider == "memory":
        return MemoryTransport(hub, node=node, options=options) if hub is not None else None
    owns = redis is None
    if redis is None:
        from ..redis.client import create_redis

        redis = create_redis(bus.redis)
    if bus.redis.mode == "streams":
        from ..redis.streams import RedisStreamsTransport

        return RedisStreamsTransport(redis, node=node, options=options, owns_client=owns)
    from ..redis.pubsub import RedisPubSubTransport

    return RedisPubSubTransport(redis, node=node, options=options, owns_client=owns)
