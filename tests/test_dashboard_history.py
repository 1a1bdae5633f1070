"""The dashboard's history (``GET /runs``) in a real headless Chromium against a real server.

The server keeps its runs in a SQLite event store in the test's folder; real demo
runs (successes, failures, a run waiting for an answer, a cancelled one, of three
graphs) are listed with the figures the store holds, filtered by status and graph,
paged with "More" without a duplicate, and opened: a click replays the run into the
lanes. A server with the store off lists the runs it keeps in memory, and says so. The
layout is checked at several widths (screenshots under the test's tmp dir).

Without Chromium (or Playwright) these tests skip, unless ``KIKI_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiki_events.config import Settings
from kiki_events.history import ANYONE, SqliteStore, StoredRun
from kiki_events.server.app import create_app
from tests.dashboard_pages import CHROMIUM, LAUNCH_ARGS, check_layout, rendered, require_browser, wait_until_finished
from tests.servers import live_server, wait_for
from tests.test_dashboard_browser import assert_page_shows, fetch_events

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PAGE_SIZE = 20
"""Runs the dashboard asks for at a time."""
PRICES = {"scripted-1": {"input": 20.0, "output": 40.0}}
"""Figures of the test's own, so that each run's cost is shown."""
TOP_AGENTS = {"research_team": ["research", "supervisor", "writer"]}
LIST_READY = "document.getElementById('history').dataset.state === 'ready'"


def stored_runs(path: Path, **filters: Any) -> list[StoredRun]:
    """Every run the SQLite file holds (newest first), read with a store of the test's own."""

    async def read() -> list[StoredRun]:
        store = SqliteStore(path)
        await store.open()
        try:
            return (await store.runs(ANYONE, limit=1000, **filters)).runs
        finally:
            await store.close()

    # In a thread of its own: the test's thread may be running an event loop already (Playwright's).
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(read())).result(timeout=30)


def seeded_runs(client: httpx.Client) -> dict[str, list[str]]:
    """Start the demo runs the tests list; returns their ids by the status they end with."""
    tasks = {
        ("research_team", "success"): [f"Compare store number {i} and its copy" for i in range(16)],
        ("research_team", "error"): [f"Compare SSE and websockets {i}. crash" for i in range(3)],
        ("team_b", "success"): [f"Compare queue {i} and log {i}" for i in range(5)],
        ("research_team", "interrupted"): ["Compare SSE and websockets with approval"],
    }
    ids: dict[str, list[str]] = {}
    for (graph, status), messages in tasks.items():
        for message in messages:
            answer = client.post("/runs", json={"graph": graph, "message": message})
            assert answer.status_code == 202, answer.text
            ids.setdefault(status, []).append(answer.json()["run_id"])
    slow = client.post("/runs", json={"graph": "research_team_slow", "message": "Compare A and B"}).json()["run_id"]
    wait_for(lambda: client.get(f"/runs/{slow}").json()["last_seq"] > 5, what="the slow run to be under way")
    assert client.post(f"/runs/{slow}/cancel").status_code in (200, 202)
    ids["cancelled"] = [slow]
    return ids


@pytest.fixture(scope="module")
def history_server(research_team: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, dict]]:
    """A real server keeping its runs in SQLite, with the seeded runs all stored."""
    path = tmp_path_factory.mktemp("history") / "history.sqlite"
    settings = Settings.from_mapping(
        {"store": {"enabled": True, "path": str(path), "flush_interval": "2ms"}, "prices": PRICES}
    )
    app = create_app(
        settings,
        graphs={
            "research_team": research_team.build_graph(token_delay=0.0),
            "team_b": research_team.build_graph(token_delay=0.0),
            "research_team_slow": research_team.build_graph(token_delay=0.05),
        },
    )
    with live_server(app) as running, httpx.Client(base_url=running.url, timeout=20) as client:
        ids = seeded_runs(client)
        total = sum(len(v) for v in ids.values())

        def all_stored() -> bool:
            runs = stored_runs(path)
            return len(runs) == total and all(r.status != "running" for r in runs)

        wait_for(all_stored, what="every seeded run to be stored with its end")
        yield running.url, path, ids


@pytest.fixture(scope="module")
def off_server(research_team: Any) -> Iterator[str]:
    """A real server with the store off (the library's default)."""
    app = create_app(Settings(), graphs={"research_team": research_team.build_graph(token_delay=0.0)})
    with live_server(app) as running:
        yield running.url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_browser()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="kiki-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS, viewport={"width": 1400, "height": 900}
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page = browser.new_page()
    page.set_default_timeout(30_000)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.problems = problems
    yield page
    page.close()


# ---------------------------------------------------------------------------
# What the list shows, and what the store says it should
# ---------------------------------------------------------------------------


def shown_runs(page: Any) -> list[dict[str, str]]:
    return list(
        page.eval_on_selector_all(
            "#history-list .hrun",
            """(rows) => rows.map((r) => ({
                 ...Object.fromEntries([...r.children].map((c) => [c.className.slice(5), c.textContent])),
                 run_id: r.dataset.runId, state: r.dataset.status, href: r.getAttribute('href')}))""",
        )
    )


def js_seconds(s: float) -> str:
    """The dashboard's way of writing a duration (``seconds`` in dom.js)."""
    if s < 1:
        return f"{math.floor(s * 1000 + 0.5)} ms"
    return f"{s:.2f} s" if s < 60 else f"{math.floor(s / 60)} min {math.floor(s % 60 + 0.5)} s"


def js_cost(usd: float | None) -> str:
    if usd is None:
        return ""
    return f"${usd:.2f}" if usd >= 0.01 else f"${usd:.2g}"


def assert_rows_match(rows: list[dict[str, str]], runs: list[StoredRun]) -> None:
    """Each row says what the store holds for its run, in the store's order (newest first)."""
    assert [row["run_id"] for row in rows] == [run.run_id for run in runs]
    for row, run in zip(rows, runs, strict=True):
        assert row["href"] == f"#run={run.run_id}"
        assert row["state"] == run.status and run.status in row["status"]
        assert row["graph"] == run.graph
        assert row["tokens"] == f"{run.usage.total_tokens} tokens"
        assert row["duration"] == (js_seconds(run.duration_s) if run.duration_s is not None else "")
        assert row["cost"] == js_cost(run.cost_usd)
        assert row["agents"] == " · ".join(a for a in run.agents if "/" not in a)
        assert row["id"] == run.run_id
        assert row["when"] == "just now" or row["when"].endswith(" min ago")


def set_filters(page: Any, statuses: list[str], graph: str = "") -> None:
    """Tick exactly ``statuses``, pick ``graph``, and wait for the list to be read again."""
    for label in page.locator("#history-statuses .hstatus").all():
        box = label.locator("input")
        if box.is_checked() != (box.get_attribute("value") in statuses):
            box.click()
            page.wait_for_function(LIST_READY)
    if page.input_value("#history-graph") != graph:
        page.select_option("#history-graph", graph)
        page.wait_for_function(LIST_READY)


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def test_the_list_shows_the_stored_runs_and_pages_through_older_ones(
    page: Any, history_server: tuple[str, Path, dict], tmp_path: Path
) -> None:
    base_url, path, ids = history_server
    stored = stored_runs(path)
    assert len(stored) > PAGE_SIZE
    assert {run.status for run in stored} == {"success", "error", "interrupted", "cancelled"}
    assert all(run.cost_usd is not None and run.cost_usd > 0 for run in stored if run.llm_calls)

    page.goto(f"{base_url}/")
    page.wait_for_function(LIST_READY)
    assert page.is_visible("#history") and page.is_hidden("#history-hint")
    assert_rows_match(shown_runs(page), stored[:PAGE_SIZE])
    assert page.text_content("#history-count") == f"{PAGE_SIZE}+"
    check_layout(page, tmp_path / "shots", "history")

    page.click("#history-more")
    page.wait_for_function(f"document.querySelectorAll('#history-list .hrun').length === {len(stored)}")
    page.wait_for_function(LIST_READY)
    rows = shown_runs(page)
    assert len({row["run_id"] for row in rows}) == len(rows), "a run listed twice"
    assert_rows_match(rows, stored)
    assert page.is_hidden("#history-more"), "no older run left"
    assert page.text_content("#history-count") == str(len(stored))
    assert set(ids["cancelled"]) <= {row["run_id"] for row in rows if row["state"] == "cancelled"}
    check_layout(page, tmp_path / "shots", "history-all")
    assert page.problems == []


def test_the_list_filters_by_status_and_graph(page: Any, history_server: tuple[str, Path, dict]) -> None:
    base_url, path, ids = history_server
    page.goto(f"{base_url}/")
    page.wait_for_function(LIST_READY)
    offered = page.eval_on_selector_all("#history-graph option", "(os) => os.map((o) => o.value)")
    assert offered == ["", "research_team", "research_team_slow", "team_b"]

    set_filters(page, ["error"])
    assert_rows_match(shown_runs(page), stored_runs(path, status="error"))
    assert {row["run_id"] for row in shown_runs(page)} == set(ids["error"])

    set_filters(page, ["error", "interrupted", "cancelled"])  # several statuses: the query repeats status
    expected = stored_runs(path, status=["error", "interrupted", "cancelled"])
    assert_rows_match(shown_runs(page), expected)
    assert {r.status for r in expected} == {"error", "interrupted", "cancelled"}

    set_filters(page, [], "team_b")
    team_b = stored_runs(path, graph="team_b")
    assert len(team_b) == 5
    assert_rows_match(shown_runs(page), team_b)

    set_filters(page, ["error"], "team_b")
    assert shown_runs(page) == []
    assert page.text_content("#history-hint") == "No run matches these filters."

    set_filters(page, ["success"], "")  # more than a page: "More" goes on with the filters chosen
    successes = stored_runs(path, status="success")
    assert len(successes) > PAGE_SIZE
    assert_rows_match(shown_runs(page), successes[:PAGE_SIZE])
    page.click("#history-more")
    page.wait_for_function(f"document.querySelectorAll('#history-list .hrun').length === {len(successes)}")
    assert_rows_match(shown_runs(page), successes)
    assert page.problems == []


def test_a_listed_run_opens_and_replays_into_the_lanes(
    page: Any, history_server: tuple[str, Path, dict], tmp_path: Path
) -> None:
    base_url, path, ids = history_server
    page.goto(f"{base_url}/")
    page.wait_for_function(LIST_READY)
    failed = ids["error"][0]
    page.click(f'#history-list .hrun[data-run-id="{failed}"]')
    page.wait_for_function(f"window.kikiState.runId === {failed!r}")
    assert page.evaluate("location.hash") == f"#run={failed}"
    assert wait_until_finished(page) == "error"
    assert page.is_hidden("#history") and page.is_hidden("#empty") and page.is_visible("#home")
    assert_page_shows(page, fetch_events(base_url, failed))
    check_layout(page, tmp_path / "shots", "history-replayed")

    # Back to the list, then another run: the first one's cards are gone.
    page.click("#home")
    page.wait_for_function("window.kikiState.runId === null")
    page.wait_for_function(LIST_READY)
    assert page.is_visible("#history") and page.is_hidden("#run-view") and page.is_hidden("#home")
    interrupted = ids["interrupted"][0]
    page.click(f'#history-list .hrun[data-run-id="{interrupted}"]')
    assert wait_until_finished(page) == "interrupted"
    events = fetch_events(base_url, interrupted)
    assert page.evaluate("window.kikiState.lastSeq") == events.done.seq
    assert set(rendered(page)["lanes"]) == set(events.agents())
    assert page.text_content("#pending .ask-question") == "Publish the report on SSE and websockets with approval?"

    page.go_back()  # the address history goes back to the list
    page.wait_for_function("window.kikiState.runId === null")
    page.wait_for_function(LIST_READY)
    assert page.is_visible("#history")

    # A run started meanwhile (elsewhere) is listed first once the list is read again.
    with httpx.Client(base_url=base_url, timeout=20) as client:
        newest = client.post("/runs", json={"graph": "team_b", "message": "Compare one and two"}).json()["run_id"]
        wait_for(lambda: stored_runs(path)[0].run_id == newest and stored_runs(path)[0].status == "success")
    assert shown_runs(page)[0]["run_id"] != newest
    page.click("#history-refresh")
    page.wait_for_function(LIST_READY)
    assert_rows_match(shown_runs(page), stored_runs(path)[:PAGE_SIZE])
    assert page.problems == []


def test_with_the_store_off_the_page_lists_the_runs_in_memory_and_says_so(
    page: Any, off_server: str, tmp_path: Path
) -> None:
    page.goto(f"{off_server}/")
    page.wait_for_function("document.getElementById('history').dataset.state === 'ready'")
    assert page.locator("#history-list .hrun").count() == 0
    hint = page.text_content("#history-hint")
    assert hint.startswith("History is off on this server") and "store.enabled" in hint
    assert page.is_visible("#empty"), "the page still says how to start a run"
    body = {"graph": "research_team", "message": "Compare queues"}
    with httpx.stream("POST", f"{off_server}/runs/stream", json=body, timeout=30) as response:
        run_id = response.headers["x-kiki-run-id"]
        response.read()
    page.reload()
    page.wait_for_function("document.querySelectorAll('#history-list .hrun').length === 1")
    assert run_id in page.text_content("#history-list")
    assert page.get_attribute("#history", "data-source") == "memory"
    assert page.is_visible("#history-hint") and "these are the runs" in page.text_content("#history-hint")
    check_layout(page, tmp_path / "shots", "history-memory")
    assert page.problems == []
