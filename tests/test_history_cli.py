"""History over HTTP with PostgreSQL and without a store (from memory), and ``kiki-events history``
end to end against a live server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from kiki_events.codec import decode, encode
from tests.history_served import BOB, Served, served_history

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, research_team: ModuleType) -> Iterator[Served]:
    path = tmp_path_factory.mktemp("history") / "history.sqlite"
    with served_history(research_team, {"path": str(path)}) as served:
        yield served


def test_postgresql_history_lists_runs_and_pages_through_events(postgres_dsn: str, research_team: ModuleType) -> None:
    with served_history(research_team, {"backend": "postgres", "dsn": postgres_dsn}) as served:
        runs = served.ok("/runs")["runs"]
        assert [run["run_id"] for run in runs] == served.alice_runs()[::-1]
        assert served.ok("/runs", status="error")["runs"] == [r for r in runs if r["status"] == "error"]
        pages = [served.ok("/runs", limit=2)]
        while pages[-1]["cursor"] is not None:
            pages.append(served.ok("/runs", limit=2, cursor=pages[-1]["cursor"]))
        assert [run for page in pages for run in page["runs"]] == runs
        assert [run["run_id"] for run in served.ok("/runs", BOB)["runs"]] == [
            run_id for run_id, who in served.runs.items() if who == "bob"
        ]
        run_id = runs[0]["run_id"]
        stored = served.stored(lambda store, anyone: store.events(anyone, run_id=run_id, limit=10_000)).events
        assert len(stored) == runs[0]["events"]
        lines = served.get(f"/runs/{run_id}/events", format="jsonl", limit=10_000).content
        assert lines == b"".join(encode(event) + b"\n" for event in stored)
        found = served.ok("/events", type="done", since="1h")["events"]
        assert sorted(event["run_id"] for event in found) == sorted(served.alice_runs())
        assert served.get(f"/runs/{run_id}/events", BOB).status_code == 404


def test_without_a_store_the_runs_kept_in_memory_answer_in_the_same_shape(research_team: ModuleType) -> None:
    with served_history(research_team, None) as served:
        assert served.history is None
        runs = served.ok("/runs")["runs"]
        assert [run["run_id"] for run in runs] == served.alice_runs()[::-1]
        for run in runs:
            events = served.ok(f"/runs/{run['run_id']}/events")["events"]
            assert run["events"] == len(events) == run["last_seq"] > 0
            assert run["usage"] == events[-1]["usage"] and run["status"] == events[-1]["status"]
            assert run["llm_calls"] == sum(event["type"] == "llm" for event in events)
            assert "research/researcher" in run["agents"]
        assert [r["run_id"] for r in served.ok("/runs", status="error")["runs"]] == [
            r["run_id"] for r in runs if r["status"] == "error"
        ]
        ids = [r["run_id"] for r in runs]
        pages = [served.ok("/runs", limit=2)]
        while pages[-1]["cursor"] is not None:
            pages.append(served.ok("/runs", limit=2, cursor=pages[-1]["cursor"]))
        assert [run["run_id"] for page in pages for run in page["runs"]] == ids
        assert [r["run_id"] for r in served.ok("/runs", BOB)["runs"]] == [
            run_id for run_id, who in served.runs.items() if who == "bob"
        ]
        assert served.get(f"/runs/{ids[0]}/events", BOB).status_code == 404
        thread = served.ok("/threads/t-a1/events", type="done")["events"]
        assert [event["run_id"] for event in thread] == [r["run_id"] for r in runs if r["thread_id"] == "t-a1"][::-1]
        search = served.ok("/events", type="tool_result", since="1h", limit=10_000)["events"]
        assert len(search) == sum(run["tool_calls"] for run in runs)
        chain = served.ok(f"/runs/{ids[0]}/causation")
        assert chain["run"] == runs[0] and chain["causes"] == chain["effects"] == []


def history_cli(served: Served, *args: str, token: str | None = "alice-token") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("KIKI_EVENTS_TOKEN", None)
    if token is not None:
        env["KIKI_EVENTS_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "kiki_events.cli", "history", *args, "--url", served.url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_history_runs_prints_one_line_per_run_or_json(served: Served) -> None:
    runs = served.ok("/runs")["runs"]
    text = history_cli(served, "runs")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == len(runs)
    for line, run in zip(lines, runs, strict=True):
        assert run["run_id"] in line and run["status"] in line and f"events={run['events']}" in line
    as_json = history_cli(served, "runs", "--json", "--status", "error")
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [r for r in runs if r["status"] == "error"]
    first = history_cli(served, "runs", "--limit", "2")
    assert first.stdout.splitlines()[-1].startswith("(more: --cursor ")
    every = history_cli(served, "runs", "--limit", "2", "--all", "--json")
    assert [json.loads(line) for line in every.stdout.splitlines()] == runs
    bob = history_cli(served, "runs", "--json", token="bob-token")
    assert {json.loads(line)["run_id"] for line in bob.stdout.splitlines()}.isdisjoint(served.alice_runs())


def test_history_events_and_search_print_the_stored_events(served: Served) -> None:
    run_id = served.alice_runs()[0]
    stored = served.stored(lambda store, anyone: store.events(anyone, run_id=run_id, limit=10_000)).events
    as_json = history_cli(served, "events", "--run", run_id, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert [decode(line) for line in as_json.stdout.splitlines()] == stored
    text = history_cli(served, "events", "--run", run_id, "--type", "done")
    assert len(text.stdout.splitlines()) == 1 and f"{run_id}:{stored[-1].seq}" in text.stdout
    limited = history_cli(served, "events", "--thread", "t-a1", "--limit", "5", "--json")
    assert len(limited.stdout.splitlines()) == 5
    found = history_cli(served, "search", "--type", "tool_result", "--since", "1h", "--json")
    results = [decode(line) for line in found.stdout.splitlines()]
    assert results and {event.type for event in results} == {"tool_result"}
    assert {event.run_id for event in results} == set(served.alice_runs())


def test_history_causation_prints_the_chain(served: Served) -> None:
    run_id = served.alice_runs()[0]
    text = history_cli(served, "causation", "--run", run_id)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0].startswith("run ") and run_id in text.stdout
    assert "causes: none" in text.stdout and "effects: none" in text.stdout
    as_json = history_cli(served, "causation", "--event", f"{run_id}:1", "--json")
    body: dict[str, Any] = json.loads(as_json.stdout)
    assert body["event"]["seq"] == 1 and body["run"]["run_id"] == run_id


def test_history_errors_are_one_line_and_exit_1(served: Served) -> None:
    run_id = served.alice_runs()[0]
    other = history_cli(served, "events", "--run", run_id, token="bob-token")
    assert other.returncode == 1 and other.stdout == ""
    assert other.stderr.strip() == f"kiki-events history events: 404: run {run_id!r} not found"
    anonymous = history_cli(served, "runs", token=None)
    assert anonymous.returncode == 1 and "401: authentication required" in anonymous.stderr
    bad = history_cli(served, "runs", "--since", "yesterday")
    assert bad.returncode == 1 and "query.since" in bad.stderr
    wrong = history_cli(served, "runs", "--limit", "0")
    assert wrong.returncode == 2 and "--limit" in wrong.stderr
    after = history_cli(served, "events", "--thread", "t-a1", "--after", "3")
    assert after.returncode == 2 and after.stderr.strip() == "kiki-events history events: --after: only with --run"
    assert "alice-token" not in other.stderr + anonymous.stderr + bad.stderr


def test_an_unreachable_server_is_one_line(served: Served) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    closed = subprocess.run(
        [sys.executable, "-m", "kiki_events.cli", "history", "runs", "--url", "http://127.0.0.1:9"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert closed.returncode == 1 and closed.stderr.startswith(
        "kiki-events history runs: cannot reach http://127.0.0.1:9"
    )
    assert len(closed.stderr.splitlines()) == 1
