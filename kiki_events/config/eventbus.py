"""The ``eventbus`` section: the bus, the provider, Redis, publishing, subscribing, persistence."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator

from ..errors import ConfigError
from ..topics import TOPICS
from .addresses import check_host, check_port, check_redis_url, parse_database
from .values import Duration, Section

__all__ = [
    "PROVIDERS",
    "EventBusSettings",
    "PersistenceSettings",
    "PublishSettings",
    "RedisSettings",
    "SubscribeSettings",
]


class RedisSettings(Section):
    """Where and how to reach Redis (used when ``eventbus.provider`` is ``redis``)."""

    url: str | None = None
    """Full URL (``redis://`` or ``rediss://`` for TLS); overrides ``addr``/``db``."""
    addr: str = "127.0.0.1:6379"
    username: str | None = None
    """ACL user."""
    password: str | None = Field(default=None, repr=False)
    db: Annotated[int, BeforeValidator(parse_database)] = 0
    tls: bool = False
    channel_prefix: str = "kiki:"
    mode: Literal["pubsub", "streams"] = "pubsub"

    @field_validator("password", "username", "url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_redis_url(value)
        return value

    @field_validator("addr")
    @classmethod
    def _valid_addr(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"expected host:port, got {value!r}")
        check_host(host)
        check_port(port, "port")
        return value


class PublishSettings(Section):
    enabled: bool = True
    async_: bool = Field(default=True, alias="async")
    timeout: Duration = 5.0
    flush_interval: Duration = 0.002
    """Longest time an event waits to be batched with others before publishing."""
    batch_size: int = Field(default=256, ge=1, le=100_000)
    """Most events in one cross-node message; a run with more pending is flushed at once."""
    outbox_size: int = Field(default=100_000, ge=1)
    """Events waiting to leave the node (e.g. while Redis is down); beyond it new ones are dropped and counted."""
    max_message_bytes: int = Field(default=1 << 20, ge=4096, le=512 << 20)
    """Largest cross-node message sent or accepted; larger ones are dropped and counted."""

    @field_validator("flush_interval")
    @classmethod
    def _short_flush(cls, value: float) -> float:
        if value > 1.0:
            raise ConfigError("flush_interval longer than 1s would hold events back; use a few ms")
        return value


class SubscribeSettings(Section):
    events: tuple[str, ...] = TOPICS[:4] + TOPICS[5:]
    """Lifecycle topics received from other nodes; empty: none (run traffic still flows on demand)."""
    workers: int = Field(default=4, ge=1, le=256)
    """The number of subscriber workers: how many tasks of one agent served to other
    nodes this node runs at once (the default of ``handoff.concurrency``)."""
    interest_linger: Duration = 5.0
    """How long a node keeps receiving a remote run after its last local reader left (quick reconnects)."""
    repair_timeout: Duration = 1.0
    """How long a gap in a remote run may wait to be repaired before readers are told events were missed."""

    @field_validator("events")
    @classmethod
    def _known_topics(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for topic in value:
            if topic not in TOPICS and not topic.endswith("*"):
                raise ConfigError(f"unknown topic {topic!r}; known topics: {', '.join(TOPICS)}")
        return value


class PersistenceSettings(Section):
    enabled: bool = False
    storage: Literal["redis"] = "redis"
    retention_days: float = Field(default=7, gt=0, allow_inf_nan=False)
    """Streams mode: how long a finished run's stream (and registry entry) is kept."""
    run_ttl: Duration | None = None
    """Overrides ``retention_days`` per run, e.g. ``2h``."""
    stream_maxlen: int = Field(default=10_000, ge=16)
    """Approximate bound of each run stream, in messages (each holds up to ``publish.batch_size`` events)."""

    @field_validator("run_ttl")
    @classmethod
    def _positive_ttl(cls, value: float | None) -> float | None:
        if value is not None and value < 1.0:
            raise ConfigError("run_ttl must be at least 1s")
        return value


PROVIDERS: tuple[str, ...] = ("memory", "redis")
"""Every ``eventbus.provider``; the transport builders (``kiki_events.runtime.build.PROVIDERS``) match it."""


class EventBusSettings(Section):
    """The seed's ``eventbus`` section."""

    enabled: bool = True
    provider: str = "memory"
    queue_size: int = Field(default=10000, ge=1)
    """Bound of each subscription's queue."""
    inbox_size: int = Field(default=65536, ge=1)
    """Bound of the cross-thread hand-off buffer."""
    redis: RedisSettings = RedisSettings()
    publish: PublishSettings = PublishSettings()
    subscribe: SubscribeSettings = SubscribeSettings()
    persistence: PersistenceSettings = PersistenceSettings()

    @field_validator("provider")
    @classmethod
    def _provider(cls, value: str) -> str:
        if value in PROVIDERS:
            return value
        supported = ", ".join(PROVIDERS)
        if value in ("pulsar", "kafka", "nats", "rabbitmq"):
            raise ConfigError(f"provider {value!r} is not supported yet (supported: {supported})")
        raise ConfigError(f"unknown provider {value!r} (supported: {supported})")
