"""EventBus: lifecycle, routing, bounded queues, isolation of failures (R5), threads."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from kiki_events.core.bus import EventBus, Subscription
from kiki_events.errors import BusError, SubscriptionOverflowError
from kiki_events.events import (
    AgentLifecycleEvent,
    CustomEvent,
    DoneEvent,
    StreamEvent,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
)
from kiki_events.topics import TOPICS, topic_of

GUARD = 10  # seconds; a bound on waiting for a condition, never a delay


def token(seq: int, run: str = "run-1", thread: str | None = "thread-1") -> TokenEvent:
    return TokenEvent(run_id=run, seq=seq, ts=1.0, thread_id=thread, agent="writer", message_id="m", text=f"t{seq}")


def lifecycle(seq: int, phase: Any = "started", run: str = "run-1") -> AgentLifecycleEvent:
    return AgentLifecycleEvent(run_id=run, seq=seq, ts=1.0, thread_id="thread-1", agent="researcher", phase=phase)


def tool_call(seq: int, phase: Any) -> ToolCallEvent:
    return ToolCallEvent(run_id="run-1", seq=seq, ts=1.0, phase=phase, tool_call_id="call-1", name="search")


def tool_result(seq: int) -> ToolResultEvent:
    return ToolResultEvent(run_id="run-1", seq=seq, ts=1.0, tool_call_id="call-1", output="ok")


def custom(seq: int, name: str) -> CustomEvent:
    return CustomEvent(run_id="run-1", seq=seq, ts=1.0, name=name, data={"step": seq})


def done(seq: int, run: str = "run-1") -> DoneEvent:
    return DoneEvent(run_id=run, seq=seq, ts=1.0, status="success")


def mixed_run() -> list[StreamEvent]:
    """One run with one event of every topic, and run-scoped traffic in between."""
    return [
        lifecycle(1, "started"),
        token(2),
        tool_call(3, "start"),
        tool_call(4, "args"),
        tool_call(5, "end"),
        tool_result(6),
        custom(7, "progress"),
        custom(8, "multiagent:sync"),
        lifecycle(9, "completed"),
        lifecycle(10, "failed"),
        done(11),
    ]


def queued(sub: Subscription) -> list[StreamEvent]:
    """Everything already on ``sub``'s queue, without waiting."""
    events: list[StreamEvent] = []
    while len(sub):
        events.append(sub._queue.popleft())
    return events


def seqs(events: list[StreamEvent]) -> list[int]:
    return [e.seq for e in events]


# -- lifecycle --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_bus_runs_inside_its_context_manager() -> None:
    bus = EventBus()
    assert not bus.running

    async with bus as entered:
        assert entered is bus
        assert bus.running

    assert not bus.running


@pytest.mark.asyncio
async def test_starting_twice_is_refused_with_a_clear_message() -> None:
    async with EventBus() as bus:
        with pytest.raises(BusError, match="cannot be started: it is running"):
            await bus.start()
    with pytest.raises(BusError, match="cannot be started: it is closed"):
        await bus.start()


@pytest.mark.asyncio
async def test_publish_outside_the_lifecycle_returns_false_and_counts() -> None:
    bus = EventBus()

    assert bus.publish(token(1)) is False
    assert bus.stats.dropped == {"not_running": 1}
    async with bus:
        assert bus.publish(token(2)) is True
    assert bus.publish(token(3)) is False
    assert bus.stats.dropped == {"not_running": 2}
    assert bus.stats.published == 1


@pytest.mark.asyncio
async def test_subscribe_and_emit_outside_the_lifecycle_raise_bus_error() -> None:
    bus = EventBus()
    with pytest.raises(BusError, match="event bus is new"):
        bus.subscribe()
    async with bus:
        pass
    with pytest.raises(BusError, match="event bus is closed"):
        bus.subscribe(run_id="run-1")
    with pytest.raises(BusError, match="closed"):
        await bus.emit_and_wait(token(1))


@pytest.mark.asyncio
async def test_closing_an_unstarted_bus_is_allowed_and_final() -> None:
    bus = EventBus()
    await bus.close()
    await bus.close()
    with pytest.raises(BusError, match="closed"):
        await bus.start()


def test_bus_sizes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="inbox_size and queue_size"):
        EventBus(inbox_size=0)
    with pytest.raises(ValueError, match="inbox_size and queue_size"):
        EventBus(queue_size=0)


# -- routing ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_subscribe_by_run_gets_only_that_run_in_order() -> None:
    async with EventBus() as bus:
        mine = bus.subscribe(run_id="run-1")
        other = bus.subscribe(run_id="run-2")
        for seq in range(1, 4):
            bus.publish(token(seq, run="run-1"))
            bus.publish(token(seq, run="run-2"))
        bus.publish(done(4, run="run-1"))

        got = queued(mine)
        assert [(e.run_id, e.seq) for e in got] == [("run-1", 1), ("run-1", 2), ("run-1", 3), ("run-1", 4)]
        assert {e.run_id for e in queued(other)} == {"run-2"}
        assert bus.has_run_subscribers("run-1")
        assert not bus.has_run_subscribers("run-3")


@pytest.mark.asyncio
async def test_subscribe_by_thread_gets_every_run_of_that_thread() -> None:
    async with EventBus() as bus:
        sub = bus.subscribe(thread_id="thread-1")
        bus.publish(token(1, run="run-1", thread="thread-1"))
        bus.publish(token(1, run="run-2", thread="thread-2"))
        bus.publish(token(1, run="run-3", thread=None))
        bus.publish(token(2, run="run-4", thread="thread-1"))

        assert [e.run_id for e in queued(sub)] == ["run-1", "run-4"]


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("agent:started", [1]),
        ("agent:completed", [9]),
        ("agent:failed", [10]),
        ("agent:tool_call", [5]),  # only the "end" phase, when the arguments are complete
        ("agent:tool_result", [6]),
        ("multiagent:sync", [8]),  # only custom events with that name
        ("agent:*", [1, 5, 6, 9, 10]),
        ("multiagent:*", [8]),
        ("*", list(range(1, 12))),  # everything, run-scoped traffic included
    ],
)
@pytest.mark.asyncio
async def test_subscribe_by_topic(topic: str, expected: list[int]) -> None:
    async with EventBus() as bus:
        sub = bus.subscribe(topics=topic)
        for event in mixed_run():
            bus.publish(event)

        assert seqs(queued(sub)) == expected


def test_every_topic_is_produced_by_some_event() -> None:
    assert {topic_of(e) for e in mixed_run()} - {None} == set(TOPICS)


@pytest.mark.asyncio
async def test_subscribe_to_several_topics_delivers_each_event_once() -> None:
    async with EventBus() as bus:
        both = bus.subscribe(topics=["agent:started", "multiagent:sync"])
        overlapping = bus.subscribe(topics=["agent:*", "agent:started", "agent:tool_call"])
        for event in mixed_run():
            bus.publish(event)

        assert seqs(queued(both)) == [1, 8]
        assert seqs(queued(overlapping)) == [1, 5, 6, 9, 10]


@pytest.mark.asyncio
async def test_subscribe_to_everything() -> None:
    async with EventBus() as bus:
        sub = bus.subscribe()
        events = [*mixed_run(), token(1, run="run-9", thread=None)]
        for event in events:
            bus.publish(event)

        assert queued(sub) == events


@pytest.mark.asyncio
async def test_types_filter_narrows_any_subscription() -> None:
    async with EventBus() as bus:
        tokens = bus.subscribe(run_id="run-1", types={"token", "done"})
        dones = bus.subscribe(types="done")
        lifecycle_topics = bus.subscribe(topics="agent:*", types=["agent_lifecycle"])
        for event in mixed_run():
            bus.publish(event)

        assert seqs(queued(tokens)) == [2, 11]
        assert seqs(queued(dones)) == [11]
        assert seqs(queued(lifecycle_topics)) == [1, 9, 10]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"run_id": "r", "thread_id": "t"}, ["run_id", "thread_id"]),
        ({"topics": "agent:*", "run_id": "r"}, ["topics", "run_id"]),
        ({"overflow": "block"}, ["overflow", "'block'"]),
        ({"maxsize": 0}, ["maxsize", "0"]),
        ({"topics": []}, ["topics"]),
        ({"topics": ""}, ["topics"]),
        ({"topics": ["agent:*", ""]}, ["topics"]),
        ({"types": ["tokens"]}, ["types", "tokens"]),
        ({"types": "Token"}, ["types", "Token"]),
    ],
)
@pytest.mark.asyncio
async def test_invalid_subscribe_arguments_name_the_problem(kwargs: dict[str, Any], named: list[str]) -> None:
    async with EventBus() as bus:
        with pytest.raises(ValueError) as info:
            bus.subscribe(**kwargs)
        assert not isinstance(info.value, BusError)
        for word in named:
            assert word in str(info.value)
        assert bus.subscriptions == 0


# -- overflow ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_drop_oldest_keeps_the_newest_events() -> None:
    async with EventBus() as bus:
        sub = bus.subscribe(run_id="run-1", maxsize=3, overflow="drop_oldest")
        for seq in range(1, 6):
            bus.publish(token(seq))

        assert seqs(await sub.get_batch()) == [3, 4, 5]
        assert sub.dropped == 2
        assert sub.delivered == 5
        assert bus.stats.dropped == {"queue_full": 2}
        assert not sub.closed


@pytest.mark.asyncio
async def test_drop_newest_keeps_the_oldest_events() -> None:
    async with EventBus() as bus:
        sub = bus.subscribe(run_id="run-1", maxsize=3, overflow="drop_newest")
        for seq in range(1, 6):
            bus.publish(token(seq))

        assert seqs(await sub.get_batch()) == [1, 2, 3]
        assert sub.dropped == 2
        assert sub.delivered == 3
        assert bus.stats.dropped["queue_full"] == 2


@pytest.mark.asyncio
async def test_disconnect_closes_the_subscription_and_the_iterator_raises() -> None:
    async with EventBus() as bus:
        sub = bus.subscribe(run_id="run-1", maxsize=3, overflow="disconnect", name="slow-client")
        for seq in range(1, 6):
            bus.publish(token(seq))

        assert sub.closed
        assert bus.subscriptions == 0
        assert sub.dropped == 1  # the event that did not fit; later ones are not offered
        assert bus.stats.dropped == {"queue_full": 1}
        # What was queued before the overflow is still readable; then the iterator raises.
        assert seqs([await anext(sub) for _ in range(3)]) == [1, 2, 3]
        with pytest.raises(SubscriptionOverflowError, match="'slow-client' fell more than 3 events behind"):
            await anext(sub)
        with pytest.raises(SubscriptionOverflowError):
            await sub.get_batch()


@pytest.mark.parametrize("key", [{}, {"run_id": "run-1"}, {"thread_id": "thread-1"}])
@pytest.mark.asyncio
async def test_a_disconnecting_subscription_does_not_make_its_neighbours_miss_events(key: dict[str, str]) -> None:
    async with EventBus() as bus:
        slow = bus.subscribe(**key, maxsize=1, overflow="disconnect")
        neighbour = bus.subscribe(**key)
        last = bus.subscribe(**key)
        for seq in range(1, 4):
            bus.publish(token(seq))

        assert slow.closed
        assert seqs(queued(neighbour)) == [1, 2, 3]
        assert seqs(queued(last)) == [1, 2, 3]
        assert bus.subscriptions == 2


# -- handlers and sinks ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sync_and_async_handlers_both_run() -> None:
    sync_seen: list[int] = []
    async_seen: list[int] = []

    def on_sync(event: StreamEvent) -> None:
        sync_seen.append(event.seq)

    async def on_async(event: StreamEvent) -> None:
        await asyncio.sleep(0)
        async_seen.append(event.seq)

    async with EventBus() as bus:
        sync_sub = bus.subscribe(on_sync)
        bus.subscribe(on_async, run_id="run-1")
        for seq in range(1, 4):
            bus.publish(token(seq))
        await bus.drain()

        assert sync_seen == [1, 2, 3]
        assert async_seen == [1, 2, 3]
        assert sync_sub.name.endswith("on_sync")
        assert sync_sub.errors == 0


@pytest.mark.asyncio
async def test_a_raising_handler_is_isolated_logged_once_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    good: list[int] = []

    def broken(event: StreamEvent) -> None:
        raise RuntimeError(f"handler bug at {event.seq}")

    async def fine(event: StreamEvent) -> None:
        good.append(event.seq)

    caplog.set_level(logging.DEBUG, logger="kiki_events.bus")
    async with EventBus() as bus:
        bad = bus.subscribe(broken, name="broken")
        bus.subscribe(fine)
        for seq in range(1, 4):
            bus.publish(token(seq))
        await bus.drain()

        assert good == [1, 2, 3]
        assert bad.errors == 3
        assert bus.stats.handler_errors == 3
        assert not bad.closed
        errors = [r for r in caplog.records if r.name == "kiki_events.bus" and r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert "'broken'" in errors[0].getMessage()
        # The traceback travels as masked text (kiki_events.log), not as the exception object.
        assert errors[0].exc_text is not None and "RuntimeError: handler bug at 1" in errors[0].exc_text

        # Later events still flow to everyone.
        await bus.emit_and_wait(done(4))
        assert good == [1, 2, 3, 4]
        assert bad.errors == 4
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


@pytest.mark.asyncio
async def test_a_raising_sink_is_isolated(caplog: pytest.LogCaptureFixture) -> None:
    kept: list[int] = []

    def bad_sink(event: StreamEvent) -> None:
        raise ValueError("sink bug")

    async with EventBus() as bus:
        bus.add_sink(bad_sink)
        remove = bus.add_sink(lambda event: kept.append(event.seq))
        sub = bus.subscribe()
        bus.publish(token(1))
        bus.publish(token(2))

        assert kept == [1, 2]
        assert seqs(queued(sub)) == [1, 2]
        assert bus.stats.handler_errors == 2
        assert any("sink" in r.getMessage() and r.name == "kiki_events.bus" for r in caplog.records)

        remove()
        remove()  # idempotent
        bus.publish(token(3))
        assert kept == [1, 2]
        assert seqs(queued(sub)) == [3]


@pytest.mark.asyncio
async def test_emit_and_wait_returns_after_handlers_handled_the_event() -> None:
    handled: list[int] = []
    entered, gate = asyncio.Event(), asyncio.Event()

    async def slow(event: StreamEvent) -> None:
        entered.set()
        await gate.wait()
        handled.append(event.seq)

    async with EventBus() as bus:
        bus.subscribe(slow)
        emit = asyncio.create_task(bus.emit_and_wait(token(1)))
        await asyncio.wait_for(entered.wait(), GUARD)
        assert not emit.done()
        assert handled == []

        gate.set()
        await asyncio.wait_for(emit, GUARD)
        assert handled == [1]


@pytest.mark.asyncio
async def test_emit_and_wait_refuses_other_threads() -> None:
    async with EventBus() as bus:
        with pytest.raises(BusError, match="event loop"):
            await asyncio.to_thread(asyncio.run, bus.emit_and_wait(token(1)))


@pytest.mark.asyncio
async def test_drain_waits_for_every_handler() -> None:
    handled: list[int] = []

    async def handler(event: StreamEvent) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        handled.append(event.seq)

    async with EventBus() as bus:
        bus.subscribe(handler, maxsize=1000)
        bus.subscribe(handler, run_id="run-1", maxsize=1000)
        for seq in range(1, 101):
            bus.publish(token(seq))
        await asyncio.wait_for(bus.drain(), GUARD)

        assert sorted(handled) == sorted([*range(1, 101), *range(1, 101)])


@pytest.mark.asyncio
async def test_get_batch_returns_everything_queued_at_once() -> None:
    async with EventBus() as bus:
        sub = bus.subscribe(run_id="run-1")
        for seq in range(1, 6):
            bus.publish(token(seq))

        assert seqs(await sub.get_batch(limit=2)) == [1, 2]
        assert seqs(await sub.get_batch()) == [3, 4, 5]
        assert len(sub) == 0


# -- other threads ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_publish_from_a_worker_thread_is_delivered_on_the_loop() -> None:
    async with EventBus() as bus:
        sub = bus.subscribe(run_id="run-1")
        assert await asyncio.to_thread(bus.publish, token(1)) is True
        assert await asyncio.to_thread(bus.publish, token(2)) is True

        got = [await asyncio.wait_for(anext(sub), GUARD) for _ in range(2)]
        assert seqs(got) == [1, 2]


@pytest.mark.asyncio
async def test_a_plain_thread_publishing_10000_events_delivers_all_in_order() -> None:
    count = 10_000
    results: list[bool] = []

    async with EventBus() as bus:
        sub = bus.subscribe(run_id="run-1", maxsize=count)
        received: list[int] = []

        async def consume() -> None:
            async for event in sub:
                received.append(event.seq)
                if event.seq == count:
                    return

        consumer = asyncio.create_task(consume())
        worker = threading.Thread(target=lambda: results.extend(bus.publish(token(s)) for s in range(1, count + 1)))
        worker.start()
        await asyncio.to_thread(worker.join, GUARD)
        await asyncio.wait_for(consumer, GUARD)

        assert not worker.is_alive()
        assert results == [True] * count
        assert received == list(range(1, count + 1))
        assert bus.stats.published == count
        assert bus.stats.dropped == {}


@pytest.mark.asyncio
async def test_a_full_inbox_drops_and_counts_without_raising_or_blocking() -> None:
    count = 10_000
    results: list[bool] = []

    async with EventBus(inbox_size=8) as bus:
        sub = bus.subscribe(run_id="run-1", maxsize=count)
        worker = threading.Thread(target=lambda: results.extend(bus.publish(token(s)) for s in range(1, count + 1)))
        worker.start()
        # Keep the loop busy on purpose: nothing drains the inbox while the thread publishes,
        # and the thread must still finish.
        worker.join(GUARD)
        assert not worker.is_alive()
        await bus.drain()

        assert results == [True] * 8 + [False] * (count - 8)
        assert bus.stats.dropped == {"inbox_full": count - 8}
        assert seqs(queued(sub)) == list(range(1, 9))

        # Once drained, the inbox accepts again.
        assert await asyncio.to_thread(bus.publish, token(count + 1)) is True
        assert seqs([await asyncio.wait_for(anext(sub), GUARD)]) == [count + 1]


# -- closing --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_closing_a_subscription_removes_it() -> None:
    async with EventBus() as bus:
        baseline = bus.subscriptions
        subs = [
            bus.subscribe(),
            bus.subscribe(run_id="run-1"),
            bus.subscribe(thread_id="thread-1"),
            bus.subscribe(topics=["agent:*", "multiagent:sync"]),
        ]
        assert bus.subscriptions == baseline + 4
        for sub in subs:
            sub.close()
            sub.close()  # idempotent

        assert bus.subscriptions == baseline
        assert not bus.has_run_subscribers("run-1")
        for event in mixed_run():
            bus.publish(event)
        assert all(len(sub) == 0 for sub in subs)


@pytest.mark.asyncio
async def test_leaving_async_with_closes_the_subscription_and_its_handler_task() -> None:
    async def handler(event: StreamEvent) -> None:
        return None

    async with EventBus() as bus:
        baseline = bus.subscriptions
        async with bus.subscribe(run_id="run-1") as sub:
            assert bus.subscriptions == baseline + 1
        assert sub.closed
        assert bus.subscriptions == baseline

        async with bus.subscribe(handler) as handled:
            assert handled.task is not None and not handled.task.done()
        assert handled.task.done()
        assert bus.subscriptions == baseline


@pytest.mark.asyncio
async def test_closing_wakes_a_waiting_consumer_and_keeps_queued_events() -> None:
    async with EventBus() as bus:
        sub = bus.subscribe(run_id="run-1")
        received: list[int] = []
        got_first = asyncio.Event()

        async def consume() -> None:
            async for event in sub:
                received.append(event.seq)
                got_first.set()

        consumer = asyncio.create_task(consume())
        bus.publish(token(1))
        await asyncio.wait_for(got_first.wait(), GUARD)
        bus.publish(token(2))
        sub.close()
        await asyncio.wait_for(consumer, GUARD)

        assert received == [1, 2]
        with pytest.raises(StopAsyncIteration):
            await sub.get_batch()


@pytest.mark.asyncio
async def test_closing_the_bus_ends_consumers_and_cancels_handler_tasks(caplog: pytest.LogCaptureFixture) -> None:
    entered, never = asyncio.Event(), asyncio.Event()

    async def stuck(event: StreamEvent) -> None:
        entered.set()
        await never.wait()

    async def quick(event: StreamEvent) -> None:
        return None

    bus = EventBus()
    await bus.start()
    consumer_sub = bus.subscribe(run_id="run-1")
    stuck_sub = bus.subscribe(stuck)
    quick_sub = bus.subscribe(quick)
    consumer = asyncio.create_task(anext(consumer_sub))
    bus.publish(done(1, run="run-2"))
    await asyncio.wait_for(entered.wait(), GUARD)

    await bus.close(timeout=0.05)

    assert stuck_sub.task is not None and stuck_sub.task.cancelled()
    assert quick_sub.task is not None and quick_sub.task.done()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(consumer, GUARD)
    assert bus.subscriptions == 0
    assert not bus.running
    assert any("still busy" in r.getMessage() for r in caplog.records)
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == []
