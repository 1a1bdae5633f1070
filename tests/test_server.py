"""The HTTP/SSE API on a real uvicorn server, read over HTTP like a browser would."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sse_starlette import EventSourceResponse

from kiki_events.config import Settings
from kiki_events.core.bus import EventBus
from kiki_events.events import StreamEvent
from kiki_events.formats.kiki import decode_sse
from kiki_events.runtime import KikiRuntime
from kiki_events.server import bearer_tokens, create_app, stream_agent_sse
from kiki_events.testing import CapturedEvents
from tests.servers import (
    Gate,
    LiveServer,
    SSEFrame,
    aiter_frames,
    async_wait_for,
    gated_graph,
    iter_frames,
    live_server,
    parse_frame,
    read_stream,
    wait_for,
)

TASK_TEXT = "Compare Redis streams and pub/sub"
START = {"graph": "team", "message": TASK_TEXT}


def _settings(**sections: Any) -> Settings:
    return Settings.from_mapping(sections)


def _decode(frames: list[SSEFrame]) -> CapturedEvents:
    return CapturedEvents(decode_sse(f.id or "", f.event or "", f.data or "") for f in frames)


def _app(research_team: ModuleType, gate: Gate | None = None, settings: Settings | None = None, **kw: Any) -> FastAPI:
    graphs: dict[str, object] = {"team": research_team.build_graph(token_delay=0.0)}
    if gate is not None:
        graphs["gated"] = gated_graph(research_team, gate)
    return create_app(settings, graphs=graphs, **kw)


def _runtime(app: FastAPI) -> KikiRuntime:
    runtime: KikiRuntime = app.state.kiki_runtime
    return runtime


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate()
    yield gate
    gate.open()  # never leave a run parked


@pytest.fixture
def server(research_team: ModuleType, gate: Gate) -> Iterator[LiveServer]:
    with live_server(_app(research_team, gate)) as srv:
        try:
            yield srv
        finally:
            gate.open()  # let parked runs finish before the server stops


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _read_until(frames: Iterator[SSEFrame], done: Any) -> list[SSEFrame]:
    seen = []
    for frame in frames:
        seen.append(frame)
        if done(frame):
            return seen
    raise AssertionError(f"stream ended before the expected frame; got {[f.event for f in seen]}")


def _at_hold(frame: SSEFrame) -> bool:
    return frame.event == "agent_lifecycle" and frame.json.get("agent") == "hold" and frame.json["phase"] == "started"


# -- streaming a run ---------------------------------------------------------------------------------


def test_post_runs_stream_sends_every_frame_in_order_with_done_last(client: httpx.Client) -> None:
    with client.stream("POST", "/runs/stream", json=START) as response:
        assert response.status_code == 200
        raw = b"".join(response.iter_raw())
        headers = response.headers

    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-store"
    assert headers["x-accel-buffering"] == "no"
    run_id = headers["x-kiki-run-id"]
    assert headers["content-location"] == f"/runs/{run_id}/stream"
    assert b"\r" not in raw
    assert raw.startswith(b"retry: 2000\n\n")

    frames = [f for f in (b for b in raw.split(b"\n\n") if b) if not f.startswith(b"retry:")]
    parsed = [parse_frame(f) for f in frames]
    assert all(f.id is not None and f.id.startswith(f"{run_id}:") for f in parsed)
    assert [f.seq for f in parsed] == list(range(1, len(parsed) + 1))
    events = _decode(parsed)
    events.check_invariants()
    assert parsed[0].event == "status" and parsed[-1].event == "done"
    assert events.done.status == "success"
    assert {"supervisor", "research/researcher", "research/tools", "writer"} <= set(events.agents())
    calls = events.tool_calls()
    assert len(calls) == 2
    assert all(call["name"] and call.get("output") is not None for call in calls.values())


def test_a_second_client_joining_mid_run_sees_no_gap_and_no_duplicate(client: httpx.Client, gate: Gate) -> None:
    with client.stream("POST", "/runs/stream", json={"graph": "gated", "message": TASK_TEXT}) as first:
        run_id = first.headers["x-kiki-run-id"]
        first_frames = iter_frames(first)
        before_cut = _read_until(first_frames, _at_hold)
        cut = before_cut[-1].id
        assert cut is not None
        ahead = client.get(f"/runs/{run_id}/stream", headers={"Last-Event-ID": f"{run_id}:999999"})
        assert ahead.status_code == 400
        assert "ahead of the run" in ahead.json()["detail"]

        with (
            client.stream("GET", f"/runs/{run_id}/stream", headers={"Last-Event-ID": cut}) as second,
            client.stream("GET", f"/runs/{run_id}/stream", params={"last_event_id": cut}) as third,
        ):
            assert second.status_code == third.status_code == 200
            gate.open()
            from_second = list(iter_frames(second))
            from_third = list(iter_frames(third))
        after_cut = list(first_frames)

    all_ids = [f.id for f in before_cut + after_cut]
    assert len(all_ids) == len(set(all_ids))
    joined = [f.id for f in before_cut] + [f.id for f in from_second]
    assert joined == all_ids
    assert [f.id for f in from_third] == [f.id for f in from_second]
    assert not [f for f in from_second if f.event == "status" and f.id is None]
    _decode(before_cut + after_cut).check_invariants()
    assert from_second[-1].event == "done"


def test_joining_from_before_the_replay_window_says_gap_first(research_team: ModuleType) -> None:
    app = _app(research_team, settings=_settings(runs={"replay_events": 16}))
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        run_id = client.post("/runs", json=START).json()["run_id"]
        wait_for(lambda: client.get(f"/runs/{run_id}").json()["status"] == "success", what="the run to finish")

        with client.stream("GET", f"/runs/{run_id}/stream", headers={"Last-Event-ID": f"{run_id}:1"}) as response:
            raw = b"".join(response.iter_raw())

    blocks = [b for b in raw.split(b"\n\n") if b and not b.startswith(b"retry:")]
    assert blocks[0].startswith(b"event: status\ndata: ")  # a notice: no id line
    notice = json.loads(blocks[0].split(b"data: ", 1)[1])
    assert notice["status"] == "gap"
    assert notice["seq"] == 0
    assert notice["run_id"] == run_id
    assert notice["first_seq"] > 2
    assert blocks[1].startswith(f"id: {run_id}:{notice['first_seq']}\n".encode())
    assert b"event: done" in blocks[-1]


def test_resume_after_the_end_is_204_and_bad_cursors_are_400(client: httpx.Client) -> None:
    frames = read_stream(client, "POST", "/runs/stream", json=START)
    last = frames[-1].id
    assert last is not None
    run_id = last.rpartition(":")[0]

    assert client.get(f"/runs/{run_id}/stream", headers={"Last-Event-ID": last}).status_code == 204
    assert client.get(f"/runs/{run_id}/stream", params={"last_event_id": last}).status_code == 204
    # Without a cursor the whole kept run is replayed.
    replay = read_stream(client, "GET", f"/runs/{run_id}/stream")
    assert [f.id for f in replay] == [f.id for f in frames]

    bad = client.get(f"/runs/{run_id}/stream", headers={"Last-Event-ID": "not-a-cursor"})
    assert bad.status_code == 400
    assert "Last-Event-ID" in bad.json()["detail"]
    other = client.get(f"/runs/{run_id}/stream", headers={"Last-Event-ID": "someone-else:3"})
    assert other.status_code == 400
    assert "someone-else" in other.json()["detail"]
    assert client.get("/runs/nope/stream").status_code == 404


def test_a_crashing_graph_gives_a_redacted_error_then_done_and_the_server_keeps_serving(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="kiki_events")
    with client.stream("POST", "/runs/stream", json={"graph": "team", "message": "Summarise queues, then crash"}) as r:
        raw = b"".join(r.iter_raw())

    frames = [parse_frame(b) for b in raw.split(b"\n\n") if b and not b.startswith(b"retry:")]
    assert [f.event for f in frames[-2:]] == ["error", "done"]
    assert frames[-1].json["status"] == "error"
    assert frames[-2].json["error_type"] == "RuntimeError"
    assert b"hunter2" not in raw
    assert b"Traceback" not in raw
    wait_for(lambda: "Traceback (most recent call last)" in caplog.text, what="the traceback in the server log")
    assert "hunter2" not in caplog.text

    again = read_stream(client, "POST", "/runs/stream", json=START)
    assert again[-1].json["status"] == "success"


# -- starting, status, cancel ------------------------------------------------------------------------


def test_post_runs_answers_202_and_the_run_can_be_watched_and_cancelled(client: httpx.Client, gate: Gate) -> None:
    graph_input = {"messages": [{"role": "user", "content": TASK_TEXT}]}
    started = client.post("/runs", json={"graph": "gated", "input": graph_input, "metadata": {"k": "v"}})
    assert started.status_code == 202
    body = started.json()
    run_id = body["run_id"]
    assert body["stream_url"] == f"/runs/{run_id}/stream"
    assert started.headers["location"] == f"/runs/{run_id}"
    wait_for(gate.reached.is_set, what="the run to reach the gate")
    status = client.get(f"/runs/{run_id}").json()
    assert status["status"] == "running"
    assert status["thread_id"] == body["thread_id"]
    assert status["graph"] == "gated"

    cancelled = client.post(f"/runs/{run_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json() == {"run_id": run_id, "status": "cancelled"}

    frames = read_stream(client, "GET", f"/runs/{run_id}/stream")
    assert frames[-1].event == "done"
    assert frames[-1].json["status"] == "cancelled"
    _decode(frames).check_invariants()
    # An ended run stays ended.
    assert client.post(f"/runs/{run_id}/cancel").json()["status"] == "cancelled"
    assert client.post("/runs/nope/cancel").status_code == 404
    assert client.get("/runs/nope").status_code == 404


@pytest.mark.parametrize("policy", ["cancel", "continue"])
def test_on_disconnect_policy(client: httpx.Client, gate: Gate, policy: str) -> None:
    body = {"graph": "gated", "message": TASK_TEXT, "on_disconnect": policy}
    with client.stream("POST", "/runs/stream", json=body) as response:
        run_id = response.headers["x-kiki-run-id"]
        _read_until(iter_frames(response), _at_hold)

    if policy == "cancel":
        wait_for(lambda: client.get(f"/runs/{run_id}").json()["status"] == "cancelled", what="the run to be cancelled")
    else:
        assert client.get(f"/runs/{run_id}").json()["status"] == "running"
        gate.open()
        wait_for(lambda: client.get(f"/runs/{run_id}").json()["status"] == "success", what="the run to finish")


def test_idle_streams_get_keepalive_comments(research_team: ModuleType, gate: Gate) -> None:
    app = _app(research_team, gate, settings=_settings(sse={"keepalive": "50ms", "retry": "1.5s"}))
    with (
        live_server(app) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as client,
        client.stream("POST", "/runs/stream", json={"graph": "gated", "message": "x"}) as response,
    ):
        blocks = iter_frames(response, events_only=False)
        assert next(blocks).retry == 1500
        pings = _read_until(blocks, lambda f: f.comments == ["ping"])
        assert pings[-1].raw == b": ping"
        gate.open()
        rest = list(blocks)
    assert [f.event for f in rest if f.event][-1] == "done"


def test_too_many_active_runs_is_429(research_team: ModuleType, gate: Gate) -> None:
    app = _app(research_team, gate, settings=_settings(runs={"max_active": 1}))
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        assert client.post("/runs", json={"graph": "gated", "message": "x"}).status_code == 202
        refused = client.post("/runs", json=START)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert "max_active" in refused.json()["detail"]
        gate.open()


# -- input validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"graph": "team", "message": "x", "extra": 1}, 422, "extra: unknown field"),
        ({"graph": "team"}, 422, "exactly one of 'input', 'message' or 'resume'"),
        ({"graph": "team", "message": "x", "input": {}}, 422, "exactly one of 'input', 'message' or 'resume'"),
        ({"graph": "team", "resume": "yes"}, 422, "'resume' answers an interrupted thread: give its 'thread_id' too"),
        ({"graph": "team", "resume": "yes", "message": "x", "thread_id": "t"}, 422, "exactly one of"),
        ({"message": "x"}, 422, "graph: field required"),
        ({"graph": "team", "message": 3}, 422, "message:"),
        ({"graph": "team", "message": "x", "thread_id": "a/b"}, 422, "thread_id:"),
        ({"graph": "team", "message": "x", "metadata": {"k": {"nested": 1}}}, 422, "metadata.k"),
        ({"graph": "nope", "message": "x"}, 404, "no graph named 'nope'"),
        ([1, 2], 422, "must be a JSON object"),
    ],
)
@pytest.mark.parametrize("path", ["/runs", "/runs/stream"])
def test_bad_bodies_get_a_clear_4xx(client: httpx.Client, path: str, body: Any, status: int, fragment: str) -> None:
    response = client.post(path, json=body)

    assert response.status_code == status
    assert fragment in response.json()["detail"]


def test_bad_json_and_oversized_bodies(client: httpx.Client) -> None:
    bad = client.post("/runs", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 422
    assert "not valid JSON" in bad.json()["detail"]

    big = json.dumps({"graph": "team", "message": "x" * 300_000}).encode()
    declared = client.post("/runs/stream", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413
    assert "262144 bytes" in declared.json()["detail"]

    def chunked() -> Iterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    streamed = client.post("/runs", content=chunked(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert "sse.max_body_bytes" in streamed.json()["detail"]


# -- authentication ------------------------------------------------------------------------------------


def test_auth_401_without_a_principal_and_404_for_someone_elses_run(research_team: ModuleType) -> None:
    app = _app(research_team, auth=bearer_tokens({"token-a": "alice", "token-b": "bob"}))
    alice = {"Authorization": "Bearer token-a"}
    bob = {"Authorization": "Bearer token-b"}
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        assert client.post("/runs", json=START).status_code == 401
        assert client.post("/runs", json=START, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/graphs").status_code == 401
        assert client.get("/healthz").status_code == 200

        started = client.post("/runs", json={**START, "thread_id": "alice-thread"}, headers=alice).json()
        run_id = started["run_id"]
        wait_for(lambda: client.get(f"/runs/{run_id}", headers=alice).json()["status"] == "success", what="the run")
        assert client.get(f"/runs/{run_id}").status_code == 401

        missing_run = client.get("/runs/no-such-run", headers=bob)
        for response in (
            client.get(f"/runs/{run_id}", headers=bob),
            client.get(f"/runs/{run_id}/stream", headers=bob),
            client.post(f"/runs/{run_id}/cancel", headers=bob),
        ):
            assert response.status_code == 404
            assert response.json()["detail"] == missing_run.json()["detail"].replace("no-such-run", run_id)
        assert client.get("/threads/alice-thread/stream", headers=bob).status_code == 404
        taken = client.post("/runs", json={**START, "thread_id": "alice-thread"}, headers=bob)
        assert taken.status_code == 404
        assert taken.json()["detail"] == "thread 'alice-thread' not found"

        frames = read_stream(client, "GET", f"/runs/{run_id}/stream", headers=alice)
        assert frames[-1].event == "done"


# -- threads ---------------------------------------------------------------------------------------------


def test_thread_stream_follows_every_run_of_the_thread(client: httpx.Client) -> None:
    body = {**START, "thread_id": "conversation-1"}
    first = read_stream(client, "POST", "/runs/stream", json=body)
    first_run = first[0].id.rpartition(":")[0] if first[0].id else ""

    with client.stream("GET", "/threads/conversation-1/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-location"] == "/threads/conversation-1/stream"
        frames = iter_frames(response)
        replayed = _read_until(frames, lambda f: f.event == "done")
        second_run = client.post("/runs", json=body).json()["run_id"]
        live = _read_until(frames, lambda f: f.event == "done")

    assert [f.id for f in replayed] == [f.id for f in first]
    assert {f.id.rpartition(":")[0] for f in live if f.id} == {second_run}
    assert second_run != first_run
    events = _decode(replayed + live)
    events.check_invariants()
    # Token frames leave out run-constant fields such as thread_id.
    assert {e.thread_id for e in events if e.type != "token"} == {"conversation-1"}
    assert client.get("/threads/unknown/stream").status_code == 404


# -- operations ---------------------------------------------------------------------------------------------


def test_healthz_metrics_graphs_and_dashboard(research_team: ModuleType) -> None:
    secret = "s3cr3t-redis-pw"
    settings = _settings(eventbus={"redis": {"password": secret, "url": f"redis://kiki:{secret}@redis:6379/0"}})
    with live_server(_app(research_team, settings=settings)) as srv, httpx.Client(base_url=srv.url) as client:
        read_stream(client, "POST", "/runs/stream", json=START)
        health = client.get("/healthz")
        metrics = client.get("/metrics")
        graphs = client.get("/graphs")
        page = client.get("/")
        module = client.get("/static/dashboard.js")
        openapi = client.get("/openapi.json")

    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert body["runs"]["started"] == 1
    assert body["bus"]["published"] > 0
    assert secret not in health.text
    assert metrics.status_code == 200
    assert "kiki_events_published_total" in metrics.text
    assert 'kiki_runs_total{graph="team",status="success"} 1.0' in metrics.text
    assert secret not in metrics.text
    assert graphs.json() == {"graphs": ["team"]}
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    # The page's modules are JavaScript, revalidated on every load.
    assert module.status_code == 200
    assert module.headers["content-type"].split(";")[0] in {"text/javascript", "application/javascript"}
    assert module.headers["cache-control"] == "no-cache" and module.headers["etag"]
    assert openapi.status_code == 200
    assert "/runs/stream" in openapi.json()["paths"]


def test_cors_is_off_unless_configured(research_team: ModuleType) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with live_server(_app(research_team)) as srv:
        plain = httpx.options(f"{srv.url}/runs/stream", headers=preflight)
    assert "access-control-allow-origin" not in plain.headers

    settings = _settings(sse={"cors_origins": ["https://app.example"]})
    with live_server(_app(research_team, settings=settings)) as srv:
        allowed = httpx.options(f"{srv.url}/runs/stream", headers=preflight)
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"


# -- R4: many clients leaving mid-run ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_hundred_clients_disconnecting_mid_run_leave_nothing_behind(server: LiveServer, gate: Gate) -> None:
    runtime = _runtime(server.config.app)  # type: ignore[arg-type]

    async def tasks() -> int:
        # sse-starlette keeps one shutdown watcher per event loop once any stream has run.
        return sum(1 for t in asyncio.all_tasks() if t.get_coro().__qualname__ != "_shutdown_watcher")  # type: ignore[union-attr]

    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
        run_id = (await client.post("/runs", json={"graph": "gated", "message": TASK_TEXT})).json()["run_id"]
        await async_wait_for(gate.reached.is_set, what="the run to reach the gate")
        subscriptions = runtime.bus.subscriptions
        baseline_tasks = server.call(tasks)

        async def watch_then_leave() -> int:
            async with client.stream("GET", f"/runs/{run_id}/stream") as response:
                async for frame in aiter_frames(response):
                    if _at_hold(frame):
                        return frame.seq
            return -1

        seen = await asyncio.gather(*(watch_then_leave() for _ in range(100)))
        assert len(set(seen)) == 1 and seen[0] > 0

    def settled() -> bool:
        health = httpx.get(f"{server.url}/healthz").json()
        return health["sse"]["clients"] == 0 and health["sse"]["readers"] == 0

    await async_wait_for(settled, timeout=5, what="every SSE client to be released")
    await async_wait_for(lambda: server.call(tasks) <= baseline_tasks, timeout=5, what="tasks back to baseline")
    assert runtime.bus.subscriptions == subscriptions
    assert runtime.runs.active == 1  # the run itself goes on (on_disconnect: continue)
    gate.open()
    await async_wait_for(lambda: runtime.runs.active == 0, what="the run to finish")


# -- stream_agent_sse in an application's own FastAPI app ----------------------------------------------------------


def test_stream_agent_sse_in_a_users_own_app(research_team: ModuleType) -> None:
    graph = research_team.build_graph(token_delay=0.0)
    seen_on_bus: list[StreamEvent] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with EventBus() as bus:
            bus.subscribe(seen_on_bus.append)
            app.state.bus = bus
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def chat(body: dict[str, str]) -> EventSourceResponse:
        text = {"messages": [{"role": "user", "content": body["text"]}]}
        return stream_agent_sse(graph, text, graph_name="team", thread_id="t-9")

    @app.post("/chat-on-my-bus")
    async def chat_on_bus(body: dict[str, str]) -> EventSourceResponse:
        text = {"messages": [{"role": "user", "content": body["text"]}]}
        return stream_agent_sse(graph, text, bus=app.state.bus, config={"callbacks": []})

    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        frames = read_stream(client, "POST", "/chat", json={"text": TASK_TEXT})
        crashed = read_stream(client, "POST", "/chat", json={"text": "Compare queues, then crash"})
        on_bus = read_stream(client, "POST", "/chat-on-my-bus", json={"text": TASK_TEXT})
        wait_for(lambda: len(seen_on_bus) == len(on_bus), what="the application's bus subscriber")

    events = _decode(frames)
    events.check_invariants()
    assert events.done.status == "success"
    assert events[0].graph == "team"  # type: ignore[union-attr]
    assert {e.thread_id for e in events if e.type != "token"} == {"t-9"}
    assert [f.event for f in crashed[-2:]] == ["error", "done"]
    assert "hunter2" not in crashed[-2].data  # type: ignore[operator]
    assert [e.id for e in seen_on_bus] == [f.id for f in on_bus]
