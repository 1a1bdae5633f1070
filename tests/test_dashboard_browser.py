"""The live dashboard (``GET /``) in a real headless Chromium against a real server.

The page starts runs of the demo research team, renders their events and must
survive a dropped connection without losing or duplicating anything. Chromium is
driven with Playwright's Python package used only as a driver for the system
browser (``/usr/bin/chromium``); no browser is ever downloaded.

Without Chromium (or Playwright) these tests skip, unless ``KIKI_REQUIRE_BROWSER=1``
is set, as in CI, where they fail instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from langchain_core.callbacks import adispatch_custom_event
from langchain_core.messages import AnyMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import interrupt
from typing_extensions import TypedDict

from kiki_events.config import Settings
from kiki_events.events import ToolResultEvent
from kiki_events.formats.kiki import SSEDecoder
from kiki_events.server.app import create_app
from kiki_events.testing import CapturedEvents
from tests.servers import iter_frames, live_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("KIKI_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(tempfile.gettempdir()) / "kiki-dashboard.png"
TASK = "Compare Redis streams and pub/sub. Make one tool fail."
XSS = '<img src=x onerror="window.__xss = 1"> &amp; <b>bold</b>'

STREAM_PATH = re.compile(r"/runs/[^/]+/stream")
ID_LINE = re.compile(rb"(?:^|\n)id:")


def _browser_missing() -> str | None:
    if not Path(CHROMIUM).is_file() or not os.access(CHROMIUM, os.X_OK):
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set KIKI_CHROMIUM)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright Python package is not installed (pip install playwright; no browser download needed)"
    return None


def _require_browser() -> None:
    reason = _browser_missing()
    if reason is None:
        return
    if os.environ.get("KIKI_REQUIRE_BROWSER") == "1":
        pytest.fail(f"KIKI_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


# ---------------------------------------------------------------------------
# A network fault injector in front of the real app
# ---------------------------------------------------------------------------


class StreamFaults:
    """ASGI middleware that breaks ``/runs/{id}/stream`` responses on request.

    * ``cut_after = K``: the next stream response stops after its K-th event frame
      plus half of the next frame; when the test calls :meth:`cut` (once it has
      seen the page apply frame K) the TCP connection is closed without ending the
      chunked body, which is what a browser sees when a proxy or the network drops
      the connection. (Closing at once would race the browser: bytes that arrive
      just before a failed load may never reach the page.)
    * ``rewind = R``: the next resumed stream request (one with a
      ``Last-Event-ID``) asks the server for R events before the one the browser
      sent, so the server resends R events the page has already applied.

    Every stream request is recorded in ``requests`` with the ``Last-Event-ID``
    the browser sent.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.cut_after: int | None = None
        self.rewind = 0
        self.requests: list[dict[str, str | None]] = []
        self.cuts = 0
        self._release = threading.Event()

    def reset(self) -> None:
        self.cut_after, self.rewind, self.cuts = None, 0, 0
        self.requests.clear()
        self._release.clear()

    def cut(self) -> None:
        """Drop the held connection now (called from the test's thread)."""
        self._release.set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not STREAM_PATH.fullmatch(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        last_id = headers.get(b"last-event-id")
        self.requests.append({"path": scope["path"], "last_event_id": last_id.decode() if last_id else None})
        if last_id and self.rewind:
            run_id, _, seq = last_id.decode().rpartition(":")
            earlier = f"{run_id}:{max(int(seq) - self.rewind, 0)}".encode()
            scope = dict(scope, headers=[(k, earlier if k == b"last-event-id" else v) for k, v in scope["headers"]])
            self.rewind = 0
        limit, self.cut_after = self.cut_after, None
        if limit is None:
            await self.app(scope, receive, send)
        else:
            await self._serve_and_cut(limit, scope, receive, send)

    async def _serve_and_cut(self, limit: int, scope: dict[str, Any], receive: Any, send: Any) -> None:
        cut = asyncio.Event()
        frames = 0
        carry = b""  # bytes of the current, not yet complete frame
        cut_in_next = False

        async def faulty_send(message: dict[str, Any]) -> None:
            nonlocal frames, carry, cut_in_next
            if cut.is_set():
                await asyncio.Event().wait()  # parked until the app task is cancelled
            if message["type"] != "http.response.body":
                await send(message)
                return
            data: bytes = message.get("body", b"")
            if cut_in_next and len(data) > 1:
                await send({"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True})
                cut.set()
                return
            text, start = carry + data, 0
            while frames < limit and (end := text.find(b"\n\n", start)) >= 0:
                if ID_LINE.search(text[start:end]):
                    frames += 1
                start = end + 2
            if frames < limit:
                carry = text[start:]
                await send(message)
                return
            cut_at = start - len(carry)
            rest = data[cut_at:]
            body = data[:cut_at] + rest[: len(rest) // 2]
            await send({"type": "http.response.body", "body": body, "more_body": True})
            if rest:
                cut.set()
            else:
                cut_in_next = True

        app_task = asyncio.ensure_future(self.app(scope, receive, faulty_send))
        cut_task = asyncio.ensure_future(cut.wait())
        await asyncio.wait({app_task, cut_task}, return_when=asyncio.FIRST_COMPLETED)
        cut_task.cancel()
        if cut.is_set():
            await asyncio.to_thread(self._release.wait, 30)
            self.cuts += 1
            app_task.cancel()
            # Returning without finishing the response makes uvicorn close the socket.
            with contextlib.suppress(asyncio.CancelledError):
                await app_task
        else:
            await app_task


class ReviewState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


async def _announce(state: ReviewState, config: RunnableConfig) -> dict[str, Any]:
    await adispatch_custom_event("progress", {"note": XSS, "pct": 50}, config=config)
    return {}


def _approve(state: ReviewState) -> dict[str, Any]:
    interrupt({"question": f"Publish this? {XSS}"})
    return {}


def build_review_graph() -> Any:
    """A small graph that sends a custom event, then waits for human approval."""
    graph = StateGraph(ReviewState)
    graph.add_node("announce", _announce)
    graph.add_node("approve", _approve)
    graph.add_edge(START, "announce")
    graph.add_edge("announce", "approve")
    graph.add_edge("approve", END)
    return graph.compile(checkpointer=InMemorySaver())


# ---------------------------------------------------------------------------
# Fixtures: the real app with the demo graph, and one Chromium for the module
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(research_team: Any) -> Iterator[tuple[str, StreamFaults]]:
    """The real app with the demo graphs, behind the fault injector, on a real uvicorn."""
    settings = Settings.from_mapping({"sse": {"retry": "200ms"}})
    app = create_app(
        settings,
        graphs={
            "research_team": research_team.build_graph(token_delay=0.004),
            "research_team_slow": research_team.build_graph(token_delay=0.05),
            "review": build_review_graph(),
        },
    )
    faults = StreamFaults(app)
    with live_server(faults) as running:
        yield running.url, faults


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _require_browser()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="kiki-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=LAUNCH_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: Any, server: tuple[str, StreamFaults]) -> Iterator[Any]:
    server[1].reset()
    page = browser.new_page()
    page.set_default_timeout(30_000)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.problems = problems
    yield page
    page.close()


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def start_run(page: Any, base_url: str, message: str, graph: str = "research_team") -> str:
    page.goto(f"{base_url}/")
    page.wait_for_function(f"[...document.querySelectorAll('#graph option')].some(o => o.value === {graph!r})")
    page.select_option("#graph", graph)
    page.fill("#message", message)
    page.click("#run")
    page.wait_for_function("window.kikiState.runId !== null")
    return str(page.evaluate("window.kikiState.runId"))


def wait_until_finished(page: Any) -> str:
    page.wait_for_function("['success', 'error', 'interrupted', 'cancelled'].includes(window.kikiState.status)")
    return str(page.evaluate("window.kikiState.status"))


def fetch_events(base_url: str, run_id: str) -> CapturedEvents:
    """The whole run, read separately from the page with an SSE client of our own."""
    events = CapturedEvents()
    decoder = SSEDecoder()
    with (
        httpx.Client(base_url=base_url, timeout=20) as client,
        client.stream("GET", f"/runs/{run_id}/stream", headers={"Accept": "text/event-stream"}) as response,
    ):
        assert response.status_code == 200
        for frame in iter_frames(response):
            assert frame.id is not None and frame.event is not None and frame.data is not None, frame.raw
            events.append(decoder.decode(frame.id, frame.event, frame.data))
            if events[-1].type == "done":
                break
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "the run's events are not contiguous"
    return events


def rendered(page: Any) -> dict[str, Any]:
    """What the page shows: lanes, messages and tool cards, read from the DOM."""
    return page.evaluate(
        """() => {
          const text = (root, sel) => [...root.querySelectorAll(sel)].map((n) => n.textContent).join("");
          const lanes = {};
          for (const lane of document.querySelectorAll(".lane")) {
            lanes[lane.dataset.agent] = {state: lane.dataset.state,
              indicator: lane.querySelector(".indicator").textContent};
          }
          const messages = {};
          for (const msg of document.querySelectorAll(".msg")) {
            messages[msg.dataset.messageId] = {text: text(msg, ".text"), reasoning: text(msg, ".reasoning"),
              agent: msg.closest(".lane").dataset.agent};
          }
          const tools = {};
          for (const card of document.querySelectorAll(".tool")) {
            const result = card.querySelector(".tool-result");
            tools[card.dataset.toolCallId] = {name: card.querySelector(".tool-name").textContent,
              args: card.querySelector(".tool-args").textContent, state: card.dataset.state,
              result: result.hidden ? null : result.textContent, resultColor: getComputedStyle(result).color,
              agent: card.closest(".lane").dataset.agent};
          }
          return {lanes, messages, tools, usage: document.getElementById("usage").textContent,
                  status: document.getElementById("run-status").textContent,
                  connection: document.getElementById("conn").dataset.state,
                  notices: document.querySelectorAll(".notice").length};
        }"""
    )


def is_red(css_color: str) -> bool:
    r, g, b = (int(c) for c in re.findall(r"\d+", css_color)[:3])
    return r > 150 and r > g + 60 and r > b + 60


def assert_page_shows(page: Any, events: CapturedEvents) -> dict[str, Any]:
    """The page rendered exactly the run's events: every piece once, nothing else."""
    state = page.evaluate("window.kikiState")
    view = rendered(page)
    done = events.done

    assert state["runId"] == done.run_id
    assert state["lastSeq"] == done.seq
    assert state["status"] == done.status
    assert view["status"] == done.status
    assert view["connection"] == "closed"

    # One lane per agent, in any order, each with its final lifecycle state.
    agents = events.agents()
    assert set(view["lanes"]) == set(agents)
    assert set(state["agents"]) == set(agents)
    for agent in agents:
        lifecycle = [e.phase for e in events.of_type("agent_lifecycle") if e.agent == agent]
        if lifecycle:
            still_running = "paused" if done.status == "interrupted" else "stopped"
            expected = still_running if lifecycle[-1] == "started" else lifecycle[-1]
            assert view["lanes"][agent]["state"] == expected, agent
        assert state["agents"][agent]["text"] == events.text(agent), agent
        assert state["agents"][agent]["reasoning"] == events.text(agent, kind="reasoning"), agent

    # Every message rendered exactly once, token by token, in the right lane.
    tokens = events.of_type("token")
    message_ids = list(dict.fromkeys(e.message_id for e in tokens))
    assert sorted(view["messages"]) == sorted(message_ids)
    for mid in message_ids:
        mine = [e for e in tokens if e.message_id == mid]
        shown = view["messages"][mid]
        assert shown["text"] == "".join(e.text for e in mine if e.kind == "text"), mid
        assert shown["reasoning"] == "".join(e.text for e in mine if e.kind == "reasoning"), mid
        assert shown["agent"] == mine[0].agent

    # Tool calls: name, streamed args, final args, paired result; errors in red.
    calls = events.tool_calls()
    assert set(view["tools"]) == set(calls) == set(state["toolCalls"])
    for call_id, call in calls.items():
        card, rec = view["tools"][call_id], state["toolCalls"][call_id]
        assert card["name"] == rec["name"] == call["name"]
        assert rec["argsText"] == call["args_text"]
        assert rec["args"] == call["args"] == json.loads(card["args"])
        result = next(e for e in events if isinstance(e, ToolResultEvent) and e.tool_call_id == call_id)
        assert rec["output"] == result.output
        assert rec["error"] == result.error
        if result.error is None:
            assert card["state"] == "ok"
            assert card["result"] == result.output
        else:
            assert card["state"] == "error"
            assert card["result"] == result.error
            assert is_red(card["resultColor"]), card["resultColor"]

    usage = done.usage
    assert state["usage"] == usage.model_dump()
    assert f"{usage.total_tokens} tokens" in view["usage"]
    return state


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def test_live_run_renders_every_event(page: Any, browser: Any, server: tuple[str, StreamFaults]) -> None:
    base_url, faults = server
    run_id = start_run(page, base_url, TASK)

    # Text streams in while the run is still going.
    page.wait_for_function(
        "Object.values(window.kikiState.agents).some((a) => a.text.length > 0) && window.kikiState.status === 'running'"
    )
    assert wait_until_finished(page) == "success"
    assert len(faults.requests) == 1, "one EventSource connection, no reconnect"
    events = fetch_events(base_url, run_id)
    state = assert_page_shows(page, events)

    assert {"supervisor", "research/researcher", "research/tools", "writer"} <= set(state["agents"])
    assert all(a["state"] == "completed" for a in state["agents"].values())
    errors = [c for c in state["toolCalls"].values() if c["error"] is not None]
    oks = [c for c in state["toolCalls"].values() if c["error"] is None]
    assert len(errors) == 1 and len(oks) >= 1
    assert state["duplicates"] == 0
    assert state["notices"] == [] and state["warnings"] == []
    assert page.problems == []
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # Another tab joins the finished run by its URL and shows the same thing.
    other = browser.new_page()
    try:
        other.goto(f"{base_url}/#run={run_id}")
        assert wait_until_finished(other) == "success"
        assert_page_shows(other, events)
        assert other.evaluate("window.kikiState.duplicates") == 0
    finally:
        other.close()


def test_dropped_connection_resumes_without_loss_or_duplicates(page: Any, server: tuple[str, StreamFaults]) -> None:
    base_url, faults = server
    faults.cut_after = 40
    run_id = start_run(page, base_url, TASK)
    page.wait_for_function("window.kikiState.lastSeq >= 40")
    assert page.evaluate("window.kikiState.lastSeq") == 40, "the half frame must not be applied"
    faults.cut()

    page.wait_for_function("window.kikiState.connection === 'reconnecting' || window.kikiState.reconnects > 0")
    assert wait_until_finished(page) == "success"
    events = fetch_events(base_url, run_id)
    state = assert_page_shows(page, events)

    seen = f"stream requests: {faults.requests}, page: {page.problems}"
    assert faults.cuts == 1, seen
    assert state["reconnects"] == 1, seen
    # The browser reconnected by itself and resumed after the last complete frame;
    # the half frame that was cut off was discarded and sent again.
    resumed = faults.requests[1]
    assert resumed == {"path": f"/runs/{run_id}/stream", "last_event_id": f"{run_id}:40"}, seen
    assert state["duplicates"] == 0
    assert state["notices"] == [] and state["warnings"] == []
    # The only thing the browser complains about is the cut itself.
    assert len(page.problems) == 1 and "ERR_INCOMPLETE_CHUNKED_ENCODING" in page.problems[0], page.problems


def test_resent_events_are_ignored(page: Any, server: tuple[str, StreamFaults]) -> None:
    base_url, faults = server
    faults.cut_after, faults.rewind = 25, 7
    run_id = start_run(page, base_url, TASK)
    page.wait_for_function("window.kikiState.lastSeq >= 25")
    faults.cut()

    assert wait_until_finished(page) == "success"
    events = fetch_events(base_url, run_id)
    state = assert_page_shows(page, events)  # every token rendered exactly once

    assert faults.requests[1]["last_event_id"] == f"{run_id}:25"
    assert state["duplicates"] == 7, "the server resent events 19-25, the page must skip them"
    assert state["warnings"] == []


def test_cancel_button_cancels_the_run(page: Any, server: tuple[str, StreamFaults]) -> None:
    base_url, _ = server
    run_id = start_run(page, base_url, "Write a long report on SSE.", graph="research_team_slow")
    page.wait_for_function("Object.values(window.kikiState.agents).some((a) => a.text.length > 0)")
    page.click("#cancel")

    assert wait_until_finished(page) == "cancelled"
    events = fetch_events(base_url, run_id)
    assert events.done.status == "cancelled"
    state = page.evaluate("window.kikiState")
    assert state["lastSeq"] == events.done.seq
    assert state["duplicates"] == 0
    assert page.is_disabled("#cancel")
    assert page.text_content("#run-status") == "cancelled"
    assert page.problems == []


def test_errors_custom_events_and_interrupts_are_shown_as_text(page: Any, server: tuple[str, StreamFaults]) -> None:
    base_url, _ = server

    # The demo writer crashes; its error (with a credential in it) arrives redacted.
    run_id = start_run(page, base_url, "Compare SSE and websockets. crash")
    assert wait_until_finished(page) == "error"
    state = assert_page_shows(page, fetch_events(base_url, run_id))
    assert state["agents"]["writer"]["state"] == "failed"
    assert [e["error_type"] for e in state["errors"]] == ["RuntimeError"]
    writer_errors = page.locator('.lane[data-agent="writer"] .item.error').all_text_contents()
    assert len(writer_errors) == 1 and writer_errors[0].startswith("RuntimeError: writer could not publish")
    assert is_red(page.locator('.lane[data-agent="writer"] .item.error').evaluate("(n) => getComputedStyle(n).color"))
    assert page.locator('.lane[data-agent="writer"] .indicator').text_content() == "✗"
    assert "hunter2" not in page.text_content("body")

    # A custom event and an interrupt, both carrying HTML that must stay text.
    run_id = start_run(page, base_url, "Review the draft", graph="review")
    assert wait_until_finished(page) == "interrupted"
    state = assert_page_shows(page, fetch_events(base_url, run_id))
    assert state["custom"] == [{"name": "progress", "data": {"note": XSS, "pct": 50}, "agent": "announce"}]
    assert [i["value"] for i in state["interrupts"]] == [{"question": f"Publish this? {XSS}"}]
    assert state["agents"]["approve"]["state"] == "paused"
    custom = page.locator('.lane[data-agent="announce"] .item.custom')
    assert custom.locator(".item-title").text_content() == "★ progress"
    assert json.loads(custom.locator(".item-body").text_content()) == {"note": XSS, "pct": 50}
    interrupt_body = page.locator("#run-feed .item.interrupt .item-body").text_content()
    assert json.loads(interrupt_body) == {"question": f"Publish this? {XSS}"}
    assert page.locator("img").count() == 0
    assert page.evaluate("window.__xss") is None
    assert page.problems == []


def test_link_to_an_unknown_run_says_so(page: Any, server: tuple[str, StreamFaults]) -> None:
    base_url, _ = server
    page.goto(f"{base_url}/#run=no-such-run")
    page.wait_for_function("window.kikiState.connection === 'disconnected'")
    state = page.evaluate("window.kikiState")
    assert state["lastSeq"] == 0 and state["agents"] == {}
    assert any("does not know this run" in w for w in state["warnings"]), state["warnings"]
    assert "does not know this run" in page.text_content("#notices")
    assert page.is_disabled("#cancel") and page.is_enabled("#run")
