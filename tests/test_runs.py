"""Replay buffers, cursors, the run store and the run manager, on real graphs."""

from __future__ import annotations

import asyncio
import logging
import time
from types import ModuleType
from typing import Any

import pytest

from kiki_events.config import RunSettings, Settings
from kiki_events.core.cursors import RunCursor, ThreadCursor
from kiki_events.core.runlog import Frame, RunLog
from kiki_events.core.runrecord import RunRecord
from kiki_events.core.store import RunStore
from kiki_events.errors import KikiEventsError, RunError, RunLimitError, RunNotFoundError, UnknownGraphError
from kiki_events.events import DoneEvent, ErrorEvent, StatusEvent, StreamEvent, TokenEvent
from kiki_events.formats.kiki import FORMAT
from kiki_events.runtime import KikiRuntime
from kiki_events.testing import CapturedEvents
from tests.servers import Gate, async_wait_for, gated_graph

TASK = {"messages": [{"role": "user", "content": "Compare Redis streams and pub/sub"}]}


def _user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def _token(run_id: str, seq: int, thread_id: str | None = None) -> TokenEvent:
    return TokenEvent(run_id=run_id, seq=seq, ts=1.0, thread_id=thread_id, message_id="m", text=f"t{seq}")


def _status(run_id: str, thread_id: str | None = None) -> StatusEvent:
    return StatusEvent(run_id=run_id, seq=1, ts=1.0, thread_id=thread_id, status="started", graph="g")


def _done(run_id: str, seq: int, thread_id: str | None = None) -> DoneEvent:
    return DoneEvent(run_id=run_id, seq=seq, ts=1.0, thread_id=thread_id, status="success")


def _seqs(items: list[Any]) -> list[int]:
    return [item.seq for item in items if isinstance(item, Frame)]


def _events(record: RunRecord) -> CapturedEvents:
    frames, gap = record.log.read(0, 1_000_000)
    assert gap is None
    return CapturedEvents(frame.event for frame in frames)


def _runtime(research_team: ModuleType, gate: Gate | None = None, **runs: Any) -> KikiRuntime:
    settings = Settings(runs=RunSettings(**runs))
    graphs: dict[str, object] = {"team": research_team.build_graph(token_delay=0.0)}
    if gate is not None:
        graphs["gated"] = gated_graph(research_team, gate)
    return KikiRuntime(settings, graphs=graphs)


# -- RunLog ------------------------------------------------------------------------------------


class TestRunLog:
    def test_reads_after_a_seq(self) -> None:
        log = RunLog("r", 100)
        for seq in range(1, 11):
            log.append(_token("r", seq))

        frames, gap = log.read(4, 3)

        assert [f.seq for f in frames] == [5, 6, 7]
        assert gap is None
        assert log.read(10, 5) == ([], None)

    def test_stays_bounded_and_reports_a_gap_for_an_old_position(self) -> None:
        log = RunLog("r", 16)
        for seq in range(1, 1001):
            log.append(_token("r", seq))

        assert 16 <= len(log) <= 32
        frames, gap = log.read(0, 1000)
        assert gap == log.first_seq
        assert frames[0].seq == gap
        assert frames[-1].seq == 1000
        assert log.read(999, 10)[1] is None  # inside the window: no gap

    def test_ignores_duplicates_and_inserts_late_events_in_order(self) -> None:
        log = RunLog("r", 100)
        for seq in (1, 2, 4):
            log.append(_token("r", seq))

        assert log.append(_token("r", 2)) is False
        assert log.append(_token("r", 3)) is True

        assert [f.seq for f in log.read(0, 10)[0]] == [1, 2, 3, 4]
        assert log.reordered == 1

    def test_done_records_the_final_status(self) -> None:
        log = RunLog("r", 100)
        log.append(_status("r"))
        assert not log.ended
        log.append(_done("r", 2))
        assert log.ended
        assert log.final_status == "success"

    def test_error_text_in_frames_is_redacted_whoever_produced_it(self) -> None:
        log = RunLog("r", 100)
        log.append(ErrorEvent(run_id="r", seq=1, ts=1.0, message="db password=hunter2 refused", error_type="E"))

        data = FORMAT.encoder().encode(log.read(0, 1)[0][0])

        assert b"hunter2" not in data
        assert b"password=***" in data

    def test_frames_are_encoded_once_and_shared(self) -> None:
        log = RunLog("r", 100)
        log.append(_token("r", 1))
        first = FORMAT.encoder().encode(log.read(0, 1)[0][0])
        again = FORMAT.encoder().encode(log.read(0, 1)[0][0])

        assert first is again
        assert first.startswith(b"id: r:1\nevent: token\ndata: {")
        assert first.endswith(b"}\n\n")
        assert b"\r" not in first


# -- cursors -------------------------------------------------------------------------------------


class TestRunCursor:
    async def _filled(self, count: int, capacity: int = 100) -> RunLog:
        log = RunLog("r", capacity)
        log.append(_status("r"))
        for seq in range(2, count + 1):
            log.append(_token("r", seq))
        return log

    @pytest.mark.asyncio
    async def test_reads_everything_then_finishes_after_done(self) -> None:
        log = await self._filled(5)
        cursor = RunCursor(log)

        first = await cursor.next()
        assert _seqs(first) == [1, 2, 3, 4, 5]
        waiting = asyncio.ensure_future(cursor.next())
        await async_wait_for(lambda: log.changed.waiting == 1, what="the cursor to wait")
        log.append(_done("r", 6))
        assert _seqs(await waiting) == [6]
        assert cursor.finished
        assert await cursor.next() == []
        assert log.changed.waiting == 0

    @pytest.mark.asyncio
    async def test_join_before_the_window_gets_a_gap_notice_first(self) -> None:
        log = await self._filled(500, capacity=16)
        cursor = RunCursor(log, 3)

        items = cursor.poll()

        assert isinstance(items[0], StatusEvent)
        assert items[0].status == "gap"
        assert items[0].seq == 0
        assert items[0].first_seq == log.first_seq
        assert _seqs(items)[0] == log.first_seq

    @pytest.mark.asyncio
    async def test_a_reader_that_falls_behind_is_told_and_skips_ahead(self) -> None:
        log = await self._filled(5, capacity=16)
        lagged: list[int] = []
        cursor = RunCursor(log, on_lag=lambda: lagged.append(1))
        assert _seqs(cursor.poll()) == [1, 2, 3, 4, 5]
        for seq in range(6, 200):
            log.append(_token("r", seq))

        items = cursor.poll(1000)

        assert isinstance(items[0], StatusEvent)
        assert items[0].status == "lagging"
        assert _seqs(items)[-1] == 199
        assert lagged == [1]
        assert not cursor.finished

    @pytest.mark.asyncio
    async def test_disconnect_policy_ends_a_lagging_reader(self) -> None:
        log = await self._filled(5, capacity=16)
        cursor = RunCursor(log, slow_client="disconnect")
        cursor.poll()
        for seq in range(6, 200):
            log.append(_token("r", seq))

        items = cursor.poll(1000)

        assert [type(i) for i in items] == [StatusEvent]
        assert cursor.finished
        assert not cursor.caught_up

    @pytest.mark.asyncio
    @pytest.mark.parametrize("policy", ["skip", "disconnect"])
    async def test_a_reader_with_a_backlog_over_max_backlog_gets_the_slow_client_policy(self, policy: str) -> None:
        log = await self._filled(5, capacity=1000)
        lagged: list[int] = []
        cursor = RunCursor(log, slow_client=policy, on_lag=lambda: lagged.append(1), max_backlog=16)  # type: ignore[arg-type]
        assert _seqs(cursor.poll()) == [1, 2, 3, 4, 5]
        for seq in range(6, 6 + 16):
            log.append(_token("r", seq))
        assert _seqs(cursor.poll(1000)) == list(range(6, 22))  # 16 behind: still within the bound
        for seq in range(22, 22 + 17):
            log.append(_token("r", seq))

        items = cursor.poll(1000)

        assert isinstance(items[0], StatusEvent)
        assert items[0].status == "lagging"
        assert items[0].first_seq == 38 - 8 + 1
        assert "more than 16 events behind" in (items[0].detail or "")
        assert lagged == [1]
        if policy == "skip":
            assert _seqs(items) == list(range(31, 39))
            assert not cursor.finished
        else:
            assert items[1:] == []
            assert cursor.finished and not cursor.caught_up

    @pytest.mark.asyncio
    async def test_a_late_joiners_replay_and_fetched_history_are_no_backlog(self) -> None:
        log = await self._filled(500, capacity=1000)
        joiner = RunCursor(log, max_backlog=16)
        assert _seqs(joiner.poll(1000)) == list(range(1, 501))  # 500 to catch up with: its replay

        remote = RunLog("remote", 1000)
        follower = RunCursor(remote, max_backlog=16)
        remote.set_syncing(True)  # another node's run: its history arrives after the reader joined
        for seq in range(1, 300):
            remote.append(_token("remote", seq))
        remote.set_syncing(False)
        items = follower.poll(1000)
        assert _seqs(items) == list(range(1, 300))
        assert not [i for i in items if isinstance(i, StatusEvent)]

    @pytest.mark.asyncio
    async def test_a_cancelled_reader_leaves_no_waiter_behind(self) -> None:
        log = await self._filled(2)
        cursors = [RunCursor(log, 2) for _ in range(50)]
        tasks = [asyncio.ensure_future(c.next()) for c in cursors]
        await async_wait_for(lambda: log.changed.waiting == 50, what="50 waiting readers")

        for task in tasks[:25]:
            task.cancel()
        await asyncio.gather(*tasks[:25], return_exceptions=True)
        log.append(_token("r", 3))
        results = await asyncio.gather(*tasks[25:])

        assert all(_seqs(r) == [3] for r in results)
        assert log.changed.waiting == 0


class TestThreadCursor:
    @pytest.mark.asyncio
    async def test_follows_every_run_of_a_thread_and_resumes_mid_thread(self) -> None:
        store = RunStore(replay_events=100)
        store.create("a", thread_id="t")
        for event in (_status("a", "t"), _token("a", 2, "t"), _done("a", 3, "t")):
            store.sink(event)
        thread = store.thread("t")
        cursor = ThreadCursor("t", lambda: store.thread_logs(thread), thread.changed)

        first = await cursor.next()
        assert [(i.event.run_id, i.seq) for i in first if isinstance(i, Frame)] == [("a", 1), ("a", 2), ("a", 3)]
        later = asyncio.ensure_future(cursor.next())
        await async_wait_for(lambda: thread.changed.waiting == 1, what="the thread cursor to wait")
        store.create("b", thread_id="t")
        store.sink(_status("b", "t"))
        assert [(i.event.run_id, i.seq) for i in await later if isinstance(i, Frame)] == [("b", 1)]

        resumed = ThreadCursor("t", lambda: store.thread_logs(thread), thread.changed, resume=("a", 2))
        assert [(i.event.run_id, i.seq) for i in resumed.poll() if isinstance(i, Frame)] == [("a", 3), ("b", 1)]

        unknown = ThreadCursor("t", lambda: store.thread_logs(thread), thread.changed, resume=("gone", 7))
        items = unknown.poll()
        assert isinstance(items[0], StatusEvent)
        assert items[0].status == "gap"
        assert len(_seqs(items)) == 4

    @pytest.mark.asyncio
    async def test_ends_when_the_store_stops_following_and_every_run_was_delivered(self) -> None:
        store = RunStore(replay_events=100)
        store.create("a", thread_id="t")
        store.sink(_status("a", "t"))
        thread = store.thread("t")
        cursor = ThreadCursor("t", lambda: store.thread_logs(thread), thread.changed, until=lambda: not store.following)
        assert len(await cursor.next()) == 1
        waiting = asyncio.ensure_future(cursor.next())
        await async_wait_for(lambda: thread.changed.waiting == 1, what="the thread cursor to wait")

        store.stop_following()  # the run is still open: keep going
        await async_wait_for(lambda: thread.changed.waiting == 1, what="the thread cursor to wait again")
        assert not waiting.done()
        store.sink(_done("a", 2, "t"))

        assert _seqs(await waiting) == [2]
        assert await cursor.next() == []
        assert cursor.finished

    @pytest.mark.asyncio
    async def test_holds_later_runs_back_while_an_earlier_run_catches_up_with_its_history(self) -> None:
        store = RunStore(replay_events=100)
        first = store.adopt("a", thread_id="t", node="n1", created_at=20.0)
        store.set_syncing(first, True)  # its history is being fetched from n1
        store.adopt("b", thread_id="t", node="n1", created_at=30.0)
        store.sink(_status("b", "t"))
        store.sink(_token("b", 2, "t"))
        thread = store.thread("t")
        cursor = ThreadCursor("t", lambda: store.thread_logs(thread), thread.changed)

        def runs(items: list[Any]) -> list[tuple[str, int]]:
            return [(i.event.run_id, i.seq) for i in items if isinstance(i, Frame)]

        assert cursor.poll() == []  # b waits for a
        store.sink(_status("a", "t"))  # a's own events are not held back
        assert runs(cursor.poll()) == [("a", 1)]
        waiting = asyncio.ensure_future(cursor.next())
        await async_wait_for(lambda: thread.changed.waiting == 1, what="the thread cursor to wait")
        store.set_syncing(first, False)  # caught up, still live: later runs may follow
        assert runs(await waiting) == [("b", 1), ("b", 2)]
        store.sink(_token("a", 2, "t"))
        store.sink(_token("b", 3, "t"))
        assert runs(cursor.poll()) == [("a", 2), ("b", 3)]  # live runs interleave

        store.set_syncing(first, True)  # a gap being repaired holds b back again
        store.sink(_token("b", 4, "t"))
        assert cursor.poll() == []
        first.log.close()  # a run that is over never holds anything back
        assert first.log.syncing is False
        assert runs(cursor.poll()) == [("b", 4)]

    def test_runs_join_their_thread_in_start_order_whatever_order_they_arrive_in(self) -> None:
        store = RunStore()
        store.adopt("late", thread_id="t", node="n1", created_at=time.time() + 60)
        store.create("local", thread_id="t")
        store.adopt("early", thread_id="t", node="n1", created_at=10.0)
        thread = store.thread("t")

        assert list(thread.runs) == ["early", "local", "late"]
        assert [log.run_id for log in store.thread_logs(thread)] == ["early", "local", "late"]


# -- RunStore ------------------------------------------------------------------------------------


class TestRunStore:
    def test_sink_tracks_runs_it_did_not_start(self) -> None:
        store = RunStore()
        store.sink(_status("x", "t"))

        record = store.get("x")
        assert record.status == "running"
        assert record.graph == "g"
        assert record.thread_id == "t"
        store.sink(_done("x", 2, "t"))
        assert record.status == "success"
        assert record.ended_at is not None

    def test_connection_notices_are_not_stored(self) -> None:
        store = RunStore()
        store.sink(StatusEvent(run_id="x", seq=0, ts=1.0, status="missed"))
        assert "x" not in store

    def test_other_principals_cannot_see_runs_or_threads(self) -> None:
        store = RunStore()
        store.create("r", thread_id="t", principal="alice")

        assert store.get("r", "alice").run_id == "r"
        assert store.thread("t", "alice").thread_id == "t"
        for who in ("bob", None):
            with pytest.raises(RunNotFoundError, match="run 'r' not found"):
                store.get("r", who)
            with pytest.raises(RunNotFoundError, match="thread 't' not found"):
                store.thread("t", who)
        with pytest.raises(RunNotFoundError, match="thread 't' not found"):
            store.create("r2", thread_id="t", principal="bob")

    def test_a_thread_stays_its_owners_after_its_runs_are_forgotten_until_thread_ttl(self) -> None:
        store = RunStore(replay_ttl=60, thread_ttl=3600)
        store.create("r", thread_id="t", principal="alice")
        store.sink(_status("r", "t"))
        store.sink(_done("r", 2, "t"))
        ended = store.peek("r").ended_at  # type: ignore[union-attr]
        assert ended is not None

        assert store.evict_expired(now=ended + 61) == 1
        assert "r" not in store and store.peek_thread("t") is None  # the runs are gone ...
        with pytest.raises(RunNotFoundError, match="thread 't' not found"):
            store.create("taken", thread_id="t", principal="bob")  # ... the owner is not
        store.create("again", thread_id="t", principal="alice")
        store.forget("again")
        store.evict_expired(now=ended + 3600 - 1)
        assert store.owners.get("t") is not None
        store.evict_expired(now=time.time() + 3601)
        assert store.owners.get("t") is None
        store.create("new-owner", thread_id="t", principal="bob")
        assert store.thread("t", "bob").principal == "bob"

    def test_an_owner_is_kept_while_its_thread_has_runs_and_the_oldest_idle_go_first_beyond_max_threads(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = RunStore(thread_ttl=0, max_threads=2)
        store.create("busy", thread_id="t-busy", principal="alice")
        store.evict_expired(now=time.time() + 10)
        assert store.owners.get("t-busy") is not None  # its run is still kept
        store.create("x", thread_id="t-1", principal="alice")
        store.forget("x")
        store.create("y", thread_id="t-2", principal="alice")
        store.forget("y")

        assert store.owners.get("t-busy") is not None  # never evicted while it has runs
        assert store.owners.get("t-1") is None and store.owners.get("t-2") is not None
        assert store.owners.evicted == 1
        assert sum("runs.max_threads" in r.getMessage() for r in caplog.records) == 1

    def test_runs_of_someone_else_are_never_mixed_into_a_thread(self) -> None:
        store = RunStore()
        store.create("mine", thread_id="t", principal="alice")
        store.adopt("theirs", thread_id="t", node="b", principal="bob")
        thread = store.thread("t", "alice")

        assert [log.run_id for log in store.thread_logs(thread)] == ["mine"]
        with pytest.raises(RunNotFoundError):
            store.get("theirs", "bob")  # a run on alice's thread is nobody else's to read
        store.decide_owner("t", "bob")  # the cluster said otherwise
        with pytest.raises(RunNotFoundError):
            store.thread("t", "alice")
        assert [log.run_id for log in store.thread_logs(store.thread("t", "bob"))] == ["theirs"]

    def test_expired_runs_are_forgotten_and_their_readers_stop(self) -> None:
        store = RunStore(replay_ttl=60)
        store.create("old", thread_id="t")
        store.sink(_status("old", "t"))
        store.sink(_done("old", 2, "t"))
        store.create("live", thread_id="t")
        store.sink(_status("live", "t"))
        old_log = store.get("old").log
        ended_at = store.get("old").ended_at
        assert ended_at is not None

        assert store.evict_expired(now=ended_at + 59) == 0
        assert store.evict_expired(now=ended_at + 61) == 1

        assert "old" not in store
        assert "live" in store
        assert old_log.closed
        assert [log.run_id for log in store.thread_logs(store.thread("t"))] == ["live"]

    def test_max_runs_forgets_the_oldest_finished_run_first(self) -> None:
        store = RunStore(max_runs=3)
        store.create("active")
        store.sink(_status("active"))
        for run_id in ("f1", "f2"):
            store.create(run_id)
            store.sink(_status(run_id))
            store.sink(_done(run_id, 2))

        store.create("new")

        assert "active" in store
        assert "f1" not in store
        assert {"f2", "new"} <= {r for r in ("f2", "new") if r in store}
        assert len(store) == 3

    @pytest.mark.asyncio
    async def test_the_sweeper_evicts_in_the_background(self) -> None:
        store = RunStore(replay_ttl=0.05)
        await store.start()
        try:
            store.sink(_status("x"))
            store.sink(_done("x", 2))
            await async_wait_for(lambda: "x" not in store, what="the sweeper to evict the run")
        finally:
            await store.close()


# -- RunManager (real handler, real demo graph) ---------------------------------------------------


@pytest.mark.asyncio
async def test_a_run_streams_every_event_into_the_store(research_team: ModuleType) -> None:
    async with _runtime(research_team) as runtime:
        handle = runtime.runs.start("team", TASK, metadata={"user": "u1"})
        assert handle.record.status in ("pending", "running")
        assert await handle.task == "success"

        events = _events(handle.record)
        events.check_invariants()
        assert handle.record.status == "success"
        assert {"supervisor", "research/researcher", "research/tools", "writer"} <= set(events.agents())
        assert all(e.thread_id == handle.thread_id for e in events)
        assert runtime.runs.active == 0
        assert runtime.runs.finished == {"success": 1}


@pytest.mark.asyncio
async def test_a_failing_graph_ends_in_error_with_the_traceback_only_in_the_log(
    research_team: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="kiki_events")
    async with _runtime(research_team) as runtime:
        handle = runtime.runs.start("team", _user("Compare queues, then crash"))
        assert await handle.task == "error"

        events = _events(handle.record)
        events.check_invariants()
        assert events.done.status == "error"
        errors = events.of_type("error")
        assert len(errors) == 1
        assert "hunter2" not in errors[0].model_dump_json()
        assert handle.record.status == "error"
        # The server keeps serving.
        again = runtime.runs.start("team", TASK)
        assert await again.task == "success"

    assert "Traceback (most recent call last)" in caplog.text
    assert "_finish_writer" in caplog.text
    assert "hunter2" not in caplog.text


@pytest.mark.asyncio
async def test_cancel_ends_a_live_run_with_done_cancelled(research_team: ModuleType) -> None:
    gate = Gate()
    async with _runtime(research_team, gate) as runtime:
        handle = runtime.runs.start("gated", TASK)
        await async_wait_for(gate.reached.is_set, what="the run to reach the gate")

        record = await runtime.runs.cancel_and_wait(handle.run_id)

        assert record.status == "cancelled"
        events = _events(record)
        events.check_invariants()
        assert events.done.status == "cancelled"
        # Cancelling an ended run changes nothing.
        assert runtime.runs.cancel(handle.run_id).status == "cancelled"
        assert len(_events(record)) == len(events)


@pytest.mark.asyncio
async def test_a_run_cancelled_before_it_started_still_gets_started_and_done(research_team: ModuleType) -> None:
    async with _runtime(research_team) as runtime:
        handle = runtime.runs.start("team", TASK)
        handle.task.cancel()
        await asyncio.gather(handle.task, return_exceptions=True)

        events = _events(handle.record)
        events.check_invariants()
        assert [e.type for e in events] == ["status", "done"]
        assert events.done.status == "cancelled"


@pytest.mark.asyncio
async def test_start_refusals(research_team: ModuleType) -> None:
    gate = Gate()
    async with _runtime(research_team, gate, max_active=1) as runtime:
        with pytest.raises(UnknownGraphError, match="no graph named 'nope'"):
            runtime.runs.start("nope", TASK)
        first = runtime.runs.start("gated", TASK, thread_id="t-1", principal="alice")
        with pytest.raises(RunLimitError, match="max_active"):
            runtime.runs.start("team", TASK)
        gate.open()
        await first.task
        with pytest.raises(RunNotFoundError, match="thread 't-1' not found"):
            runtime.runs.start("team", TASK, thread_id="t-1", principal="bob")
        with pytest.raises(RunNotFoundError):
            runtime.runs.cancel(first.run_id, "bob")
        second = runtime.runs.start("team", TASK, thread_id="t-1", principal="alice")
        await second.task
        assert [log.run_id for log in runtime.store.thread_logs(runtime.store.thread("t-1", "alice"))] == [
            first.run_id,
            second.run_id,
        ]


@pytest.mark.asyncio
async def test_shutdown_cancels_what_outlives_the_grace_period(research_team: ModuleType) -> None:
    gate = Gate()
    runtime = _runtime(research_team, gate, shutdown_grace=0.05)
    async with runtime:
        parked = runtime.runs.start("gated", TASK)
        quick = runtime.runs.start("team", TASK)
        await async_wait_for(gate.reached.is_set, what="the run to reach the gate")
        await runtime.runs.shutdown()
        with pytest.raises(RunError, match="shutting down"):
            runtime.runs.start("team", TASK)

        assert parked.record.status == "cancelled"
        assert quick.record.status == "success"
        assert parked.task.done()
        assert runtime.runs.active == 0
    assert runtime.state == "closed"


@pytest.mark.asyncio
async def test_the_runtime_cannot_start_twice(research_team: ModuleType) -> None:
    runtime = _runtime(research_team)
    async with runtime:
        with pytest.raises(KikiEventsError, match="cannot be started: it is running"):
            await runtime.start()
    with pytest.raises(KikiEventsError, match="cannot be started: it is closed"):
        await runtime.start()


def test_events_are_stream_events() -> None:
    # The store keeps the handler's own objects: nothing is re-encoded to store it.
    event: StreamEvent = _token("r", 1)
    log = RunLog("r", 16)
    log.append(event)
    assert log.read(0, 1)[0][0].event is event
