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
its own, which the runtime closes after the Handoff. ``create_metrics`` defines the
Prometheus metrics on the runtime's registry, ``build_sinks`` builds the per-event
sinks registered in :data:`kiki_events.sinks.SINKS` (the metrics sink among them)
and ``create_parts_metrics`` what copies the parts' counters into the metrics; ``create_tracing``
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
from ..sinks import SINKS, SinkContext, SinkSet
from ..transports import MemoryHub, MemoryTransport, Transport, TransportOptions

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..bridge import Bridge
    from ..config import Settings
    from ..core.bus import EventBus
    from ..core.manager import RunManager
    from ..core.store import RunStore
    from ..core.tracing import RunTracing
    from ..history import EventStore
    from ..redis.types import Redis
    from ..sinks.metrics import KikiMetrics
    from ..sinks.parts import BridgeView, PartsMetrics

__all__ = [
    "PROVIDERS",
    "TransportBuilder",
    "build_sinks",
    "create_handoff",
    "create_metrics",
    "create_parts_metrics",
    "create_tracing",
    "create_transport",
    "history_of",
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


def create_metrics(registry: CollectorRegistry) -> KikiMetrics:
    """Every ``kiki_`` metric, defined on ``registry`` (imports ``prometheus_client``).

    Raises:
        ConfigError: ``registry`` holds kiki metrics already, or ``PROMETHEUS_MULTIPROC_DIR``
            is set but unusable (set after ``prometheus_client`` was imported, or not a directory).
    """
    from ..sinks.metrics import KikiMetrics, multiprocess_dir

    multiprocess_dir()
    return KikiMetrics(registry)


def build_sinks(context: SinkContext) -> SinkSet:
    """The per-event sinks the settings turn on, in the order of :data:`~kiki_events.sinks.SINKS`."""
    return SinkSet(sink for factory in SINKS if (sink := factory(context)) is not None)


def history_of(sinks: SinkSet) -> EventStore | None:
    """The event store the history sink among ``sinks`` writes to (``None``: the store is off)."""
    from ..sinks.history import HistorySink

    return next((sink.store for sink in sinks.sinks if isinstance(sink, HistorySink)), None)


def create_parts_metrics(
    metrics: KikiMetrics, *, bus: EventBus, store: RunStore, runs: RunManager, bridge: BridgeView | None
) -> PartsMetrics:
    """What copies the counters of these parts into ``metrics`` (and connects the bridge's lag)."""
    from ..sinks.parts import PartsMetrics

    parts = PartsMetrics(metrics, bus=bus, store=store, runs=runs, bridge=bridge)
    parts.connect()
    return parts
