"""Redis clients built from settings, and the key/channel names of one deployment.

``redis`` is imported lazily: using the Redis transports without it raises
:class:`~kiki_events.errors.MissingDependencyError` naming what to install.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import RedisSettings, check_redis_url
from .errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["Keys", "connection_url", "create_redis", "reply_fields", "reply_text"]


def reply_text(value: Any) -> str:
    """A value of a Redis reply as text (bytes decoded as UTF-8, undecodable bytes replaced)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def reply_fields(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A hash's or a stream entry's fields as text."""
    return {reply_text(k): reply_text(v) for k, v in raw.items()}


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
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"eventbus.redis.addr: expected host:port, got {settings.addr!r}")
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


@dataclass(frozen=True)
class Keys:
    """Every key and channel name, under one prefix (which isolates tenants).

    Run-scoped names carry the run id in a hash tag (``{run_id}``) so a Redis
    Cluster keeps a run's keys on one shard.
    """

    prefix: str = "kiki:"

    def run_channel(self, run_id: str) -> str:
        return f"{self.prefix}run:{{{run_id}}}"

    def thread_channel(self, thread_id: str) -> str:
        return f"{self.prefix}thread:{{{thread_id}}}"

    def lifecycle_channel(self) -> str:
        return f"{self.prefix}lifecycle"

    def control_channel(self, node: str | None = None) -> str:
        return f"{self.prefix}control" if node is None else f"{self.prefix}control:{node}"

    def run_stream(self, run_id: str) -> str:
        return f"{self.prefix}stream:{{{run_id}}}"

    def thread_stream(self, thread_id: str) -> str:
        """Announcements of the runs started on a thread (streams mode)."""
        return f"{self.prefix}threadstream:{{{thread_id}}}"

    def lifecycle_stream(self) -> str:
        """Lifecycle events of every run (streams mode)."""
        return f"{self.prefix}lifecyclestream"

    def control_stream(self, node: str | None = None) -> str:
        """Control messages for one node, or for every node (streams mode)."""
        return f"{self.prefix}controlstream" if node is None else f"{self.prefix}controlstream:{node}"

    def node(self, name: str) -> str:
        """A node's heartbeat (expires when the node stops refreshing it)."""
        return f"{self.prefix}node:{name}"

    def run_info(self, run_id: str) -> str:
        return f"{self.prefix}runinfo:{{{run_id}}}"

    def thread_runs(self, thread_id: str) -> str:
        return f"{self.prefix}threadruns:{{{thread_id}}}"

    def work_stream(self, agent: str) -> str:
        return f"{self.prefix}work:{agent}"

    def dead_letter_stream(self, agent: str) -> str:
        return f"{self.prefix}dead:{agent}"

    def agents(self, agent: str) -> str:
        return f"{self.prefix}agents:{agent}"

    def reply(self, request_id: str) -> str:
        return f"{self.prefix}reply:{{{request_id}}}"

    def done_marker(self, request_id: str) -> str:
        return f"{self.prefix}handled:{{{request_id}}}"
