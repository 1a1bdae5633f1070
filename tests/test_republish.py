"""Stored events published on the bus again, marked as replayed: only the sinks and subscriptions
that ask for replayed events see them; the event store, the run store and the metrics do not."""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from kiki_events.config import Settings
from kiki_events.core.bus import Subscription
from kiki_events.errors import InvalidArgumentError, RunNotFoundError
from kiki_events.events import StreamEvent
from kiki_events.history import ANYONE, republish
from kiki_events.runtime import KikiRuntime
from kiki_events.sinks.history import HistorySink
from kiki_events.topics import topic_of

TASK = {"messages": [{"role": "user", "content": "Research event stores"}]}


def writer_of(runtime: KikiRuntime) -> Any:
    return next(s for s in runtime.sinks.sinks if isinstance(s, HistorySink)).writer


async def queued(sub: Subscription) -> list[StreamEvent]:
    return await sub.get_batch(100_000) if len(sub) else []


def counters(runtime: KikiRuntime) -> list[str]:
    """The metric lines that count runs and published events."""
    text = runtime.metrics_text().decode()
    return [line for line in text.splitlines() if line.startswith(("kiki_runs_total", "kiki_events_published_total"))]


@pytest.mark.asyncio
async def test_republished_events_reach_only_who_asks_and_are_neither_stored_nor_counted_again(
    tmp_path: Path, research_team: ModuleType
) -> None:
    settings = Settings.from_mapping(
        {"node": "n1", "store": {"enabled": True, "path": str(tmp_path / "h.sqlite"), "flush_interval": "2ms"}}
    )
    async with KikiRuntime(settings, graphs={"team": research_team.build_graph(token_delay=0.0)}) as runtime:
        history, bus = runtime.history, runtime.bus
        assert history is not None
        handle = await runtime.start_run("team", TASK, thread_id="t1", principal="alice")
        assert await handle.task == "success"
        writer = writer_of(runtime)
        assert await writer.flush(10)
        stored = (await history.events("alice", run_id=handle.run_id, limit=10_000)).events
        runtime.store.forget(handle.run_id)  # left memory, as after its replay_ttl
        written, before = writer.written, counters(runtime)
        assert before and stored[-1].type == "done"

        live = bus.subscribe()
        both = bus.subscribe(run_id=handle.run_id, replayed=True)
        only = bus.subscribe(replayed="only")
        tools = bus.subscribe(topics=["agent:tool_call", "agent:tool_result"], replayed="only")
        tokens = bus.subscribe(types="token", replayed="only")
        sink: list[StreamEvent] = []
        remove = bus.add_sink(sink.append, replayed=True)

        count = await republish(history, bus, "alice", run_id=handle.run_id, page=50)

        assert count == len(stored) == bus.stats.replayed
        assert await queued(only) == await queued(both) == sink == stored
        assert await queued(tokens) == [e for e in stored if e.type == "token"] != []
        assert (
            await queued(tools) == [e for e in stored if topic_of(e) in ("agent:tool_call", "agent:tool_result")] != []
        )
        assert await queued(live) == []
        assert await writer.flush(10)
        assert writer.written == written  # the history sink skipped them
        assert (await history.events("alice", run_id=handle.run_id, limit=10_000)).events == stored
        assert (await history.run(handle.run_id, "alice")).events == len(stored)
        assert runtime.store.peek(handle.run_id) is None  # not taken for a new run
        assert counters(runtime) == before  # nor counted as one

        # A time range (the seeds' "replay the last day of these types"), a thread, and the rules.
        done = await republish(history, bus, "alice", types=["done"], since=time.time() - 86400)
        assert done == 1 and await queued(only) == [stored[-1]]
        assert await republish(history, bus, "alice", thread_id="t1") == len(stored)
        assert await republish(history, bus, "bob", types=["done"]) == 0
        with pytest.raises(RunNotFoundError):
            await republish(history, bus, "bob", run_id=handle.run_id)
        with pytest.raises(InvalidArgumentError):
            await republish(history, bus, ANYONE, run_id=handle.run_id, since=0.0)
        with pytest.raises(InvalidArgumentError):
            bus.subscribe(replayed="sometimes")  # type: ignore[arg-type]
        remove()
        for sub in (live, both, only, tools, tokens):
            sub.close()
