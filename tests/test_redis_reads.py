"""Blocking Redis reads end when their task is cancelled, wherever the cancellation lands.

redis-py sends each command under ``asyncio.wait_for``, which on Python 3.11 drops
a cancellation arriving just as the send completes; a task cancelled then would
sit in its ``XREAD … BLOCK`` and go on as if never cancelled. Each test cancels a
read after 0, 1, 2 … turns of the event loop, so one of them lands in that window
every time (no timing involved), against a real (private) Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from kiki_events.handoff import GROUP
from kiki_events.redis.client import blocking_command
from kiki_events.redis.workqueue import WorkQueue

pytestmark = [pytest.mark.redis, pytest.mark.asyncio]

TURNS = 16
"""Loop turns swept: more than the few a command takes from its call to its blocking read."""


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.ping()
    try:
        yield client
    finally:
        await client.aclose()


async def cancel_after(turns: int, read: Callable[[], Awaitable[Any]]) -> asyncio.Task[Any]:
    """Start ``read``, let the loop turn ``turns`` times, cancel it, wait until it ended."""
    task = asyncio.ensure_future(read())
    for _ in range(turns):
        await asyncio.sleep(0)  # one turn of the loop: where the cancellation lands, not a delay
    task.cancel()
    await asyncio.wait((task,))
    return task


async def test_a_cancelled_blocking_xread_ends_cancelled_whenever_it_is_cancelled(
    redis: Redis, key_prefix: str
) -> None:
    stream = f"{key_prefix}nothing-comes"
    for turns in range(TURNS):
        task = await cancel_after(
            turns, lambda: blocking_command(redis, "XREAD", "BLOCK", 1000, "STREAMS", stream, "0-0")
        )
        assert task.cancelled(), f"cancelled after {turns} turns, the read returned {task.result()!r}"
        assert await redis.ping()  # the connection went back to the pool in a usable state
    pool: Any = redis.connection_pool
    assert len(pool._in_use_connections) == 0


async def test_a_cancelled_work_queue_read_ends_cancelled_whenever_it_is_cancelled(
    redis: Redis, key_prefix: str
) -> None:
    queue = WorkQueue(redis, f"{key_prefix}work", group=GROUP, consumer=uuid.uuid4().hex, dead_letter="-")
    await queue.ensure_group()
    for turns in range(TURNS):
        task = await cancel_after(turns, lambda: queue.read(1, block=1.0))
        assert task.cancelled(), f"cancelled after {turns} turns, the read returned {task.result()!r}"
    await queue.put({"n": "1"})
    assert [item.fields for item in await queue.read(1, block=1.0)] == [{"n": "1"}]
