"""Following a handed-off task's run: its events as they happen, then its result.

:class:`Relay` merges what :meth:`Requester.stream
<kiki_events.handoff.requesting.Requester.stream>` waits on into one queue: the
request's replies (``started``, again if the task is run again elsewhere, then
``result``) and the events of the run currently followed (:func:`follow_run`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..core.tasks import stop_tasks
from ..errors import RunNotFoundError
from ..events import StreamEvent
from .common import STOP_TIMEOUT, Follow, logger
from .results import HandoffResult

if TYPE_CHECKING:
    pass

__all__ = ["HandoffStream", "Relay", "follow_run"]


class HandoffStream:
    """The events of a handed-off task's run, as they happen; iterate it once.

    After the iteration ends, :attr:`result` holds the outcome. Iteration raises
    :class:`~kiki_events.errors.NoAgentError` or
    :class:`~kiki_events.errors.HandoffTimeoutError` like :meth:`Handoff.delegate`,
    but not :class:`~kiki_events.errors.HandoffFailedError`: check
    ``result.status`` (or call ``result.raise_for_status()``).
    """

    def __init__(self, events: AsyncIterator[StreamEvent], request_id: str) -> None:
        self._events = events
        self.request_id = request_id
        self.result: HandoffResult | None = None
        """The outcome, once iteration has ended."""
        self.run_id: str | None = None
        """The run currently followed on the serving node."""

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._events

    async def aclose(self) -> None:
        """Stop following (and cancel the task if it is still running)."""
        closer = getattr(self._events, "aclose", None)
        if closer is not None:
            await closer()


async def empty_events() -> AsyncIterator[StreamEvent]:
    return
    yield  # pragma: no cover


async def follow_run(follow: Follow, run_id: str, deadline: float) -> AsyncIterator[StreamEvent]:
    """Every event of ``run_id`` once, in order; retries while the run is not known here yet."""
    after = 0
    delay = 0.01
    while True:
        try:
            async for event in follow(run_id, after=after):
                if event.seq == 0 or event.seq <= after:
                    continue
                after = event.seq
                yield event
                if event.type == "done":
                    return
            return
        except RunNotFoundError:
            # The run was announced before this node heard of it.
            if time.time() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)


class Relay:
    """The replies of one request and the events of the run it currently runs as, in one queue.

    Args:
        holder: the stream whose ``run_id`` and ``result`` it keeps up to date.
        next_reply: the request's next reply (raises on timeout or a missing agent).
        follow: the events of a run, from its id.
        result_of: a ``result`` reply → the outcome.
        drain_grace: seconds the run's last events get to arrive once the result is in.
    """

    def __init__(
        self,
        holder: HandoffStream,
        next_reply: Callable[[], Awaitable[dict[str, str]]],
        follow: Callable[[str], AsyncIterator[StreamEvent]],
        result_of: Callable[[dict[str, str]], HandoffResult],
        drain_grace: float,
    ) -> None:
        self.holder = holder
        self._next_reply = next_reply
        self._follow = follow
        self._result_of = result_of
        self._drain_grace = drain_grace
        self._out: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=1024)
        self._watcher: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._retired: list[asyncio.Task[None]] = []
        """Pumps of runs no longer followed (the task was run again elsewhere)."""
        self._pumped: str | None = None
        self.result: HandoffResult | None = None

    def start(self) -> None:
        name = f"kiki-handoff-reply:{self.holder.request_id}"
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name=name)

    async def stop(self) -> None:
        await stop_tasks((self._watcher, self._pump, *self._retired), timeout=STOP_TIMEOUT)

    async def next_event(self) -> StreamEvent | None:
        """The next event of the followed run; ``None`` once the result is in and the events ended.

        Raises what waiting for a reply raised (e.g. ``NoAgentError``, ``HandoffTimeoutError``).
        """
        while (item := await self._next_item()) is not None:
            kind, value = item
            if kind == "event" and value.run_id == self._pumped:
                return value  # type: ignore[no-any-return]
            if kind == "error":
                raise value
            if kind == "reply":
                self._on_reply(value)
        return None

    async def _next_item(self) -> tuple[str, Any] | None:
        if self.result is None:
            return await self._out.get()
        if (self._pump is None or self._pump.done()) and self._out.empty():
            return None
        # The result is in; give the run's last events a moment to arrive.
        try:
            async with asyncio.timeout(self._drain_grace):
                return await self._out.get()
        except TimeoutError:
            return None

    def _on_reply(self, fields: dict[str, str]) -> None:
        kind = fields.get("kind")
        if kind == "result":
            self.result = self.holder.result = self._result_of(fields)
            return
        run_id = fields.get("run_id")
        if kind != "started" or not run_id or run_id == self._pumped:
            return
        if self._pump is not None:  # run again elsewhere: follow the new run
            self._pump.cancel()
            self._retired.append(self._pump)
        self._pumped = self.holder.run_id = run_id
        self._pump = asyncio.get_running_loop().create_task(self._pump_run(run_id), name=f"kiki-follow:{run_id}")

    async def _watch(self) -> None:
        try:
            while True:
                fields = await self._next_reply()
                await self._out.put(("reply", fields))
                if fields.get("kind") == "result":
                    return
        except Exception as exc:  # NoAgentError, HandoffTimeoutError, Redis trouble
            await self._out.put(("error", exc))

    async def _pump_run(self, run_id: str) -> None:
        try:
            async for event in self._follow(run_id):
                await self._out.put(("event", event))
        except Exception as exc:  # the result still arrives through the reply stream
            logger.debug(
                "following run %s of request %s stopped: %r",
                run_id,
                self.holder.request_id,
                exc,
                extra={"run_id": run_id},
            )
        finally:
            await self._out.put(("followed", run_id))
