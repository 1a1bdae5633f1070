"""Replay from the event store across processes: a restarted server streams the runs of its
previous life from its SQLite file; a node streams, from a shared PostgreSQL database, the run
of a node that is gone. Real ``kiki-events serve`` processes, reached over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import ServeProcess
from tests.redis_server import RedisServer
from tests.servers import FrameSplitter, SSEFrame, iter_frames

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
TASK = {"graph": "team", "message": "Compare Redis streams and pub/sub", "thread_id": "t-replay"}
ALICE_TOKEN = "alice-token-0123456789"
BOB_TOKEN = "bob-token-0123456789"
ALICE = {"Authorization": f"Bearer {ALICE_TOKEN}"}
BOB = {"Authorization": f"Bearer {BOB_TOKEN}"}
FORMATS = ["kiki", "agui", "aisdk"]


def serve(tmp: Path, name: str, store: str, nodes: list[ServeProcess], eventbus: str = "{}") -> ServeProcess:
    config = tmp / f"{name}.yaml"
    config.write_text(
        f"node: {name}\n"
        f"store: {store}\n"
        f"eventbus: {eventbus}\n"
        "logging: {level: INFO}\n"
        'server: {auth: {bearer_tokens: {alice: "${ALICE_TOKEN}", bob: "${BOB_TOKEN}"}}}\n'
        f"graphs:\n  team: {ROOT / 'agents' / 'research_team.py'}:graph\n"
    )
    env = {"KIKI_DEMO_TOKEN_DELAY": "0", "ALICE_TOKEN": ALICE_TOKEN, "BOB_TOKEN": BOB_TOKEN}
    node = ServeProcess(name, config, tmp / f"{name}-{len(list(tmp.glob('*.log')))}.log", cwd=tmp, env=env)
    nodes.append(node)
    node.wait_up()
    return node


@pytest.fixture
def nodes() -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    try:
        yield started
    finally:
        for node in started:
            node.stop()


def blocks(body: bytes) -> list[SSEFrame]:
    frames = FrameSplitter().feed(body if body.endswith(b"\n\n") else body + b"\n\n")
    return [frame for frame in frames if not (frame.comments and frame.data is None and frame.event is None)]


def read_all(url: str, run_id: str, after: int) -> dict[str, tuple[list[SSEFrame], list[SSEFrame]]]:
    """Each format's whole stream of ``run_id`` and the one resumed after ``after``."""
    seen = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        for fmt in FORMATS:
            path = f"/runs/{run_id}/stream?format={fmt}"
            whole = client.get(path, headers=ALICE)
            resumed = client.get(path, headers={**ALICE, "Last-Event-ID": f"{run_id}:{after}"})
            assert whole.status_code == resumed.status_code == 200, (whole.text, resumed.text)
            seen[fmt] = (blocks(whole.content), blocks(resumed.content))
    return seen


def run_to_end(url: str) -> tuple[str, int]:
    with httpx.Client(base_url=url, timeout=60) as client:
        response = client.post("/runs/stream", json=TASK, headers=ALICE)
        assert response.status_code == 200, response.text
        ids = [frame.seq for frame in blocks(response.content) if frame.id is not None]
        assert ids == list(range(1, len(ids) + 1))
        return response.headers["X-Kiki-Run-Id"], ids[-1]


def check_gone_run_is_served(url: str, run_id: str, last: int, before: dict[str, tuple[list[SSEFrame], ...]]) -> None:
    now = read_all(url, run_id, last // 3)
    for fmt in FORMATS:
        for got, want in zip(now[fmt], before[fmt], strict=True):
            assert [f.raw for f in got] == [f.raw for f in want], fmt
    with httpx.Client(base_url=url, timeout=30) as client:
        path = f"/runs/{run_id}/stream"
        assert client.get(path, headers={**ALICE, "Last-Event-ID": f"{run_id}:{last}"}).status_code == 204
        assert client.get(path, headers=BOB).status_code == 404
        listed = client.get(f"/runs/{run_id}/stream", headers=ALICE)
        kiki = [frame.seq for frame in blocks(listed.content) if frame.id is not None]
        assert kiki == list(range(1, last + 1))
        # The thread's stream holds the stored run (then, with a bridge, waits for new runs).
        ids: list[str] = []
        with client.stream("GET", "/threads/t-replay/stream", headers=ALICE) as thread:
            assert thread.status_code == 200
            for frame in iter_frames(thread):
                ids += [frame.id] if frame.id else []
                if frame.event == "done":
                    break
        assert ids == [f"{run_id}:{n}" for n in kiki]
        refused = client.get("/threads/t-replay/stream", headers=BOB)
        assert refused.status_code == 404, refused.text


def test_a_restarted_server_streams_the_runs_of_its_previous_life(tmp_path: Path, nodes: list[ServeProcess]) -> None:
    store = f"{{enabled: true, path: '{tmp_path / 'history.sqlite'}'}}"
    first = serve(tmp_path, "n1", store, nodes)
    run_id, last = run_to_end(first.url)
    before = read_all(first.url, run_id, last // 3)
    first.stop()
    nodes.remove(first)
    again = serve(tmp_path, "n1", store, nodes)
    check_gone_run_is_served(again.url, run_id, last, before)


@pytest.mark.parametrize("bus", ["memory", "redis"])
def test_a_node_streams_the_run_of_a_node_that_is_gone_from_a_shared_postgresql(
    tmp_path: Path, nodes: list[ServeProcess], postgres_dsn: str, request: pytest.FixtureRequest, bus: str
) -> None:
    store = f"{{enabled: true, backend: postgres, dsn: '{postgres_dsn}'}}"
    eventbus = "{}"
    if bus == "redis":  # the nodes also share a bridge: b asks the cluster first, then the store
        redis: RedisServer = request.getfixturevalue("redis_server")
        prefix = f"kiki-replay-{uuid.uuid4().hex[:8]}:"
        eventbus = f"{{provider: redis, redis: {{url: '{redis.url}', channel_prefix: '{prefix}'}}}}"
    a = serve(tmp_path, "a", store, nodes, eventbus)
    b = serve(tmp_path, "b", store, nodes, eventbus)
    run_id, last = run_to_end(a.url)
    before = read_all(a.url, run_id, last // 3)
    a.stop()
    nodes.remove(a)
    check_gone_run_is_served(b.url, run_id, last, before)
