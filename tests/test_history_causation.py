"""Causation chains over HTTP from a real hand-off: node A's team delegates its writer to node B
(Redis between them), both store their runs in one PostgreSQL database, and A's API follows the
chain from the calling run to the delegate and back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from types import ModuleType
from typing import Any

import httpx
import pytest

from kiki_events.config import Settings
from kiki_events.server import bearer_tokens, create_app
from kiki_events.sinks.history import HistorySink
from tests.servers import LiveServer, live_server, wait_for
from tests.test_handoff import FAST, parent_graph, writer_graph

pytestmark = pytest.mark.redis

ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}


def node_settings(name: str, redis_url: str, prefix: str, dsn: str, serve: tuple[str, ...] = ()) -> Settings:
    return Settings.model_validate(
        {
            "node": name,
            "eventbus": {"provider": "redis", "redis": {"url": redis_url, "channel_prefix": prefix}},
            "handoff": FAST.model_copy(update={"serve": serve}).model_dump(exclude_none=True),
            "store": {"enabled": True, "backend": "postgres", "dsn": dsn, "flush_interval": "2ms"},
        }
    )


def flush(server: LiveServer) -> None:
    runtime = server.config.app.state.kiki_runtime  # type: ignore[union-attr]
    for sink in runtime.sinks.sinks:
        if isinstance(sink, HistorySink):
            assert server.call(lambda s=sink: s.writer.flush(20))


@pytest.fixture
def nodes(redis_url: str, key_prefix: str, postgres_dsn: str, scripted: ModuleType) -> Iterator[dict[str, Any]]:
    auth = bearer_tokens({"alice-token": "alice", "bob-token": "bob"})
    a = create_app(
        node_settings("a", redis_url, key_prefix, postgres_dsn), graphs={"team": parent_graph(None)}, auth=auth
    )
    b = create_app(
        node_settings("b", redis_url, key_prefix, postgres_dsn, serve=("writer",)),
        graphs={"writer": writer_graph(scripted)},
    )
    with ExitStack() as stack:
        server_b = stack.enter_context(live_server(b))
        server_a = stack.enter_context(live_server(a))
        http = stack.enter_context(httpx.Client(base_url=server_a.url, timeout=30))
        yield {"a": server_a, "b": server_b, "http": http}


def test_the_chain_of_a_delegated_run_both_ways(nodes: dict[str, Any]) -> None:
    http: httpx.Client = nodes["http"]
    started = http.post("/runs", headers=ALICE, json={"graph": "team", "message": "go", "thread_id": "t-1"})
    assert started.status_code == 202, started.text
    parent = started.json()["run_id"]
    wait_for(lambda: http.get(f"/runs/{parent}", headers=ALICE).json()["status"] == "success", what="the run")
    flush(nodes["a"])
    flush(nodes["b"])

    events = http.get(f"/runs/{parent}/events", headers=ALICE, params={"type": "custom"}).json()["events"]
    requested = next(e for e in events if e["name"] == "multiagent:sync" and e["data"]["phase"] == "requested")
    request_id = f"{parent}:{requested['seq']}"

    chain = http.get(f"/runs/{parent}/causation", headers=ALICE).json()
    assert chain["run"]["run_id"] == parent and chain["causes"] == []
    (effect,) = chain["effects"]
    child = effect["run"]
    assert (effect["depth"], effect["via"]) == (1, request_id)
    assert (child["node"], child["causation_id"], child["caused_by"]) == ("b", request_id, parent)
    assert child["relayed_into"] == parent

    up = http.get(f"/runs/{child['run_id']}/causation", headers=ALICE).json()
    assert [(link["run"]["run_id"], link["depth"], link["via"]) for link in up["causes"]] == [(parent, 1, request_id)]
    assert up["effects"] == []

    by_event = http.get(f"/events/{request_id}/causation", headers=ALICE).json()
    assert by_event["event"]["seq"] == requested["seq"] and by_event["run"]["run_id"] == parent
    assert [link["run"]["run_id"] for link in by_event["effects"]] == [child["run_id"]]

    listed = http.get("/runs", headers=ALICE).json()["runs"]
    assert {run["run_id"] for run in listed} == {parent, child["run_id"]}
    for path in (f"/runs/{parent}/causation", f"/runs/{child['run_id']}/causation", f"/events/{request_id}/causation"):
        assert http.get(path, headers=BOB).status_code == 404
    assert http.get("/runs", headers=BOB).json()["runs"] == []
