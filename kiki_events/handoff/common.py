"""What the serving and the requesting side share: names, the wire version, Redis wiring."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..workqueue import WorkQueue

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..config import HandoffSettings
    from ..redis_client import Keys
    from ..runtime import KikiRuntime

__all__ = [
    "GROUP",
    "MAX_BLOCK",
    "WIRE_VERSION",
    "Shared",
    "decode_fields",
    "logger",
    "reraise_if_cancelled",
    "stop_tasks",
    "text",
]

logger = logging.getLogger("kiki_events.handoff")

GROUP = "kiki-agents"
"""Consumer group of every work stream."""
WIRE_VERSION = "1"
MAX_BLOCK = 2.0
"""Longest blocking read (s): well under the Redis client's socket timeout (redis-py's
default is 5 s), which would cut a longer one as a failure."""


@dataclass(eq=False)
class Shared:
    """One Handoff's runtime, settings, Redis client and counters, as both sides use them."""

    runtime: KikiRuntime
    node: str
    settings: HandoffSettings
    keys: Keys
    redis: Redis
    stats: dict[str, int]
    concurrency: int
    """Tasks of one agent this node runs at once (``handoff.concurrency``, else ``eventbus.subscribe.workers``)."""

    def cancel_key(self, request_id: str) -> str:
        """Set when the requester gave up on ``request_id``."""
        return f"{self.keys.prefix}cancel:{{{request_id}}}"

    def work_queue(self, agent: str) -> WorkQueue:
        """The work stream of ``agent``, consumed as this node."""
        return WorkQueue(
            self.redis,
            self.keys.work_stream(agent),
            group=GROUP,
            consumer=self.node,
            dead_letter=self.keys.dead_letter_stream(agent),
        )

    async def serving_nodes(self, agent: str) -> list[str]:
        """Nodes whose advertisement for ``agent`` is live."""
        nodes = await self.redis.zrangebyscore(self.keys.agents(agent), time.time(), "+inf")
        return sorted(text(n) for n in nodes)


def text(value: Any) -> str:
    """A Redis reply value as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def decode_fields(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A stream entry's fields as text."""
    return {text(k): text(v) for k, v in raw.items()}


def reraise_if_cancelled() -> None:
    """Re-raise a cancellation that a Redis client turned into another error, or swallowed.

    (redis-py sends each command under ``asyncio.wait_for``, which on Python 3.11 can
    drop a cancellation that arrives as the send completes.)
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def stop_tasks(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel ``tasks`` and wait until they ended, cancelling again any that lost the cancellation."""
    started = [task for task in tasks if task is not None]
    pending = {task for task in started if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)
    await asyncio.gather(*started, return_exceptions=True)
