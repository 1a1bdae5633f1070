"""The two-node demo of the README: two ``kiki-events serve`` processes, one private Redis.

Node A (``config/cluster-a.yaml``) runs the research team; its writer step runs on
node B (``config/cluster-b.yaml``). A client of node A sees the whole run, B's
writer tokens included, and exactly one ``done``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kiki_events import SSEDecoder, TokenEvent
from tests.processes import dying_with_us
from tests.redis_server import RedisServer, free_port
from tests.servers import iter_frames, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


class Node:
    def __init__(self, config: str, redis_url: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "REDIS_URL": redis_url,
            "KIKI_DEMO_TOKEN_DELAY": "0.002",
            "KIKI__LOGGING__LEVEL": "WARNING",
        }
        env.pop("KIKI_NODE", None)
        self._out = log.open("w")
        self.process = subprocess.Popen(
            dying_with_us(
                [sys.executable, "-m", "kiki_events.cli", "serve", "--config", config, "--port", str(self.port)]
            ),
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def up(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"node exited with {self.process.returncode}:\n{self.log.read_text()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._out.close()
        return self.log.read_text()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    redis = RedisServer(appendonly=False).start()
    a = Node("config/cluster-a.yaml", redis.url, tmp_path / "a.log")
    b = Node("config/cluster-b.yaml", redis.url, tmp_path / "b.log")
    try:
        wait_for(a.up, 60, "node A")
        wait_for(b.up, 60, "node B")
        yield a, b
    finally:
        logs = a.stop() + b.stop()
        redis.cleanup()
        assert "Traceback" not in logs, logs


def test_a_run_on_node_a_streams_the_writer_tokens_produced_on_node_b(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    body = {"graph": "research_team", "message": "Compare Redis streams and pub/sub", "thread_id": "t-demo"}
    decoder = SSEDecoder()
    with httpx.stream("POST", f"{a.url}/runs/stream", json=body, timeout=60) as response:
        assert response.status_code == 200
        frames = list(iter_frames(response))
    events = [decoder.decode(f.id or "", f.event or "", f.data or "") for f in frames]

    assert [e.type for e in events].count("done") == 1
    assert events[-1].type == "done" and events[-1].status == "success"  # type: ignore[union-attr]
    run_id = events[0].run_id
    assert {e.run_id for e in events} == {run_id}
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    writer = [e for e in events if isinstance(e, TokenEvent) and e.agent == "writer/writer"]
    assert len(writer) > 20, [e.agent for e in events if isinstance(e, TokenEvent)][:50]
    assert "".join(e.text for e in writer).startswith("Here is what the team found on Redis streams and pub/sub.")
    assert {e.agent for e in events if isinstance(e, TokenEvent)} == {
        "supervisor",
        "research/researcher",
        "writer/writer",
    }
    sync = [e for e in events if e.type == "custom"]
    assert [e.data["phase"] for e in sync] == ["requested", "completed"]  # type: ignore[union-attr]
    assert sync[-1].data["node"] == "node-b"  # type: ignore[union-attr]
    # The run B executed is known there, caused by A's hand-off event.
    child = httpx.get(f"{b.url}/runs/{sync[-1].data['run_id']}", timeout=10).json()  # type: ignore[union-attr]
    assert child["status"] == "success" and child["node"] == "node-b" and child["thread_id"] == "t-demo"
