"""What the serving and the requesting side share: names, the wire version, the node's parts.

:class:`HandoffContext` is everything a :class:`~kiki_events.handoff.Handoff` uses
of the node it runs on; the composition root
(:func:`kiki_events.runtime.build.create_handoff`) builds it, Redis client included.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

from ..core.records import text_of
from ..core.tasks import Backoff
from ..events import StreamEvent
from ..log import get_logger
from ..redaction import redact_text
from ..redis.workqueue import WorkQueue

if TYPE_CHECKING:
    from ..bridge import Bridge
    from ..config import HandoffSettings
    from ..core.manager import RunManager
    from ..redis.keys import Keys
    from ..redis.types import Redis

__all__ = [
    "GROUP",
    "MAX_BLOCK",
    "STOP_TIMEOUT",
    "WIRE_VERSION",
    "Follow",
    "HandoffContext",
    "Retry",
    "logger",
    "reraise_if_cancelled",
]

logger = get_logger("kiki_events.handoff")

GROUP = "kiki-agents"
"""Consumer group of every work stream."""
WIRE_VERSION = "1"
STOP_TIMEOUT = 10.0
"""Seconds a handoff loop gets to end once cancelled."""

MAX_BLOCK = 2.0
"""Longest blocking read (s): well under the Redis client's socket timeout (redis-py's
default is 5 s), which would cut a longer one as a failure."""


Follow: TypeAlias = Callable[..., AsyncIterator[StreamEvent]]
"""``follow(run_id, *, after=0)``: every event of a run from whichever node runs it."""


def _new_stats() -> dict[str, int]:
    names = ("delegated", "handled", "duplicates", "reclaimed", "dead_lettered", "released", "redis_errors")
    return dict.fromkeys(names, 0)


@dataclass(eq=False)
class HandoffContext:
    """What one Handoff uses of its node: settings, Redis client, run manager, follow, bridge, counters.

    The composition root builds it and owns (and closes) the Redis client.
    """

    node: str
    settings: HandoffSettings
    keys: Keys
    redis: Redis
    """The Handoff's own client (``CLIENT LIST`` names it after the node); not closed by the Handoff."""
    runs: RunManager
    """Runs the served agents' tasks; its store and graphs are the node's."""
    concurrency: int
    """Tasks of one agent this node runs at once (``handoff.concurrency``, else ``eventbus.subscribe.workers``)."""
    follow: Follow
    """How to follow a run from its id wherever it runs (the runtime's ``follow``)."""
    bridge: Bridge | None = None
    """The node's bridge: a requester that gives up cancels the remote run through it."""
    stats: dict[str, int] = field(default_factory=_new_stats)
    """Counters: tasks delegated from here, run here, skipped as already done, …"""

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
