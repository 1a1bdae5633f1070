"""core/tasks.py: the one way the package stops, restarts and paces its background tasks."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kiki_events.core.tasks import Backoff, stop_tasks, supervise
from kiki_events.errors import InvalidArgumentError


def test_backoff_doubles_up_to_its_cap_and_starts_again_after_reset() -> None:
    backoff = Backoff(0.1, 0.5, jitter=False)
    assert [backoff.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.next() == 0.1


def test_backoff_jitter_stays_within_a_fifth_below_the_delay() -> None:
    backoff = Backoff(1.0, 1.0)
    assert all(0.8 <= backoff.next() <= 1.0 for _ in range(200))


def test_backoff_refuses_a_cap_below_its_start() -> None:
    with pytest.raises(InvalidArgumentError, match="initial <= cap"):
        Backoff(1.0, 0.5)


@pytest.mark.asyncio
async def test_stop_tasks_cancels_again_a_task_that_swallowed_the_first_cancellation() -> None:
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # lost, as a cancellation racing a send can be
        await asyncio.sleep(3600)

    task = asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0)
    await stop_tasks([task, None], timeout=30)
    assert swallowed.is_set() and task.cancelled()


@pytest.mark.asyncio
async def test_stop_tasks_gives_up_after_its_timeout_and_says_which_task(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()

    async def immortal() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    task = asyncio.get_running_loop().create_task(immortal(), name="immortal")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="kiki_events.tasks"):
        await stop_tasks([task], timeout=0.3)
    assert not task.done()
    assert any("immortal did not stop" in r.getMessage() for r in caplog.records)
    release.set()
    await task


@pytest.mark.asyncio
async def test_stop_tasks_lets_a_task_finish_within_its_grace() -> None:
    async def finishing() -> str:
        await asyncio.sleep(0)
        return "done"

    task = asyncio.get_running_loop().create_task(finishing())
    await stop_tasks([task], grace=30)
    assert task.result() == "done"


@pytest.mark.asyncio
async def test_supervise_restarts_a_crashed_loop_until_it_returns(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    async def loop() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="kiki_events.tasks"):
        await asyncio.wait_for(supervise("flaky-loop", loop), 30)
    assert len(calls) == 3
    assert sum("flaky-loop crashed" in r.getMessage() for r in caplog.records) == 2
