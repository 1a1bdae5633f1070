"""``kiki-events tail``: events of a deployment, printed live.

``--run``: a node (a runtime in this process) runs a run through a private Redis; the
command, in a process of its own, prints the run from its start wherever it began
following, and exits after ``done`` — in both Redis modes. ``--thread`` and
``--topic``: a producer transport (what a node's bridge uses) publishes frames; the
tail prints them.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_asyncio
import yaml

from kiki_events.cli import main
from kiki_events.cli.tail import format_event, tail
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
from kiki_events.runtime import KikiRuntime
from kiki_events.runtime.build import create_transport
from kiki_events.transports import RunInfo, Transport
from tests.processes import dying_with_us
from tests.redis_server import free_port, wait_subscribed
from tests.servers import Gate, async_wait_for, gated_graph

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
    notice = StatusEvent(run_id="r", seq=0, ts=events[0].ts, status="missed", detail="events 4-6 were lost")
    assert format_event(notice) == f"{clock}.250 r -- missed: events 4-6 were lost"


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
        await asyncio.wait_for(ready.wait(), 30)
        await subscribed(producer, f"{key_prefix}lifecycle", listeners=2)  # the producer's own, and the tail's
        await publish(producer, run_events())
        await async_wait_for(lambda: len(out.getvalue().splitlines()) >= 3, 30, "three lifecycle lines")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

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
        await asyncio.wait_for(ready.wait(), 30)
        producer.register(RunInfo(events[0].run_id, node="producer", thread_id="t-9", graph="team"), announce=True)
        assert await producer.flush()
        await subscribed(producer, f"{key_prefix}run:{{{events[0].run_id}}}")
        await publish(producer, events)
        await async_wait_for(lambda: len(out.getvalue().splitlines()) >= len(events), 30, "the run's lines")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

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
        await asyncio.wait_for(ready.wait(), 30)
        # The delegate is announced (and publishes) first; the tail would follow it before the parent.
        marked = RunInfo(delegate[0].run_id, node="producer", thread_id="t-9", relayed_into=parent[0].run_id)
        producer.register(marked, announce=True)
        assert await producer.flush()
        producer.register(RunInfo(parent[0].run_id, node="producer", thread_id="t-9", graph="team"), announce=True)
        assert await producer.flush()
        await subscribed(producer, f"{key_prefix}run:{{{parent[0].run_id}}}")
        await publish(producer, delegate)
        await publish(producer, parent)
        await async_wait_for(lambda: len(out.getvalue().splitlines()) >= len(parent), 30, "the run's lines")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    assert out.getvalue().splitlines() == [format_event(e) for e in parent]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(
        dying_with_us([sys.executable, "-m", "kiki_events.cli", "tail", *args]),
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


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


# -- --run: a real node runs the run; the command follows it ------------------------------------


@dataclass
class NodeA:
    runtime: KikiRuntime
    gate: Gate
    config: Path
    mode: str


def _gate_first(gate: Gate, research_team: ModuleType) -> Any:
    """``hold`` (waits at ``gate``) → the research team: the run is parked before its work."""
    from langgraph.graph import END, START, MessagesState, StateGraph

    async def hold(state: MessagesState) -> dict[str, Any]:
        await gate.wait()
        return {}

    builder = StateGraph(MessagesState)
    builder.add_node("hold", hold)
    builder.add_node("team", research_team.build_graph(token_delay=0.0))
    builder.add_edge(START, "hold")
    builder.add_edge("hold", "team")
    builder.add_edge("team", END)
    return builder.compile(name="gate_first")


def _yaml(redis_url: str, prefix: str, mode: str, node: str | None = None) -> str:
    return (
        (f"node: {node}\n" if node else "")
        + f"eventbus:\n  provider: redis\n  redis:\n    url: {redis_url}\n"
        + f"    channel_prefix: '{prefix}'\n    mode: {mode}\n"
    )


@pytest_asyncio.fixture(params=MODES)
async def node_a(
    request: pytest.FixtureRequest, redis_url: str, key_prefix: str, research_team: ModuleType, tmp_path: Path
) -> AsyncIterator[NodeA]:
    mode = request.param
    gate = Gate()
    settings = Settings.model_validate(yaml.safe_load(_yaml(redis_url, key_prefix, mode, node="node-a")))
    graphs = {"gated": gated_graph(research_team, gate), "gate_first": _gate_first(gate, research_team)}
    config = tmp_path / "tail.yaml"
    config.write_text(_yaml(redis_url, key_prefix, mode))
    runtime = KikiRuntime(settings, graphs=graphs)
    async with runtime:
        assert await runtime.connected(10)
        try:
            yield NodeA(runtime, gate, config, mode)
        finally:
            gate.open()


def events_of(runtime: KikiRuntime, run_id: str) -> list[StreamEvent]:
    record = runtime.store.peek(run_id)
    assert record is not None
    frames, _ = record.log.read(0, 100_000)
    return [frame.event for frame in frames]


class TailProcess:
    """``kiki-events tail`` in a process of its own; its stdout lines are collected as they come."""

    def __init__(self, *args: str) -> None:
        self.process = _cli(*args)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def printed_seq(self, seq: int) -> bool:
        if self.process.poll() is not None and not self._reader.is_alive():
            raise AssertionError(f"the tail exited with {self.process.returncode}: {self.process.stderr!r}")
        return any(json.loads(line).get("seq") == seq for line in list(self.lines))

    def finish(self, timeout: float = 30) -> tuple[int, list[str], str]:
        try:
            self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        self._reader.join(10)
        assert self.process.stdout is not None and self.process.stderr is not None
        with self.process.stdout, self.process.stderr:
            return self.process.returncode, self.lines, self.process.stderr.read()


TASK = {"messages": [("user", "Compare Redis streams and pub/sub")]}


@pytest.mark.asyncio
@pytest.mark.parametrize("when", ["before its work", "mid-run", "after its end"])
async def test_tail_of_a_run_prints_it_whole_from_its_start_and_exits_after_done(node_a: NodeA, when: str) -> None:
    runtime, gate = node_a.runtime, node_a.gate
    handle = runtime.runs.start("gate_first" if when == "before its work" else "gated", TASK)
    if when == "after its end":
        gate.open()
        await asyncio.wait_for(handle.task, 30)
    else:
        await async_wait_for(gate.reached.is_set, 30, "the run to park at its gate")

    tail = TailProcess("--config", str(node_a.config), "--run", handle.run_id, "--json")
    try:
        if when != "after its end":
            so_far = events_of(runtime, handle.run_id)[-1].seq
            await async_wait_for(lambda: tail.printed_seq(so_far), 30, f"the tail to print seq {so_far}")
            gate.open()
        code, lines, err = await asyncio.to_thread(tail.finish)
    finally:
        gate.open()
        if tail.process.poll() is None:
            tail.process.kill()

    assert code == 0, err
    assert "Traceback" not in err
    printed = [decode(line) for line in lines]
    assert printed == events_of(runtime, handle.run_id)
    assert [e.seq for e in printed] == list(range(1, len(printed) + 1))
    assert printed[-1].type == "done"


@pytest.mark.asyncio
async def test_tail_after_a_seq_prints_the_rest_as_text_lines(node_a: NodeA) -> None:
    node_a.gate.open()
    handle = node_a.runtime.runs.start("gated", TASK)
    await asyncio.wait_for(handle.task, 30)
    events = events_of(node_a.runtime, handle.run_id)

    tail = TailProcess("--config", str(node_a.config), "--run", handle.run_id, "--after", "5")
    code, lines, err = await asyncio.to_thread(tail.finish)

    assert code == 0, err
    assert lines == [format_event(e) for e in events[5:]]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("run_id", ["no-such-run", "-K9xq0VbS9qg3yN2s1wq2A"])  # ids may begin with "-"
def test_tail_of_an_unknown_run_exits_2_with_one_line(
    redis_url: str, key_prefix: str, tmp_path: Path, mode: str, run_id: str
) -> None:
    config = tmp_path / "tail.yaml"
    config.write_text(_yaml(redis_url, key_prefix, mode))

    tail = TailProcess("--config", str(config), "--run", run_id)
    code, lines, err = tail.finish()

    assert code == 2
    assert lines == []
    assert err.splitlines() == [f"kiki-events: error: run {run_id!r} not found (no node of this deployment knows it)"]


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_a_run_with_events_relayed_from_an_agent_on_another_node_is_printed_with_nothing_skipped_silently(
    redis_url: str, key_prefix: str, research_team: ModuleType, tmp_path: Path, mode: str
) -> None:
    """Node A's research team hands its writer to node B, whose events are relayed into A's run."""
    from kiki_events.handoff import remote_agent_node

    def settings(node: str, **extra: Any) -> Settings:
        return Settings.model_validate({**yaml.safe_load(_yaml(redis_url, key_prefix, mode, node=node)), **extra})

    team = research_team.build_graph(writer=remote_agent_node("writer"))
    node_a = KikiRuntime(settings("node-a"), graphs={"team": team})
    node_b = KikiRuntime(
        settings("node-b", handoff={"serve": ["writer"]}), graphs={"writer": research_team.build_writer_graph()}
    )
    config = tmp_path / "tail.yaml"
    config.write_text(_yaml(redis_url, key_prefix, mode))
    async with node_a, node_b:
        assert await node_a.connected(10) and await node_b.connected(10)
        handle = node_a.runs.start("team", TASK)
        await asyncio.wait_for(handle.task, 60)
        events = events_of(node_a, handle.run_id)
        assert any(e.agent == "writer/writer" for e in events)  # relayed from node B

        tail = TailProcess("--config", str(config), f"--run={handle.run_id}", "--json")
        code, lines, err = await asyncio.to_thread(tail.finish, 60)

    assert code == 0, err
    printed = [decode(line) for line in lines]
    assert printed[-1].type == "done"
    by_seq = {e.seq: e for e in events}
    last = 0
    for event in printed:
        if event.seq == 0:  # a notice: what it announces as missing is not printed
            assert isinstance(event, StatusEvent) and event.status in ("missed", "gap")
            last = -1
            continue
        assert event == by_seq[event.seq]
        assert event.seq == last + 1 or (last == -1 and event.seq > 0), f"seq {event.seq} after {last}, no notice"
        last = event.seq


def test_after_without_run_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["tail", "--after", "3"])

    assert exited.value.code == 2
    assert "--after: only with --run" in capsys.readouterr().err
