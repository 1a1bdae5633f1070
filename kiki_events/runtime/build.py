"""How the composition root builds each part from the settings.

One function per part, called by :class:`~kiki_events.runtime.KikiRuntime` only.
``create_transport`` picks a transport from ``eventbus.provider`` through
:data:`PROVIDERS` (and ``eventbus.redis.mode``)::

    memory + a MemoryHub   → MemoryTransport      (runtimes of one process)
    redis, mode: pubsub    → RedisPubSubTransport (lowest latency, at-most-once)
    redis, mode: streams   → RedisStreamsTransport (durable)

The Redis client is created from ``eventbus.redis`` (and owned by the transport)
unless one is given. ``create_handoff`` builds the node's
:class:`~kiki_events.handoff.Handoff` (Redis provider only) with a Redis client of
its own, which the runtime closes after the Handoff. ``build_sinks`` builds the per-event sinks registered in
:data:`kiki_events.sinks.SINKS`; ``create_collector`` the Prometheus collector; ``create_tracing``
the tracing of every run (``langfuse``, see :mod:`kiki_events.core.tracing`).

Adding a transport: its file (see :mod:`kiki_events.transports`), a builder here
and its line in :data:`PROVIDERS`; the provider's name is listed in
``kiki_events.config.PROVIDERS``, which the settings are validated against and
this table must match.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from ..config import PROVIDERS as PROVIDER_NAMES
from ..handoff import CONFIG_KEY, Follow, Handoff, HandoffContext, client_name
from ..sinks import SINKS, SinkSet
from ..transports import MemoryHub, MemoryTransport, Transport, TransportOptions

if TYPE_CHECKING:
    from ..bridge import Bridge
    from ..config import Settings
    from ..core.bus import EventBus
    from ..core.manager import RunManager
    from ..core.store import RunStore
    from ..core.tracing import RunTracing
    from ..redis.types import Redis
    from ..sinks.metrics import BridgeView, RuntimeCollector

__all__ = [
    "PROVIDERS",
    "TransportBuilder",
    "build_sinks",
    "create_collector",
    "create_handoff",
    "create_tracing",
    "create_transport",
]


class TransportBuilder(Protocol):
    """Builds the transport of one ``eventbus.provider`` (``None``: no bridge)."""

    def __call__(
        self, settings: Settings, options: TransportOptions, *, node: str, redis: Redis | None, hub: MemoryHub | None
    ) -> Transport | None: ...


def _memory(
    settings: Settings, options: TransportOptions, *, node: str, redis: Redis | None, hub: MemoryHub | None
) -> Transport | None:
    """Runtimes of one process on a shared hub; without a hub there is nobody to bridge to."""
    return MemoryTransport(hub, node=node, options=options) if hub is not None else None


def _redis(
    settings: Settings, options: TransportOptions, *, node: str, redis: Redis | None, hub: MemoryHub | None
) -> Transport | None:
    """Redis pub/sub or streams (``eventbus.redis.mode``), on the given client or one of its own."""
    bus = settings.eventbus
    owns = redis is None
    if redis is None:
        from ..redis.client import create_redis

        redis = create_redis(bus.redis)
    if bus.redis.mode == "streams":
        from ..redis.streams import RedisStreamsTransport

        return RedisStreamsTransport(redis, node=node, options=options, owns_client=owns)
    from ..redis.pubsub import RedisPubSubTransport

    return RedisPubSubTransport(redis, node=node, options=options, owns_client=owns)


PROVIDERS: Mapping[str, TransportBuilder] = {
    "memory": _memory,
    "redis": _redis,
}
"""``eventbus.provider`` → the builder of its transport."""

assert set(PROVIDERS) == set(PROVIDER_NAMES), "runtime.build.PROVIDERS must match config.PROVIDERS"


def create_transport(
    settings: Settings, *, node: str, redis: Redis | None = None, hub: MemoryHub | None = None
) -> Transport | None:
    """The transport the settings ask for, or ``None`` (memory without a hub: no bridge).

    Raises:
        ConfigError: the Redis address or URL is invalid.
        MissingDependencyError: ``redis`` is not installed.
    """
    build = PROVIDERS[settings.eventbus.provider]
    return build(settings, TransportOptions.from_settings(settings), node=node, redis=redis, hub=hub)


def create_handoff(
    settings: Settings, *, node: str, runs: RunManager, bridge: Bridge | None, follow: Follow
) -> Handoff | None:
    """The node's Handoff with ``eventbus.provider: redis`` (else ``None``), known to its runs.

    Its Redis client (named :func:`~kiki_events.handoff.client_name` of the node) is
    the caller's to close, after the Handoff. Every run of ``runs`` carries the
    Handoff in its ``configurable`` (:data:`~kiki_events.handoff.CONFIG_KEY`), where
    :meth:`Handoff.of <kiki_events.handoff.Handoff.of>` finds it.

    Raises:
        ConfigError: the Redis address or URL is invalid.
    """
    bus = settings.eventbus
    if not (bus.enabled and bus.provider == "redis"):
        return None
    from ..redis.client import create_redis
    from ..redis.keys import Keys

    context = HandoffContext(
        node=node,
        settings=settings.handoff,
        keys=Keys(bus.redis.channel_prefix),
        redis=create_redis(bus.redis, client_name=client_name(node)),
        runs=runs,
        concurrency=settings.handoff_concurrency,
        bridge=bridge,
        follow=follow,
    )
    handoff = Handoff(context)
    runs.configurable[CONFIG_KEY] = handoff
    return handoff


def create_tracing(settings: Settings) -> RunTracing | None:
    """The tracing of every run the settings turn on (``langfuse``), else ``None`` (imports ``langfuse`` only then)."""
    if not settings.langfuse.enabled:
        return None
    from ..sinks import langfuse

    return langfuse.create(settings)


def build_sinks(settings: Settings) -> SinkSet:
    """The per-event sinks the settings turn on, in the order of :data:`~kiki_events.sinks.SINKS`."""
    return SinkSet(sink for factory in SINKS if (sink := factory(settings)) is not None)


def create_collector(
    *, bus: EventBus, store: RunStore, runs: RunManager, bridge: BridgeView | None
) -> RuntimeCollector:
    """The Prometheus collector of these parts, read at scrape time (imports ``prometheus_client`` on first use)."""
    from ..sinks.metrics import RuntimeCollector

    return RuntimeCollector(bus=bus, store=store, runs=runs, bridge=bridge)
