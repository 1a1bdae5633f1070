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

__all__ = ["GROUP", "WIRE_VERSION", "Shared", "decode_fields", "logger", "reraise_if_cancelled", "text"]

logger = logging.getLogger("kiki_events.handoff")

GROUP = "kiki-agents"
"""Consumer group of every work stream."""
WIRE_VERSION = "1"


@dataclass(eq=False)
class Shared:
    """One Handoff's runtime, settings, Redis client and counters, as both sides use them."""

    runtime: KikiRuntime
    node: str
    settings: HandoffSettings
    keys: Keys
    redis: Redis
    stats: dict[str, int]

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
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_fields(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A stream entry's fields as text."""
    return {text(k): text(v) for k, v in raw.items()}


def reraise_if_cancelled() -> None:
    """Re-raise a cancellation that a Redis client turned into another error."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
