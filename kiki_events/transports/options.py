"""The knobs every transport reads, mapped once from the settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["TransportOptions"]

_HEADER_ROOM = 1024
"""Bytes kept free in a frame for its header."""


@dataclass(frozen=True)
class TransportOptions:
    """Knobs every transport reads; :meth:`from_settings` maps them from the YAML."""

    prefix: str = "kiki:"
    """Key and channel prefix: isolates deployments (tenants) sharing one Redis."""
    outbox_size: int = 100_000
    batch_size: int = 256
    """Most events in one frame."""
    flush_interval: float = 0.002
    max_message_bytes: int = 1 << 20
    """Largest frame sent or accepted."""
    timeout: float = 5.0
    """Longest wait for one flush to Redis."""
    lifecycle: bool = True
    """Receive lifecycle broadcasts (``eventbus.subscribe.events`` is not empty)."""
    publish: bool = True
    """Send this node's events (``eventbus.publish.enabled``)."""
    run_ttl: float = 7 * 86400.0
    """How long a finished run's stream and registry entry are kept."""
    stream_maxlen: int = 10_000
    """Approximate bound of each run stream, in entries (frames)."""
    thread_ttl: float = 7 * 86400.0
    """Least lifetime of a thread's owner after its last registry update (``runs.thread_ttl``)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> TransportOptions:
        """Options from the ``eventbus`` section (and ``runs.replay_ttl`` for pub/sub retention)."""
        bus = settings.eventbus
        persistence = bus.persistence
        if persistence.run_ttl is not None:
            run_ttl = persistence.run_ttl
        elif bus.provider == "redis" and bus.redis.mode == "streams":
            run_ttl = persistence.retention_days * 86400.0
        else:
            # Without streams a run's history lives in its node's memory only.
            run_ttl = settings.runs.replay_ttl
        return cls(
            prefix=bus.redis.channel_prefix,
            outbox_size=bus.publish.outbox_size,
            batch_size=bus.publish.batch_size,
            flush_interval=bus.publish.flush_interval,
            max_message_bytes=bus.publish.max_message_bytes,
            timeout=bus.publish.timeout or 5.0,
            lifecycle=bool(bus.subscribe.events),
            publish=bus.publish.enabled,
            run_ttl=max(run_ttl, 1.0),
            stream_maxlen=persistence.stream_maxlen,
            thread_ttl=settings.runs.thread_ttl,
        )

    def owner_ttl(self, entry_ttl: float) -> int:
        """Seconds a thread's owner is kept from an update whose run entry lives ``entry_ttl``."""
        return max(int(self.thread_ttl), int(entry_ttl), 1)

    @property
    def frame_bytes(self) -> int:
        """Room for events in one frame."""
        return max(self.max_message_bytes - _HEADER_ROOM, 256)
