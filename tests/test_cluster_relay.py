"""A remote agent's work as the clients of every node see it.

The research team of the README's two-node demo runs on node A; its writer step is
handed to the agent ``writer`` that node B serves, and relayed into the team's run.
Every node is a real ``kiki-events serve`` process on one private Redis, reached over
HTTP. The relayed writer is part of A's run for every node, live (A publishes it like
its own events); A's usage includes what the writer used; a thread shows the writer
once, inside the team's run, never as a run of its own.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from kiki_events import CustomEvent, SSEDecoder, StreamEvent, TokenEvent
from kiki_events.testing import capture_run
from kiki_events.transports.wire import KIND_BATCH, unpack
from tests.conftest import load_demo
from tests.processes import ServeProcess
from tests.redis_server import RedisServer
from tests.servers import SSEFrame, iter_frames, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.redis]

ROOT = Path(__file__).resolve().parent.parent
SPLIT = ROOT / "agents" / "research_team_split.py"
TASK = {"graph": "research_team", "message": "Compare Redis streams and pub/sub"}
TIMEOUT = 60.0
WRITER = "writer/writer"


class Node(ServeProcess):
    """One ``kiki-events serve`` process running the team, serving the writer, or both."""

    def __init__(
        self, tmp: Path, name: str, redis_url: str, prefix: str, mode: str, *, team: bool, writer: bool
    ) -> None:
        graphs = []
        if team:
            graphs.append(f"  research_team: {SPLIT}:graph\n")
        if writer:
            graphs.append(f"  writer: {SPLIT}:writer_graph\n")
        config = tmp / f"{name}.yaml"
        config.write_text(
            f"node: {name}\n"
            "eventbus:\n"
            "  provider: redis\n"
            f"  redis: {{url: '{redis_url}', channel_prefix: '{prefix}', mode: {mode}}}\n"
            "  subscribe: {interest_linger: 1s}\n"
            "runs: {shutdown_grace: 1s}\n"
            f"handoff: {{serve: [{'writer' if writer else ''}], timeout: 60s}}\n"
            "logging: {level: WARNING}\n"
            "graphs:\n" + "".join(graphs)
        )
        # Slow enough that the writer is still streaming when B's client first hears of it.
        super().__init__(name, config, tmp / f"{name}.log", cwd=tmp, env={"KIKI_DEMO_TOKEN_DELAY": "0.01"})

    def status(self, run_id: str) -> str:
        status: str = httpx.get(f"{self.url}/runs/{run_id}", timeout=10).json()["status"]
        return status


@pytest.fixture
def start_nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., list[Node]]]:
    """``start(mode, split=True)``: nodes A (team) and B (writer), or one node running both."""
    prefix = f"kiki-relay-{os.getpid()}-{time.monotonic_ns()}:"
    started: list[Node] = []

    def start(mode: str, *, split: bool = True) -> list[Node]:
        specs = [("node-a", True, False), ("node-b", False, True)] if split else [("node-a", True, True)]
        nodes = [
            Node(tmp_path, name, redis_server.url, prefix, mode, team=team, writer=writer)
            for name, team, writer in specs
        ]
        started.extend(nodes)
        for node in nodes:
            node.wait_up()
        return nodes

    start.prefix = prefix  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        logs = "".join(node.stop() for node in started)
        assert "Traceback" not in logs, logs


class Reader(threading.Thread):
    """Reads one SSE stream in the background, like a browser tab."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.frames: list[SSEFrame] = []
        self.decoded: list[StreamEvent] = []
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self.start()

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, timeout=TIMEOUT) as response:
                assert response.status_code == 200, response.status_code
                decoder = SSEDecoder()
                for frame in iter_frames(response):
                    self.frames.append(frame)
                    if frame.id is not None:
                        self.decoded.append(decoder.decode(frame.id, frame.event or "", frame.data or ""))
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.finished.set()

    def events(self) -> list[SSEFrame]:
        return [f for f in self.frames if f.id is not None]

    def wait(self) -> Reader:
        assert self.finished.wait(TIMEOUT), f"the stream {self.url} did not end"
        assert self.error is None, repr(self.error)
        return self


class RunChannels(threading.Thread):
    """Every run frame published on Redis pub/sub under a prefix, as ``(sender, run_id, seqs)``."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.pubsub.psubscribe(f"{prefix}run:*")
        assert self.pubsub.get_message(timeout=10) is not None  # the subscription is in place
        self.frames: list[tuple[str, str | None, list[int]]] = []
        self.stopping = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            message = self.pubsub.get_message(timeout=0.1)
            if message is not None and message["type"] == "pmessage":
                frame = unpack(message["data"], max_bytes=1 << 24)
                if frame.kind == KIND_BATCH:
                    self.frames.append((frame.sender, frame.run_id, [e.seq for e in frame.events]))

    def close(self) -> None:
        self.stopping.set()
        self.join(10)
        self.pubsub.close()
        self.client.close()


def stream_frames(url: str, prefix: str, run_id: str) -> list[tuple[str, str | None, list[int]]]:
    """The run frames a streams-mode node appended to the run's stream."""
    client = redis.Redis.from_url(url)
    try:
        entries = client.xrange(f"{prefix}stream:{{{run_id}}}")
    finally:
        client.close()
    frames = [unpack(fields[b"d"], max_bytes=1 << 24) for _, fields in entries]
    return [(f.sender, f.run_id, [e.seq for e in f.events]) for f in frames if f.kind == KIND_BATCH]


def start_run(node: Node, **extra: Any) -> str:
    response = httpx.post(f"{node.url}/runs", json={**TASK, **extra}, timeout=10)
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def full_run(node: Node, run_id: str) -> list[SSEFrame]:
    """The whole run as its own node serves it, once it ended."""
    wait_for(lambda: node.status(run_id) not in ("pending", "running"), TIMEOUT, f"run {run_id} to end")
    return Reader(f"{node.url}/runs/{run_id}/stream").wait().events()


def decoded(frames: list[SSEFrame]) -> list[StreamEvent]:
    decoder = SSEDecoder()
    return [decoder.decode(f.id or "", f.event or "", f.data or "") for f in frames]


def is_writer_token(event: StreamEvent) -> bool:
    return isinstance(event, TokenEvent) and event.agent == WRITER


# -- live everywhere ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["pubsub", "streams"])
def test_a_remote_writer_streams_live_to_a_client_of_another_node(
    start_nodes: Callable[..., list[Node]], redis_server: RedisServer, mode: str
) -> None:
    a, b = start_nodes(mode)
    prefix: str = start_nodes.prefix  # type: ignore[attr-defined]
    channels = RunChannels(redis_server.url, prefix) if mode == "pubsub" else None
    try:
        run_id = start_run(a)
        watching = Reader(f"{b.url}/runs/{run_id}/stream")
        wait_for(lambda: any(is_writer_token(e) for e in watching.decoded), TIMEOUT, "a writer token on B")
        # B hears the writer while A's run (and the writer's own run on B) still go on.
        assert a.status(run_id) == "running"
        watching.wait()
        on_a = full_run(a, run_id)
        if channels is not None:
            wait_for(lambda: any(r == run_id and on_a[-1].seq in s for _, r, s in channels.frames), TIMEOUT)
    finally:
        if channels is not None:
            channels.close()

    assert [f.raw for f in watching.events()] == [f.raw for f in on_a]
    events = decoded(on_a)
    assert sum(1 for e in events if is_writer_token(e)) > 20
    steps = [e for e in events if e.type == "agent_lifecycle" and e.agent == WRITER]
    assert [e.node for e in steps] == ["node-b", "node-b"]  # made on B, part of A's run
    gaps = b.bridge()["gaps"]
    assert (gaps["seen"], gaps["repaired"], gaps["missed"]) == (0, 0, 0)
    # A published its whole run, relayed events included, each event once; B none of it.
    published = channels.frames if channels is not None else stream_frames(redis_server.url, prefix, run_id)
    of_run = [(sender, seqs) for sender, r, seqs in published if r == run_id]
    assert {sender for sender, _ in of_run} == {"node-a"}
    assert sorted(seq for _, seqs in of_run for seq in seqs) == [f.seq for f in on_a]


# -- usage -----------------------------------------------------------------------------------------------------


def test_the_team_runs_usage_includes_its_remote_writer(start_nodes: Callable[..., list[Node]]) -> None:
    a, b = start_nodes("pubsub")
    run_id = start_run(a)
    on_a = full_run(a, run_id)
    sync = [e for e in decoded(on_a) if isinstance(e, CustomEvent)]
    writer_run = sync[-1].data["run_id"]
    writer_done = full_run(b, writer_run)[-1].json
    team = load_demo("research_team").build_graph()
    one_node = asyncio.run(capture_run(team, {"messages": [{"role": "user", "content": TASK["message"]}]})).done

    usage = on_a[-1].json["usage"]
    assert writer_done["usage"]["total_tokens"] > 0
    assert usage == one_node.usage.model_dump()  # as if the writer had run on node A
    assert usage["total_tokens"] > writer_done["usage"]["total_tokens"]


# -- one thread view ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", [True, False], ids=["two-nodes", "one-node"])
def test_a_thread_shows_the_remote_writer_once_inside_the_team_run(
    start_nodes: Callable[..., list[Node]], split: bool
) -> None:
    nodes = start_nodes("pubsub", split=split)
    a = nodes[0]
    first = start_run(a, thread_id="t-relay")
    full_run(a, first)
    readers = [Reader(f"{node.url}/threads/t-relay/stream") for node in nodes]
    second = start_run(a, thread_id="t-relay")
    for node, reader in zip(nodes, readers, strict=True):
        # Runs come in start order: once the second team run ended, the writer runs
        # (started before it) would have come too.
        wait_for(
            lambda r=reader: any(e.type == "done" and e.run_id == second for e in r.decoded),
            TIMEOUT,
            f"the second run on {node.name}'s thread stream",
        )
    expected = [f.raw for f in full_run(a, first) + full_run(a, second)]
    writer_runs = {
        e.data["run_id"] for e in decoded(full_run(a, second)) if isinstance(e, CustomEvent) and "run_id" in e.data
    }
    assert len(writer_runs) == 1

    for node, reader in zip(nodes, readers, strict=True):
        assert reader.error is None, repr(reader.error)
        assert [f.raw for f in reader.events()] == expected, node.name
        assert sum(1 for e in reader.decoded if is_writer_token(e)) > 40, node.name
    # The writer's own run is still there for whoever asks for it.
    writer_node = nodes[-1]
    (writer_run,) = writer_runs
    own = Reader(f"{writer_node.url}/runs/{writer_run}/stream").wait().events()
    assert own[0].event == "status" and own[-1].event == "done"
    assert sum(1 for f in own if f.event == "token") == sum(
        1 for e in decoded(full_run(a, second)) if is_writer_token(e)
    )
