"""The history over HTTP on a real server with the store on: GET /runs, events of a run or
thread, events across runs, causation chains; filters, pages, ownership, bad parameters."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from kiki_events.codec import decode, encode
from kiki_events.events import StreamEvent
from tests.history_served import ALICE, BOB, Served, served_history

RUN_FIELDS = {
    "run_id", "thread_id", "graph", "node", "status", "started_at", "ended_at", "duration_s", "last_seq", "events",
    "llm_calls", "tool_calls", "tool_errors", "errors", "usage", "agents", "causation_id", "caused_by",
    "relayed_into", "trace_id", "cost_usd",
}  # fmt: skip
USAGE_FIELDS = {"input_tokens", "output_tokens", "total_tokens", "reasoning_tokens", "cached_tokens"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, research_team: ModuleType) -> Iterator[Served]:
    path = tmp_path_factory.mktemp("history") / "history.sqlite"
    with served_history(research_team, {"path": str(path)}) as served:
        yield served


def every_page(served: Served, path: str, key: str, who: dict[str, str] = ALICE, **params: Any) -> list[Any]:
    items: list[Any] = []
    cursor = None
    pages = 0
    while True:
        body = served.ok(path, who, **params, **({"cursor": cursor} if cursor else {}))
        items += body[key]
        pages += 1
        cursor = body["cursor"]
        if cursor is None:
            return items
        assert pages < 1000


def events_of(items: list[dict[str, Any]]) -> list[StreamEvent]:
    return [decode(json.dumps(item)) for item in items]


def test_runs_are_listed_newest_first_with_every_field_and_their_totals(served: Served) -> None:
    body = served.ok("/runs")
    assert set(body) == {"runs", "cursor"} and body["cursor"] is None
    runs = body["runs"]
    assert [run["run_id"] for run in runs] == served.alice_runs()[::-1]
    for run in runs:
        assert set(run) == RUN_FIELDS and set(run["usage"]) == USAGE_FIELDS
        stored = served.stored(lambda store, anyone, r=run["run_id"]: store.run(r, anyone))
        assert run["events"] == stored.events == run["last_seq"] > 0
        assert run["usage"]["total_tokens"] == stored.usage.total_tokens > 0
        assert run["graph"] == "team" and run["llm_calls"] > 0
        assert "research/researcher" in run["agents"]
    by_thread = {run["thread_id"] for run in runs}
    assert by_thread == {"t-a1", "t-a2"}
    statuses = [run["status"] for run in runs]
    assert statuses.count("error") == 1 and statuses.count("success") == 4
    failing = next(run for run in runs if run["tool_errors"])
    assert failing["tool_calls"] > failing["tool_errors"] >= 1


def test_filters_keep_the_runs_that_match(served: Served) -> None:
    runs = served.ok("/runs")["runs"]
    ids = [run["run_id"] for run in runs]

    def listed(**params: Any) -> list[str]:
        return [run["run_id"] for run in served.ok("/runs", **params)["runs"]]

    assert listed(thread="t-a1") == [r["run_id"] for r in runs if r["thread_id"] == "t-a1"]
    assert listed(status="error") == [r["run_id"] for r in runs if r["status"] == "error"]
    assert listed(status=["error", "success"]) == ids
    assert listed(status="error,success") == ids  # as GET /stats takes it
    assert listed(graph="team") == ids and listed(graph="other") == []
    assert listed(agent="research") == ids and listed(agent="nobody") == []
    assert listed(agent="research/researcher") == ids
    middle = runs[2]["started_at"]
    assert listed(since=middle) == ids[:3]
    assert listed(until=middle) == ids[3:]
    iso = datetime.datetime.fromtimestamp(middle, datetime.UTC).isoformat()
    assert listed(since=iso) == ids[:3]
    assert listed(since="1h") == ids and listed(until="1h") == []
    assert listed(thread="t-a2", status="success") == [
        r["run_id"] for r in runs if r["thread_id"] == "t-a2" and r["status"] == "success"
    ]


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_runs_page_through_every_run_once(served: Served, limit: int) -> None:
    paged = every_page(served, "/runs", "runs", limit=limit)
    ids = [run["run_id"] for run in paged]
    assert ids == served.alice_runs()[::-1] and len(set(ids)) == len(ids)
    first = served.ok("/runs", limit=limit)
    assert len(first["runs"]) == limit and first["cursor"] is not None


def test_another_principal_sees_nothing_of_alices_history(served: Served) -> None:
    bobs = [run["run_id"] for run in served.ok("/runs", BOB)["runs"]]
    assert bobs == [run_id for run_id, who in served.runs.items() if who == "bob"]
    alices = served.alice_runs()
    assert not set(bobs) & set(alices)
    assert served.ok("/runs", BOB, thread="t-a1")["runs"] == []
    for run_id in alices[:2]:
        for path in (f"/runs/{run_id}/events", f"/runs/{run_id}/causation", f"/events/{run_id}:1/causation"):
            response = served.get(path, BOB)
            assert response.status_code == 404, (path, response.text)
            assert "not found" in response.json()["detail"]
    assert served.get("/threads/t-a1/events", BOB).status_code == 404
    found = every_page(served, "/events", "events", BOB, limit=500)
    assert found and {event["run_id"] for event in found} == set(bobs)
    for path in ("/runs", "/events", f"/runs/{alices[0]}/events", "/threads/t-a1/events"):
        assert served.http.get(path).status_code == 401
        assert served.http.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_a_runs_events_are_its_stored_events_as_json_or_json_lines(served: Served) -> None:
    run_id = served.alice_runs()[0]
    stored = served.stored(lambda store, anyone: store.events(anyone, run_id=run_id, limit=10_000)).events
    body = served.ok(f"/runs/{run_id}/events")
    assert body["cursor"] is None and events_of(body["events"]) == stored
    assert body["events"] == [json.loads(encode(event)) for event in stored]
    lines = served.http.get(f"/runs/{run_id}/events", headers={**ALICE, "Accept": "application/x-ndjson"})
    assert lines.status_code == 200 and lines.headers["content-type"] == "application/x-ndjson"
    assert lines.content == b"".join(encode(event) + b"\n" for event in stored)
    assert served.get(f"/runs/{run_id}/events", format="jsonl").content == lines.content
    paged = every_page(served, f"/runs/{run_id}/events", "events", limit=7)
    assert events_of(paged) == stored
    after = served.ok(f"/runs/{run_id}/events", after=10)["events"]
    assert events_of(after) == [e for e in stored if e.seq > 10]
    tools = served.ok(f"/runs/{run_id}/events", type=["tool_call", "tool_result"])["events"]
    assert tools and events_of(tools) == [e for e in stored if e.type in ("tool_call", "tool_result")]
    agent = served.ok(f"/runs/{run_id}/events", agent="research")["events"]
    assert agent and all(e["agent"].startswith("research") for e in agent)
    assert len(agent) == sum(1 for e in stored if e.agent is not None and e.agent.startswith("research"))


def test_json_lines_pages_carry_their_cursor_in_a_header(served: Served) -> None:
    run_id = served.alice_runs()[1]
    stored = served.stored(lambda store, anyone: store.events(anyone, run_id=run_id, limit=10_000)).events
    lines: list[bytes] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"format": "jsonl", "limit": 50, **({"cursor": cursor} if cursor else {})}
        response = served.get(f"/runs/{run_id}/events", **params)
        lines += response.content.splitlines()
        cursor = response.headers.get("x-kiki-cursor")
        if cursor is None:
            break
    assert [decode(line) for line in lines] == stored


def test_a_threads_events_are_its_runs_oldest_first(served: Served) -> None:
    thread_runs = [run["run_id"] for run in served.ok("/runs", thread="t-a2")["runs"]][::-1]
    expected: list[StreamEvent] = []
    for run_id in thread_runs:
        expected += served.stored(lambda store, anyone, r=run_id: store.events(anyone, run_id=r, limit=10_000)).events
    assert events_of(every_page(served, "/threads/t-a2/events", "events", limit=9)) == expected
    done = served.ok("/threads/t-a2/events", type="done")["events"]
    assert [event["run_id"] for event in done] == thread_runs
    assert served.get("/threads/nope/events").status_code == 404


def test_events_across_runs_by_type_and_time(served: Served) -> None:
    results = every_page(served, "/events", "events", type="tool_result", since="1h", limit=3)
    assert {event["run_id"] for event in results} == set(served.alice_runs())
    assert all(event["type"] == "tool_result" for event in results)
    keys = [(event["ts"], event["run_id"], event["seq"]) for event in results]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    total = sum(run["tool_calls"] for run in served.ok("/runs")["runs"])
    assert len(results) == total
    middle = results[len(results) // 2]["ts"]
    later = every_page(served, "/events", "events", type="tool_result", since=middle)
    assert later == [event for event in results if event["ts"] >= middle]
    assert served.ok("/events", until=time.time() - 3600)["events"] == []


def test_the_causation_of_runs_that_no_other_run_started_is_empty(served: Served) -> None:
    run_id = served.alice_runs()[0]
    body = served.ok(f"/runs/{run_id}/causation")
    assert body["run"]["run_id"] == run_id and body["event"] is None
    assert body["causes"] == [] and body["effects"] == []
    by_event = served.ok(f"/events/{run_id}:1/causation")
    assert by_event["event"]["seq"] == 1 and by_event["event"]["run_id"] == run_id
    assert served.get(f"/events/{run_id}:99999/causation").status_code == 404


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        ("/runs", {"since": "yesterday"}, "since"),
        ("/runs", {"until": "12:xx"}, "until"),
        ("/runs", {"status": "done"}, "status"),
        ("/runs", {"limit": 0}, "limit"),
        ("/runs", {"limit": 10_001}, "limit"),
        ("/runs", {"cursor": "not-a-cursor"}, "cursor"),
        ("/events", {"type": "nonsense"}, "type"),
        ("/events", {"since": "-5h"}, "since"),
        ("/runs/{run}/events", {"after": -1}, "after"),
        ("/runs/{run}/events", {"cursor": "eyJ4Ijp9"}, "cursor"),
        ("/runs/{run}/events", {"format": "xml"}, "format"),
        ("/threads/t-a1/events", {"cursor": "WzEsMl0"}, "cursor"),
        ("/runs/{run}/causation", {"depth": 0}, "depth"),
    ],
)
def test_bad_parameters_are_a_422_naming_the_parameter(
    served: Served, path: str, params: dict[str, Any], named: str
) -> None:
    response = served.get(path.format(run=served.alice_runs()[0]), **params)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"query.{named}"), response.text


def test_a_malformed_event_id_is_a_422(served: Served) -> None:
    response = served.get("/events/no-seq-here/causation")
    assert response.status_code == 422 and "event_id" in response.json()["detail"]
