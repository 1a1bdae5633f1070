"""Background tasks: started supervised, retried with backoff, stopped without hanging.

Every long-lived task of the package goes through these three helpers, so each
loop restarts the same way after a crash and every shutdown has a deadline.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..errors import InvalidArgumentError
from ..log import get_logger

__all__ = ["Backoff", "stop_tasks", "supervise"]

logger = get_logger("kiki_events.tasks")

_RECANCEL = 0.2
"""Seconds between cancellations of a task that has not ended yet."""


class Backoff:
    """Exponential delays with jitter: ``initial`` doubling up to ``cap``.

    The defaults (50 ms to 1 s) keep a reconnect within about 3 s of the peer's return.
    ``jitter=False`` gives the exact sequence (for pauses that tests count).
    """

    def __init__(self, initial: float = 0.05, cap: float = 1.0, *, jitter: bool = True) -> None:
        if initial <= 0 or cap < initial:
            raise InvalidArgumentError(f"backoff needs 0 < initial <= cap; got initial={initial}, cap={cap}")
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
        self._next = initial

    def next(self) -> float:
        """The next delay in seconds (and double the one after it, up to ``cap``)."""
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay * random.uniform(0.8, 1.0) if self.jitter else delay

    def reset(self) -> None:
        """Start again from ``initial`` (after a success)."""
        self._next = self.initial


def supervise(name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
    """Run ``loop`` in a task named ``name`` that restarts it, after a backoff pause, if it crashes.

    The task ends when ``loop`` returns or the task is cancelled.
    """

    async def guarded() -> None:
        backoff = Backoff()
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s crashed; restarting it", name)
                await asyncio.sleep(backoff.next())

    return asyncio.get_running_loop().create_task(guarded(), name=name)


async def stop_tasks(tasks: Iterable[asyncio.Task[Any] | None], *, grace: float = 0.0, timeout: float = 2.0) -> None:
    """Let ``tasks`` end by themselves for ``grace`` seconds, then cancel them; never hangs.

    A task that lost a cancellation (redis-py sends each command under
    ``asyncio.wait_for``, which can drop one on Python 3.11) is cancelled again every
    0.2 s; after ``timeout`` seconds the ones still running are logged and left.
    ``None`` entries are skipped, so optional tasks can be passed as they are.
    """
    started = [task for task in tasks if task is not None]
    pending = {task for task in started if not task.done()}
    if pending and grace > 0:
        _, pending = await asyncio.wait(pending, timeout=grace)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending:
        remaining = deadline - loop.time()
        if remaining <= 0:
            for task in pending:
                logger.warning("task %s did not stop within %.1fs", task.get_name(), timeout)
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(_RECANCEL, remaining))
    for task in started:
        if task.done() and not task.cancelled() and task.exception() is not None:
            logger.debug("task %s ended with %r", task.get_name(), task.exception())
