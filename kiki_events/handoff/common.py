"""What the serving and the requesting side share: names, the wire version, Redis wiring."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.records import text_of
from ..core.tasks import Backoff
from ..redaction import redact_text
from ..redis.workqueue import WorkQueue

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..config import HandoffSettings
    from ..redis.client import Keys
    from ..runtime import KikiRuntime

__all__ = [
    "GROUP",
    "MAX_BLOCK",
    "WIRE_VERSION",
    "Retry",
    "Shared",
    "logger",
    "reraise_if_cancelled",
]

logger = logging.getLogger("kiki_events.handoff")

GROUP = "kiki-agents"
"""Consumer group of every work stream."""
WIRE_VERSION = "1"
_STOP_TIMEOUT = 10.0
"""Seconds a handoff loop gets to end once cancelled."""

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
        return sorted(text_of(n) for n in nodes)


def reraise_if_cancelled() -> None:
    """Re-raise a cancellation that a Redis client turned into another error, or swallowed.

    (redis-py sends each command under ``asyncio.wait_for``, which on Python 3.11 can
    drop a cancellation that arrives as the send completes.)
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Retry:
    """The consecutive Redis failures of one loop: counted, the first logged, then a growing pause.

    The pause doubles from ``2 * first`` up to ``cap`` (:class:`~kiki_events.core.tasks.Backoff`);
    ``cap=0``: no pause (the loop waits anyway).
    """

    def __init__(self, what: str, stats: dict[str, int], *, first: float = 0.0, cap: float = 0.0) -> None:
        self.what = what
        self.stats = stats
        self.failures = 0
        self._backoff = Backoff(2 * first, cap, jitter=False) if cap > 0 else None

    def ok(self) -> None:
        self.failures = 0
        if self._backoff is not None:
            self._backoff.reset()

    async def failed(self, exc: Exception) -> None:
        """Count ``exc`` (``redis_errors``), log it if it is the first in a row, pause before the retry."""
        reraise_if_cancelled()
        self.failures += 1
        self.stats["redis_errors"] = self.stats.get("redis_errors", 0) + 1
        if self.failures == 1:
            logger.warning("%s failed (%s); retrying", self.what, redact_text(str(exc)))
        if self._backoff is not None:
            await asyncio.sleep(self._backoff.next())
