"""Several real ``kiki-events serve`` processes and one private Redis: the cluster as users see it.

Every node is a subprocess started from a YAML file (``provider: redis``), reached
over HTTP like a browser would. The demo research team streams with a small
token delay so runs stay live long enough to be joined, cut and resumed; tests
wait for conditions, not for time.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import ServeProcess
from tests.redis_server import RedisServer
from tests.servers import SSEFrame, iter_frames, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.redis]

ROOT = Path(__file__).resolve().parent.parent
TASK = {"graph": "team", "message": "Compare Redis streams and pub/sub"}
MODES = ["pubsub", "streams"]
TIMEOUT = 60.0


class Node(ServeProcess):
    """One ``kiki-events serve`` process running the team."""

    def __init__(
        self,
        tmp: Path,
        name: str,
        redis_url: str,
        prefix: str,
        mode: str,
        token_delay: float,
        tokens: dict[str, str] | None = None,
        runs: str = "{shutdown_grace: 1s}",
    ) -> None:
        config = tmp / f"{name}.yaml"
        config.write_text(
            f"node: {name}\n"
            "eventbus:\n"
            "  provider: redis\n"
            f"  redis: {{url: '{redis_url}', channel_prefix: '{prefix}', mode: {mode}}}\n"
            "  subscribe: {interest_linger: 1s}\n"
            f"runs: {runs}\n"
            "logging: {level: INFO}\n"
            f"graphs:\n  team: {ROOT / 'agents' / 'research_team.py'}:graph\n"
        )
        env = {"KIKI_DEMO_TOKEN_DELAY": str(token_delay)}
        if tokens:
            # Principal → token, each token read from the environment (never written to the file).
            entries = ", ".join(f'{who}: "${{{who.upper()}_TOKEN}}"' for who in tokens)
            with config.open("a") as file:
                file.write(f"server: {{auth: {{bearer_tokens: {{{entries}}}}}}}\n")
            env.update({f"{who.upper()}_TOKEN": token for who, token in tokens.items()})
        super().__init__(name, config, tmp / f"{name}.log", cwd=tmp, env=env)


class Cluster:
    def __init__(
        self,
        tmp: Path,
        redis: RedisServer,
        mode: str,
        *,
        token_delay: float = 0.01,
        tokens: dict[str, str] | None = None,
        runs: str = "{shutdown_grace: 1s}",
    ) -> None:
        self.tmp = tmp
        self.runs = runs
        self.redis = redis
        self.mode = mode
        self.token_delay = token_delay
        self.tokens = tokens
        self.prefix = f"kiki-cluster-{os.getpid()}-{time.monotonic_ns()}:"
        self.nodes: list[Node] = []

    def start(self, *names: str, connected: bool = True) -> list[Node]:
        nodes = [
            Node(self.tmp, n, self.redis.url, self.prefix, self.mode, self.token_delay, self.tokens, self.runs)
            for n in names
        ]
        self.nodes.extend(nodes)
        for node in nodes:
            node.wait_up(connected=connected)
        return nodes

    def close(self) -> None:
        for node in self.nodes:
            node.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {n.name}\n{n.log.read_text()}" for n in self.nodes)


@pytest.fixture
def make_cluster(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(mode: str, **kwargs: Any) -> Cluster:
        cluster = Cluster(tmp_path, redis_server, mode, **kwargs)
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.close()


class Reader(threading.Thread):
    """Reads one SSE stream in the background, like a browser tab."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, *, stop_after: int | None = None) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.headers = headers or {}
        self.stop_after = stop_after
        self.frames: list[SSEFrame] = []
        self.status: int | None = None
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self.start()

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=TIMEOUT) as response:
                self.status = response.status_code
                for frame in iter_frames(response):
                    self.frames.append(frame)
                    if self.stop_after is not None and len(self.events()) >= self.stop_after:
                        return  # the client goes away
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.finished.set()

    def events(self) -> list[SSEFrame]:
        return [f for f in self.frames if f.id is not None]

    def notices(self) -> list[dict[str, Any]]:
        return [f.json for f in self.frames if f.id is None and f.event == "status"]

    def seqs(self) -> list[int]:
        return [f.seq for f in self.events()]

    def wait(self, timeout: float = TIMEOUT) -> Reader:
        assert self.finished.wait(timeout), f"the stream {self.url} did not end"
        assert self.error is None, repr(self.error)
        return self


def start_run(node: Node, **extra: Any) -> str:
    response = httpx.post(f"{node.url}/runs", json={**TASK, **extra}, timeout=10)
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def hold_outage(node: Node, events: int = 20) -> None:
    """Keep Redis down until the outage shows on ``node``: its bridge is not connected and
    ``events`` events it produced meanwhile wait in its outbox (bounded by ``TIMEOUT``)."""

    def exercised() -> bool:
        bridge = node.bridge()
        return bridge["state"] != "connected" and bridge["outbox"] >= events

    wait_for(exercised, TIMEOUT, f"{node.name} to hold {events} events back during the outage")


def full_run(node: Node, run_id: str) -> list[SSEFrame]:
    """The whole run as its own node serves it, once it ended."""
    wait_for(lambda: httpx.get(f"{node.url}/runs/{run_id}").json()["status"] not in ("pending", "running"), TIMEOUT)
    return Reader(f"{node.url}/runs/{run_id}/stream").wait().events()


# -- watching, joining, resuming, cancelling ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_run_started_on_a_is_watched_on_b(make_cluster: Callable[..., Cluster], mode: str) -> None:
    cluster = make_cluster(mode)
    a, b = cluster.start("node-a", "node-b")
    run_id = start_run(a)
    on_b = Reader(f"{b.url}/runs/{run_id}/stream").wait()
    on_a = full_run(a, run_id)

    assert on_b.status == 200
    assert [f.raw for f in on_b.events()] == [f.raw for f in on_a]
    assert on_b.events()[-1].event == "done"
    assert on_b.events()[-1].json["status"] == "success"
    assert httpx.get(f"{b.url}/runs/{run_id}").json()["node"] == "node-a"


@pytest.mark.parametrize("mode", MODES)
def test_join_and_resume_on_b_with_last_event_id_has_no_gap_and_no_duplicate(
    make_cluster: Callable[..., Cluster], mode: str
) -> None:
    cluster = make_cluster(mode)
    a, b = cluster.start("node-a", "node-b")
    run_id = start_run(a)
    cut = Reader(f"{a.url}/runs/{run_id}/stream", stop_after=40).wait()  # the browser on A goes away
    last = cut.events()[-1].id
    assert last is not None
    resumed = Reader(f"{b.url}/runs/{run_id}/stream", {"Last-Event-ID": last}).wait()
    everything = [f.seq for f in full_run(a, run_id)]

    assert cut.seqs() + resumed.seqs() == everything
    assert resumed.events()[-1].event == "done"
    assert (
        httpx.get(f"{b.url}/runs/{run_id}/stream", headers={"Last-Event-ID": f"{run_id}:{everything[-1]}"}).status_code
        == 204
    )


@pytest.mark.parametrize("mode", MODES)
def test_cancel_from_b_ends_the_run_on_a(make_cluster: Callable[..., Cluster], mode: str) -> None:
    cluster = make_cluster(mode, token_delay=0.05)
    a, b = cluster.start("node-a", "node-b")
    run_id = start_run(a)
    watching = Reader(f"{b.url}/runs/{run_id}/stream")
    wait_for(lambda: len(watching.events()) >= 5, TIMEOUT, "the run to be live on B")

    cancelled = httpx.post(f"{b.url}/runs/{run_id}/cancel", timeout=30)
    watching.wait()

    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert watching.events()[-1].event == "done"
    assert watching.events()[-1].json["status"] == "cancelled"
    assert httpx.get(f"{a.url}/runs/{run_id}").json()["status"] == "cancelled"
    again = httpx.post(f"{b.url}/runs/{run_id}/cancel", timeout=30)  # an ended run stays ended
    assert again.status_code == 200
    assert again.json()["status"] == "cancelled"


@pytest.mark.parametrize("mode", MODES)
def test_a_thread_stream_on_b_carries_the_runs_of_a(make_cluster: Callable[..., Cluster], mode: str) -> None:
    cluster = make_cluster(mode)
    a, b = cluster.start("node-a", "node-b")
    first = start_run(a, thread_id="thread-1")
    full_run(a, first)
    thread = Reader(f"{b.url}/threads/thread-1/stream")
    second = start_run(a, thread_id="thread-1")
    wait_for(lambda: [f.event for f in thread.events()].count("done") == 2, TIMEOUT, "both runs on B")

    # The whole of run 1 (replayed from A), then the whole of run 2, each exactly once:
    # the live second run waits on B until the first one caught up.
    assert [f.raw for f in thread.events()] == [f.raw for f in full_run(a, first) + full_run(a, second)]


def test_a_finished_run_whose_stream_lost_its_end_is_streamed_on_b_up_to_a_missed_notice(
    make_cluster: Callable[..., Cluster],
) -> None:
    import redis

    cluster = make_cluster("streams")
    (a,) = cluster.start("node-a")
    run_id = start_run(a)
    everything = [f.seq for f in full_run(a, run_id)]
    stream = f"{cluster.prefix}stream:{{{run_id}}}"
    client = redis.Redis.from_url(cluster.redis.url)
    try:
        wait_for(lambda: int(client.hget(f"{cluster.prefix}runinfo:{{{run_id}}}", "last_seq") or 0) > 0, TIMEOUT)
        last = client.xrevrange(stream, count=1)
        assert client.xdel(stream, last[0][0]) == 1  # its last entry (with the done) is gone
        kept = client.xrevrange(stream, count=1)[0][0]
    finally:
        client.close()
    (b,) = cluster.start("node-b")

    on_b = Reader(f"{b.url}/runs/{run_id}/stream").wait(20)

    kept_seq = int(kept.split(b"-")[0])
    assert on_b.seqs() == everything[:kept_seq]
    assert [n["status"] for n in on_b.notices()] == ["missed"]
    assert f"events {kept_seq + 1}-{everything[-1]}" in on_b.notices()[0]["detail"]
    assert on_b.frames[-1].id is None  # the notice is the last frame
    status = httpx.get(f"{b.url}/runs/{run_id}").json()
    assert (status["status"], status["node"]) == ("success", "node-a")


def test_another_users_run_is_not_found_on_any_node(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster("pubsub")
    a, b = cluster.start("node-a", "node-b")
    response = httpx.get(f"{b.url}/runs/not-a-run/stream", timeout=10)
    assert response.status_code == 404
    run_id = start_run(a)
    assert httpx.get(f"{b.url}/runs/{run_id}", timeout=10).status_code == 200


TOKENS = {"alice": "alice-secret-token-0123456789", "bob": "bob-secret-token-9876543210"}


def bearer(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[who]}"}


def thread_stream_status(node: Node, thread_id: str, who: str) -> int:
    """The status a thread stream opens with (it is endless: closed at once)."""
    with httpx.stream("GET", f"{node.url}/threads/{thread_id}/stream", headers=bearer(who), timeout=10) as response:
        return response.status_code


@pytest.mark.parametrize("mode", MODES)
def test_another_user_cannot_take_a_thread_over_through_a_second_node(
    make_cluster: Callable[..., Cluster], mode: str
) -> None:
    cluster = make_cluster(mode, token_delay=0.02, tokens=TOKENS)
    a, b = cluster.start("node-a", "node-b")
    assert httpx.post(f"{a.url}/runs", json=TASK, timeout=10).status_code == 401  # auth is on
    started = httpx.post(f"{a.url}/runs", json={**TASK, "thread_id": "thread-t"}, headers=bearer("alice"), timeout=10)
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]
    watching = Reader(f"{a.url}/runs/{run_id}/stream", bearer("alice"))
    wait_for(lambda: len(watching.events()) >= 5, TIMEOUT, "alice's run to be live on A")

    taken = httpx.post(f"{b.url}/runs", json={**TASK, "thread_id": "thread-t"}, headers=bearer("bob"), timeout=10)

    assert taken.status_code == 404, taken.text
    assert taken.json()["detail"] == "thread 'thread-t' not found"
    for node in (a, b):
        assert thread_stream_status(node, "thread-t", "alice") == 200, node.name
        assert thread_stream_status(node, "thread-t", "bob") == 404, node.name
        assert httpx.get(f"{node.url}/runs/{run_id}", headers=bearer("bob"), timeout=10).status_code == 404
        assert httpx.get(f"{node.url}/runs/{run_id}", headers=bearer("alice"), timeout=10).status_code == 200
    watching.wait()
    again = httpx.post(f"{b.url}/runs", json={**TASK, "thread_id": "thread-t"}, headers=bearer("alice"), timeout=10)
    assert again.status_code == 202, again.text
    # Alice's thread on A carries both runs, the one started on B too; bob still gets nothing.
    thread = Reader(f"{a.url}/threads/thread-t/stream", bearer("alice"))
    wait_for(lambda: [f.event for f in thread.events()].count("done") == 2, TIMEOUT, "both of alice's runs on A")
    assert {f.id.rpartition(":")[0] for f in thread.events() if f.id} == {run_id, again.json()["run_id"]}
    retry = httpx.post(f"{a.url}/runs", json={**TASK, "thread_id": "thread-t"}, headers=bearer("bob"), timeout=10)
    assert retry.status_code == 404
    logs = cluster.logs()
    assert all(token not in logs for token in TOKENS.values())


def test_with_a_shared_checkpointer_the_owner_answers_on_b_what_was_asked_on_a_and_nobody_else_can(
    make_cluster: Callable[..., Cluster], postgres_dsn: str
) -> None:
    runs = f"{{shutdown_grace: 1s, checkpointer: {{kind: postgres, dsn: '{postgres_dsn}'}}}}"
    cluster = make_cluster("pubsub", token_delay=0.0, tokens=TOKENS, runs=runs)
    a, b = cluster.start("node-a", "node-b")
    task = {"graph": "team", "message": "Redis streams, with approval", "thread_id": "thread-hitl"}
    asked = httpx.post(f"{a.url}/runs", json=task, headers=bearer("alice"), timeout=10)
    assert asked.status_code == 202, asked.text
    first = Reader(f"{a.url}/runs/{asked.json()['run_id']}/stream", bearer("alice"))
    first.wait()
    assert first.events()[-1].json["status"] == "interrupted"

    def state(node: Node, who: str) -> httpx.Response:
        return httpx.get(f"{node.url}/threads/thread-hitl/state", headers=bearer(who), timeout=10)

    pending = state(b, "alice")
    answer = {"graph": "team", "thread_id": "thread-hitl", "resume": {"approved": True}}
    stolen = httpx.post(f"{b.url}/runs", json=answer, headers=bearer("bob"), timeout=10)
    answered = httpx.post(f"{b.url}/runs", json=answer, headers=bearer("alice"), timeout=10)
    assert answered.status_code == 202, answered.text
    second = Reader(f"{b.url}/runs/{answered.json()['run_id']}/stream", bearer("alice"))
    second.wait()

    assert pending.status_code == 200, pending.text
    (interrupt,) = pending.json()["interrupts"]
    assert interrupt["value"]["tool"] == "publish"
    assert (state(b, "bob").status_code, state(a, "bob").status_code) == (404, 404)
    assert stolen.status_code == 404, stolen.text
    assert second.events()[-1].json["status"] == "success"
    final = state(a, "alice").json()
    assert final["interrupts"] == []
    assert final["values"]["messages"][-1]["content"].startswith("Done. Published the report on Redis streams")


# -- Redis faults (R1, R2) ---------------------------------------------------------------------------------------


def test_streams_mode_loses_nothing_when_redis_restarts_mid_run(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster("streams", token_delay=0.03)
    a, b = cluster.start("node-a", "node-b")
    run_id = start_run(a)
    watching = Reader(f"{b.url}/runs/{run_id}/stream")
    wait_for(lambda: len(watching.events()) >= 20, TIMEOUT, "the run to be live on B")

    cluster.redis.stop()
    seen_before = len(watching.events())
    hold_outage(a)  # while A keeps producing
    cluster.redis.start()
    watching.wait()
    everything = [f.seq for f in full_run(a, run_id)]

    assert seen_before < len(everything)
    assert watching.seqs() == everything
    assert watching.events()[-1].json["status"] == "success"
    assert watching.notices() == []
    assert a.bridge()["dropped"].get("outbox_full", 0) == 0


def test_pubsub_mode_is_back_within_3s_of_a_redis_restart_and_tells_the_client(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster("pubsub", token_delay=0.03)
    a, b = cluster.start("node-a", "node-b")
    run_id = start_run(a)
    watching = Reader(f"{b.url}/runs/{run_id}/stream")
    wait_for(lambda: len(watching.events()) >= 20, TIMEOUT, "the run to be live on B")

    cluster.redis.stop()
    wait_for(lambda: b.bridge()["state"] != "connected", 30, "B to notice the outage")
    hold_outage(a)  # events B cannot get live
    cluster.redis.start()
    back = time.monotonic()
    wait_for(lambda: b.bridge()["state"] == "connected", 30, "B to reconnect")
    reconnected_in = time.monotonic() - back
    watching.wait()
    everything = [f.seq for f in full_run(a, run_id)]

    assert reconnected_in <= 3.0
    assert [n["status"] for n in watching.notices()] == ["missed"]
    assert watching.events()[-1].json["status"] == "success"
    # Repaired from A's replay log after the notice: nothing missing in the end, nothing twice.
    assert watching.seqs() == everything
    assert b.bridge()["reconnects"] >= 1


@pytest.mark.parametrize("mode", MODES)
def test_redis_down_at_start_each_node_serves_its_own_runs_and_events_flow_once_it_appears(
    make_cluster: Callable[..., Cluster], mode: str
) -> None:
    cluster = make_cluster(mode)
    cluster.redis.stop()
    a, b = cluster.start("node-a", "node-b", connected=False)
    assert a.bridge()["state"] == "connecting"
    with httpx.stream("POST", f"{a.url}/runs/stream", json=TASK, timeout=TIMEOUT) as response:
        local = list(iter_frames(response))
        run_id = response.headers["x-kiki-run-id"]
    assert local[-1].event == "done" and local[-1].json["status"] == "success"
    assert a.bridge()["outbox"] > 0
    # A thread id of the client's own cannot be checked against the other nodes: refused, not risked.
    refused = httpx.post(f"{a.url}/runs", json={**TASK, "thread_id": "thread-new"}, timeout=TIMEOUT)
    assert refused.status_code == 503, refused.text
    assert refused.json()["detail"].startswith("cannot check who owns thread 'thread-new'")
    assert refused.headers["retry-after"] == "1"

    cluster.redis.start()
    for node in (a, b):
        node.wait_up()
    wait_for(lambda: a.bridge()["outbox"] == 0, TIMEOUT, "A's outbox to flush")
    on_b = Reader(f"{b.url}/runs/{run_id}/stream").wait()
    assert [f.raw for f in on_b.events()] == [f.raw for f in local if f.id is not None]


# -- traffic only where wanted --------------------------------------------------------------------------------------


def test_with_four_nodes_only_the_watching_node_receives_the_runs_tokens(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster("pubsub")
    a, b, c, d = cluster.start("node-a", "node-b", "node-c", "node-d")
    run_id = start_run(a)
    watching = Reader(f"{b.url}/runs/{run_id}/stream").wait()
    tokens = sum(1 for f in watching.events() if f.event == "token")
    assert tokens > 100

    assert b.bridge()["events"]["in"] >= len(watching.events())
    for node in (c, d):
        bridge = node.bridge()
        assert bridge["events"]["in"] == 0, node.name
        assert bridge["events"]["lifecycle_in"] > 0, node.name  # lifecycle broadcasts do arrive
    metrics = httpx.get(f"{c.url}/metrics").text
    assert 'kiki_bridge_events_total{direction="in"} 0.0' in metrics
    assert 'kiki_queue_depth{queue="outbox"} 0.0' in metrics
    assert "kiki_bridge_delivery_lag_seconds_bucket" in metrics
