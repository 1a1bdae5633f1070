"""How the composition root builds each part from the settings.

One function per part, called by :class:`~kiki_events.runtime.KikiRuntime` only.
``create_transport`` picks a transport from ``eventbus.provider`` and
``eventbus.redis.mode``::

    memory + a MemoryHub   → MemoryTransport      (runtimes of one process)
    redis, mode: pubsub    → RedisPubSubTransport (lowest latency, at-most-once)
    redis, mode: streams   → RedisStreamsTransport (durable)

The Redis client is created from ``eventbus.redis`` (and owned by the transport)
unless one is given. ``build_sinks`` builds the per-event sinks registered in
:data:`kiki_events.sinks.SINKS`; ``create_collector`` the Prometheus collector.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..sinks import SINKS, SinkSet
from ..transports import MemoryHub, MemoryTransport, Transport, TransportOptions

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..config import Settings
    from ..core.bus import EventBus
    from ..core.runs import RunManager, RunStore
    from ..sinks.metrics import BridgeView, RuntimeCollector

__all__ = ["build_sinks", "create_collector", "create_transport"]


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


def build_sinks(settings: Settings) -> SinkSet:
    """The per-event sinks the settings turn on, in the order of :data:`~kiki_events.sinks.SINKS`."""
    return SinkSet(sink for factory in SINKS if (sink := factory(settings)) is not None)


def create_collector(
    *, bus: EventBus, store: RunStore, runs: RunManager, bridge: BridgeView | None
) -> RuntimeCollector:
    """The Prometheus collector of these parts, read at scrape time (imports ``prometheus_client`` on first use)."""
    from ..sinks.metrics import RuntimeCollector

    return RuntimeCollector(bus=bus, store=store, runs=runs, bridge=bridge)
