"""``kiki-events tail``: events published through the bridge's transport, printed live.

A producer transport (what a node's bridge uses) publishes the events of a run to
a private Redis; the tail prints them, in both Redis modes.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from kiki_events.cli import main
from kiki_events.codec import decode, encode
from kiki_events.config import Settings
from kiki_events.events import (
    AgentLifecycleEvent,
    DoneEvent,
    StatusEvent,
    StreamEvent,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
)
from kiki_events.tail import format_event, tail
from kiki_events.transports import RunInfo, Transport, create_transport
from tests.redis_server import free_port, wait_subscribed
from tests.servers import async_wait_for

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parent.parent
MODES = ["pubsub", "streams"]


def settings_for(redis_url: str, prefix: str, mode: str = "pubsub") -> Settings:
    return Settings.model_validate(
        {"eventbus": {"provider": "redis", "redis": {"url": redis_url, "channel_prefix": prefix, "mode": mode}}}
    )


def run_events(run_id: str = "RUNtail0000000000000001", thread_id: str = "t-tail") -> list[StreamEvent]:
    env: dict[str, Any] = {"run_id": run_id, "thread_id": thread_id, "node": "producer", "ts": 1_700_000_000.25}
    return [
        StatusEvent(seq=1, status="started", graph="team", **env),
        AgentLifecycleEvent(seq=2, phase="started", agent="writer", **env),
        TokenEvent(seq=3, message_id="m1", text="Hello", agent="writer", **env),
        TokenEvent(seq=4, message_id="m1", text=" world\n", agent="writer", **env),
        ToolCallEvent(seq=5, phase="start", tool_call_id="c1", name="search", agent="writer", **env),
        ToolResultEvent(seq=6, tool_call_id="c1", name="search", output="found it", agent="writer", **env),
        AgentLifecycleEvent(seq=7, phase="completed", agent="writer", duration_s=0.5, **env),
        DoneEvent(seq=8, status="success", duration_s=1.25, **env),
    ]


@pytest.fixture(autouse=True)
def _collect_transport_sockets() -> Iterator[None]:
    """Collect what a closed transport leaves behind here, not in a later test.

    A Redis transport closed soon after it started can leave a connection of its
    spare-connection warm-up to the garbage collector (a transport issue, tracked
    separately); the tail itself closes everything it opens.
    """
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


class _Quiet:
    def on_frame(self, message: Any) -> None: ...
    def on_control(self, message: Any) -> None: ...
    def on_connected(self, resumed: bool) -> None: ...


@pytest_asyncio.fixture(params=MODES)
async def producer_any_mode(
    request: pytest.FixtureRequest, redis_url: str, key_prefix: str
) -> AsyncIterator[Transport]:
    """A producer in each Redis mode (for the command, which runs in its own process)."""
    transport = create_transport(settings_for(redis_url, key_prefix, request.param), node="producer")
    assert transport is not None
    await transport.start(_Quiet())
    yield transport
    await transport.close()


# In-process tails run in pub/sub mode: closing a streams transport while its reader
# waits in XREAD leaves a socket for the garbage collector (reported to the bridge's
# owner); the command test below covers streams mode in a process of its own.
@pytest_asyncio.fixture(params=["pubsub"])
async def producer(request: pytest.FixtureRequest, redis_url: str, key_prefix: str) -> AsyncIterator[Transport]:
    transport = create_transport(settings_for(redis_url, key_prefix, request.param), node="producer")
    assert transport is not None
    await transport.start(_Quiet())
    yield transport
    await transport.close()


async def subscribed(producer: Transport, channel_or_stream: str, listeners: int = 1) -> None:
    """Wait until ``listeners`` connections listen (pub/sub) — streams keep what is sent anyway."""
    if producer.name != "redis-pubsub":
        return
    await wait_subscribed(producer.redis, channel_or_stream, listeners)  # type: ignore[attr-defined]


async def publish(producer: Transport, events: list[StreamEvent]) -> None:
    for event in events:
        assert producer.publish(event, encode(event))
    assert await producer.flush()


def test_a_line_shows_time_run_seq_agent_type_and_a_short_payload() -> None:
    events = run_events()
    lines = [format_event(e) for e in events]

    clock = time.strftime("%H:%M:%S", time.localtime(events[0].ts))
    assert lines[0] == f"{clock}.250 RUNtail0000000000000001:1 - status started team"
    assert lines[2].endswith("RUNtail0000000000000001:3 writer token m1 'Hello'")
    assert lines[3].endswith("token m1 ' world\\\\n'")
    assert lines[4].endswith("writer tool_call start c1 search")
    assert lines[5].endswith("writer tool_result c1 search → found it")
    assert lines[6].endswith("writer agent_lifecycle completed 0.500s")
    assert lines[7].endswith("- done success 1.250s tokens in=0 out=0")
    long = TokenEvent(run_id="r", seq=1, ts=0, message_id="m", text="x" * 500)
    assert len(format_event(long)) < 120


@pytest.mark.asyncio
@pytest.mark.parametrize("as_json", [False, True])
async def test_tail_of_a_run_prints_its_events_and_ends_after_done(
    producer: Transport, redis_url: str, key_prefix: str, as_json: bool
) -> None:
    out = io.StringIO()
    events = run_events()
    mode = "streams" if producer.name == "redis-streams" else "pubsub"
    ready = asyncio.Event()
    task = asyncio.ensure_future(
        tail(settings_for(redis_url, key_prefix, mode), run=events[0].run_id, as_json=as_json, out=out, ready=ready)
    )
    await asyncio.wait_for(ready.wait(), 10)
    await publish(producer, events)

    assert await asyncio.wait_for(task, 10) == 0
    lines = out.getvalue().splitlines()
    if as_json:
        assert [decode(line) for line in lines] == events
    else:
        assert lines == [format_event(e) for e in events]


@pytest.mark.asyncio
async def test_tail_of_a_topic_prints_only_matching_lifecycle_events(
    producer: Transport, redis_url: str, key_prefix: str
) -> None:
    out = io.StringIO()
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.ensure_future(
        tail(settings_for(redis_url, key_prefix), topic="agent:*", out=out, ready=ready, stop=stop)
    )
    try:
        await asyncio.wait_for(ready.wait(), 10)
        await subscribed(producer, f"{key_prefix}lifecycle", listeners=2)  # the producer's own, and the tail's
        await publish(producer, run_events())
        await async_wait_for(lambda: len(out.getvalue().splitlines()) >= 3, 5, "three lifecycle lines")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)

    lines = out.getvalue().splitlines()
    # agent:started, agent:tool_result, agent:completed; tokens and a tool call's start have no topic.
    assert [line.split()[3] for line in lines] == ["agent_lifecycle", "tool_result", "agent_lifecycle"]
    assert "started" in lines[0] and "completed" in lines[2]


@pytest.mark.asyncio
async def test_tail_of_a_thread_follows_the_runs_that_start_on_it(
    producer: Transport, redis_url: str, key_prefix: str
) -> None:
    out = io.StringIO()
    events = run_events(thread_id="t-9")
    mode = "streams" if producer.name == "redis-streams" else "pubsub"
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.ensure_future(
        tail(settings_for(redis_url, key_prefix, mode), thread="t-9", out=out, ready=ready, stop=stop)
    )
    try:
        await asyncio.wait_for(ready.wait(), 10)
        producer.register(RunInfo(events[0].run_id, node="producer", thread_id="t-9", graph="team"), announce=True)
        assert await producer.flush()
        await subscribed(producer, f"{key_prefix}run:{{{events[0].run_id}}}")
        await publish(producer, events)
        await async_wait_for(lambda: len(out.getvalue().splitlines()) >= len(events), 5, "the run's lines")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)

    assert out.getvalue().splitlines() == [format_event(e) for e in events]


@pytest.mark.asyncio
async def test_tail_of_a_thread_shows_a_relayed_delegate_only_inside_the_run_relaying_it(
    producer: Transport, redis_url: str, key_prefix: str
) -> None:
    out = io.StringIO()
    parent = run_events(thread_id="t-9")
    delegate = run_events("RUNtail0000000000000002", thread_id="t-9")
    mode = "streams" if producer.name == "redis-streams" else "pubsub"
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.ensure_future(
        tail(settings_for(redis_url, key_prefix, mode), thread="t-9", out=out, ready=ready, stop=stop)
    )
    try:
        await asyncio.wait_for(ready.wait(), 10)
        # The delegate is announced (and publishes) first; the tail would follow it before the parent.
        marked = RunInfo(delegate[0].run_id, node="producer", thread_id="t-9", relayed_into=parent[0].run_id)
        producer.register(marked, announce=True)
        assert await producer.flush()
        producer.register(RunInfo(parent[0].run_id, node="producer", thread_id="t-9", graph="team"), announce=True)
        assert await producer.flush()
        await subscribed(producer, f"{key_prefix}run:{{{parent[0].run_id}}}")
        await publish(producer, delegate)
        await publish(producer, parent)
        await async_wait_for(lambda: len(out.getvalue().splitlines()) >= len(parent), 5, "the run's lines")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)

    assert out.getvalue().splitlines() == [format_event(e) for e in parent]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "kiki_events.cli", "tail", *args],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.asyncio
async def test_the_command_prints_json_lines_of_a_run(
    producer_any_mode: Transport, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    producer = producer_any_mode
    mode = "streams" if producer.name == "redis-streams" else "pubsub"
    config = tmp_path / "kiki.yaml"
    config.write_text(
        f"eventbus:\n  provider: redis\n  redis:\n    url: {redis_url}\n"
        f"    channel_prefix: '{key_prefix}'\n    mode: {mode}\n"
    )
    events = run_events()
    process = _cli("--config", str(config), "--run", events[0].run_id, "--json")
    try:
        await subscribed(producer, f"{key_prefix}run:{{{events[0].run_id}}}")  # streams: what is stored is read
        await publish(producer, events)
        out, err = await asyncio.to_thread(process.communicate, timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 0, err
    assert [decode(line) for line in out.splitlines()] == events
    assert "Traceback" not in err


def test_a_config_without_redis_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "kiki.yaml"
    config.write_text("eventbus:\n  provider: memory\n")

    assert main(["tail", "--config", str(config)]) == 2

    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"kiki-events: error: {config}: tail reads events from Redis")
    assert "provider is 'memory'" in lines[0]


def test_unreachable_redis_exits_2_with_one_line_and_no_secret(tmp_path: Path) -> None:
    config = tmp_path / "kiki.yaml"
    port = free_port()  # nothing listens there
    config.write_text(f"eventbus:\n  provider: redis\n  redis:\n    url: redis://:s3cret-pw@127.0.0.1:{port}/0\n")

    started = time.monotonic()
    process = _cli("--config", str(config))
    out, err = process.communicate(timeout=30)

    assert process.returncode == 2
    assert time.monotonic() - started < 15
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"kiki-events: error: {config}: cannot reach Redis at redis://")
    assert "s3cret-pw" not in err
    assert out == ""


def test_bad_arguments_are_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["tail", "--run", "a", "--thread", "b"])

    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_json_lines_are_the_compact_codec(redis_url: str) -> None:
    event = run_events()[2]
    assert json.loads(encode(event)) == json.loads(event.model_dump_json(exclude_none=True))
