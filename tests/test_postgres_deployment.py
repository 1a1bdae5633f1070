"""The production deployment of the README: two nodes serving ``config/postgres.yaml`` as shipped.

Two real ``kiki-events serve`` processes, a private Redis and a PostgreSQL database of the
test's own: a conversation started on node A continues on node B (the checkpointer), and
the history both write holds each node's runs once, with the node that ran them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kiki_events.history import ANYONE, PostgresStore
from tests.processes import ServeProcess
from tests.redis_server import RedisServer
from tests.servers import iter_frames

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


class Node(ServeProcess):
    def __init__(self, name: str, redis_url: str, dsn: str, log: Path) -> None:
        env = {
            "REDIS_URL": redis_url,
            "KIKI_PG_DSN": dsn,
            "KIKI_PREFIX": f"kiki-pg-{os.getpid()}:",
            "KIKI_DEMO_TOKEN_DELAY": "0",
            "KIKI__NODE": name,
            "KIKI__LOGGING__LEVEL": "WARNING",
        }
        super().__init__(name, ROOT / "config" / "postgres.yaml", log, cwd=ROOT, env=env)


@pytest.fixture
def nodes(tmp_path: Path, postgres_dsn: str) -> Iterator[tuple[Node, Node]]:
    redis = RedisServer(appendonly=False).start()
    a = Node("node-a", redis.url, postgres_dsn, tmp_path / "a.log")
    b = Node("node-b", redis.url, postgres_dsn, tmp_path / "b.log")
    try:
        a.wait_up()
        b.wait_up()
        yield a, b
    finally:
        logs = a.stop() + b.stop()
        redis.cleanup()
        assert "Traceback" not in logs, logs


def _say(node: Node, message: str) -> str:
    body = {"graph": "research_team", "message": message, "thread_id": "pg-conversation"}
    with httpx.stream("POST", f"{node.url}/runs/stream", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        frames = list(iter_frames(response))
        run_id = response.headers["x-kiki-run-id"]
    assert frames[-1].event == "done" and frames[-1].json["status"] == "success", frames[-1]
    return run_id


def test_a_conversation_moves_between_nodes_and_both_write_one_history(
    nodes: tuple[Node, Node], postgres_dsn: str
) -> None:
    a, b = nodes
    first = _say(a, "Compare Redis streams and pub/sub")
    second = _say(b, "Now compare Kafka and NATS")
    state = httpx.get(f"{a.url}/threads/pg-conversation/state", timeout=10).json()
    a.stop()
    b.stop()  # each writes what it queued before it exits

    async def stored() -> list[tuple[str, str | None, str, int]]:
        store = PostgresStore(postgres_dsn)
        await store.open()
        try:
            page = await store.runs(ANYONE, thread_id="pg-conversation")
            return [(run.run_id, run.node, run.status, run.events) for run in page.runs]
        finally:
            await store.close()

    runs = asyncio.run(stored())

    humans = [m["content"] for m in state["values"]["messages"] if m["type"] == "human"]
    assert humans == ["Compare Redis streams and pub/sub", "Now compare Kafka and NATS"]  # B continued A's thread
    assert [(run_id, node, status) for run_id, node, status, _ in runs] == [
        (second, "node-b", "success"),
        (first, "node-a", "success"),
    ]
    assert all(events > 20 for *_, events in runs)
