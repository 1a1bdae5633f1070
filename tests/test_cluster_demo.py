"""The two-node demo of the README: two ``kiki-events serve`` processes, one private Redis.

Node A (``config/cluster-a.yaml``) runs the research team; its writer step runs on
node B (``config/cluster-b.yaml``). A client of node A sees the whole run, B's
writer tokens included, and exactly one ``done``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kiki_events import SSEDecoder, TokenEvent
from tests.processes import ServeProcess
from tests.redis_server import RedisServer
from tests.servers import iter_frames

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


class Node(ServeProcess):
    """A node of the README's two-node demo, serving one of its configs as they are."""

    def __init__(self, config: str, redis_url: str, log: Path) -> None:
        env = {"REDIS_URL": redis_url, "KIKI_DEMO_TOKEN_DELAY": "0.002", "KIKI__LOGGING__LEVEL": "WARNING"}
        super().__init__(config, ROOT / config, log, cwd=ROOT, env=env)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    redis = RedisServer(appendonly=False).start()
    a = Node("config/cluster-a.yaml", redis.url, tmp_path / "a.log")
    b = Node("config/cluster-b.yaml", redis.url, tmp_path / "b.log")
    try:
        a.wait_up()
        b.wait_up()
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
