"""The live dashboard (``GET /``) in a real headless Chromium against a real server.

The page starts runs of the demo research team, renders their events and must
survive a dropped connection without losing or duplicating anything. A person
answers a run's interrupts from the page (a choice, a tool approval, free text,
JSON) and watches the run go on; the page follows its address (``#run=<id>``);
its layout is checked at several widths (screenshots under the test's tmp dir).
Chromium is driven with Playwright's Python package used only as a driver for the
system browser (``/usr/bin/chromium``); no browser is ever downloaded.

Without Chromium (or Playwright) these tests skip, unless ``KIKI_REQUIRE_BROWSER=1``
is set, as in CI, where they fail instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import operator
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import httpx
import pytest
from langchain_core.callbacks import adispatch_custom_event
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage, ToolCall, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode
from langgraph.types import interrupt
from typing_extensions import TypedDict

from kiki_events.config import Settings
from kiki_events.events import ToolResultEvent
from kiki_events.formats.kiki import SSEDecoder
from kiki_events.server.app import create_app
from kiki_events.testing import CapturedEvents
from tests.dashboard_pages import (
    CHROMIUM,
    LAUNCH_ARGS,
    check_layout,
    rendered,
    require_browser,
    start_run,
    wait_until_finished,
)
from tests.servers import iter_frames, live_server, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TASK = "Compare Redis streams and pub/sub. Make one tool fail."
XSS = '<img src=x onerror="window.__xss = 1"> &amp; <b>bold</b>'

STREAM_PATH = re.compile(r"/runs/[^/]+/stream")
ID_LINE = re.compile(rb"(?:^|\n)id:")


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


# ---------------------------------------------------------------------------
# Graphs that ask a person: a review (free text, then JSON), a report to publish
# (a choice, then a tool approval with progress under the tool call)
# ---------------------------------------------------------------------------


class ReviewState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    answer: str


async def _announce(state: ReviewState, config: RunnableConfig) -> dict[str, Any]:
    await adispatch_custom_event("progress", {"note": XSS, "pct": 50}, config=config)
    return {}


def _approve(state: ReviewState) -> dict[str, Any]:
    return {"answer": interrupt({"question": f"Publish this? {XSS}"})}


async def _confirm(state: ReviewState, config: RunnableConfig) -> dict[str, Any]:
    confirmed = interrupt({"draft": 3, "tags": ["sse", XSS]})
    await adispatch_custom_event("answers", {"question": state["answer"], "confirm": confirmed}, config=config)
    return {}


def build_review_graph() -> Any:
    """A custom event, then a question answered in words, then a value answered with JSON."""
    graph = StateGraph(ReviewState)
    graph.add_node("announce", _announce)
    graph.add_node("approve", _approve)
    graph.add_node("confirm", _confirm)
    graph.add_edge(START, "announce")
    graph.add_edge("announce", "approve")
    graph.add_edge("approve", "confirm")
    graph.add_edge("confirm", END)
    return graph.compile(checkpointer=InMemorySaver())


LENGTH_QUESTION = {"question": "How long should the report be?", "choices": ["short", "long"]}


def _plan(state: MessagesState) -> dict[str, Any]:
    length = interrupt(LENGTH_QUESTION)
    return {"messages": [HumanMessage(f"Make it {length}.")]}


@tool
async def publish(topic: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> str:
    """Publish the report on a topic, once a person approves."""
    await adispatch_custom_event("progress", {"message": "checking the draft", "pct": 40})
    question = {"question": f"Publish the report on {topic}?", "tool_call_id": tool_call_id}
    answer = interrupt({**question, "tool": "publish", "args": {"topic": topic}})
    if not answer["approved"]:
        return f"Not published: {answer.get('reason', 'no reason given')}."
    await adispatch_custom_event("progress", {"message": "published", "pct": 100})
    return f"Published the report on {topic} ({answer.get('reason', 'no reason given')})."


def build_publish_graph(scripted: ModuleType) -> Any:
    """``plan`` asks for a length (choices); ``writer`` drafts and calls ``publish``, which asks for approval."""

    def script(messages: list[BaseMessage]) -> AIMessage:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            return AIMessage(content=f"Done. {last.text}")
        call = ToolCall(name="publish", args={"topic": "SSE"}, id="call-publish")
        return AIMessage(content=f"Here is the draft. {last.text} Publishing it now.", tool_calls=[call])

    model = scripted.ScriptedChatModel(script=script, token_delay=0.002)

    async def writer(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    def route(state: MessagesState) -> str:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else END

    graph = StateGraph(MessagesState)
    graph.add_node("plan", _plan)
    graph.add_node("writer", writer)
    graph.add_node("tools", ToolNode([publish]))
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "writer")
    graph.add_conditional_edges("writer", route, ["tools", END])
    graph.add_edge("tools", "writer")
    return graph.compile()


class PairState(TypedDict):
    picked: Annotated[list[str], operator.add]


def _asker(side: str) -> Any:
    def ask(state: PairState) -> dict[str, Any]:
        return {"picked": [f"{side}={interrupt({'question': f'Go {side}?', 'choices': ['yes', 'no']})}"]}

    return ask


def build_pair_graph() -> Any:
    """Two nodes in parallel, each asking: two interrupts pending at once."""
    graph = StateGraph(PairState)
    graph.add_node("left", _asker("left"))
    graph.add_node("right", _asker("right"))
    graph.add_edge(START, "left")
    graph.add_edge(START, "right")
    graph.add_edge("left", END)
    graph.add_edge("right", END)
    return graph.compile()


# ---------------------------------------------------------------------------
# Fixtures: the real app with the demo graph, and one Chromium for the module
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(
    research_team: Any, scripted: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, StreamFaults]]:
    """The real app with the demo graphs, behind the fault injector, on a real uvicorn.

    Its history is on (SQLite in the test's folder), as in the demo: the page lists
    the recent runs (``GET /runs``); tests/test_dashboard_history.py checks that list.
    """
    history = tmp_path_factory.mktemp("history") / "history.sqlite"
    settings = Settings.from_mapping({"sse": {"retry": "200ms"}, "store": {"enabled": True, "path": str(history)}})
    app = create_app(
        settings,
        graphs={
            "research_team": research_team.build_graph(token_delay=0.004),
            "research_team_slow": research_team.build_graph(token_delay=0.05),
            "review": build_review_graph(),
            "publish": build_publish_graph(scripted),
            "pair": build_pair_graph(),
        },
    )
    faults = StreamFaults(app)
    with live_server(faults) as running:
        yield running.url, faults


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_browser()
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


def is_red(css_color: str) -> bool:
    r, g, b = (int(c) for c in re.findall(r"\d+", css_color)[:3])
    return r > 150 and r > g + 60 and r > b + 60


OUTCOMES = {
    "success": "✓ Finished successfully",
    "error": "✗ Failed",
    "interrupted": "‖ Paused: waiting for your answer",
    "cancelled": "■ Cancelled",
}


def assert_tools_shown(view: dict[str, Any], state: dict[str, Any], events: CapturedEvents) -> None:
    """Tool calls: name, streamed args, final args, paired result; errors in red."""
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
    assert view["outcome"]["state"] == done.status and not view["outcome"]["hidden"]
    assert view["outcome"]["text"].startswith(OUTCOMES[done.status]), view["outcome"]

    # One card per agent, each with its final lifecycle state; a subgraph's agents inside their parent's.
    agents = events.agents()
    assert set(view["lanes"]) == set(agents)
    assert set(state["agents"]) == set(agents)
    for agent in agents:
        parent = agent.rpartition("/")[0] or None
        assert view["lanes"][agent]["parent"] == parent, agent
        lifecycle = [e.phase for e in events.of_type("agent_lifecycle") if e.agent == agent]
        if lifecycle:
            still_running = "paused" if done.status == "interrupted" else "stopped"
            expected = still_running if lifecycle[-1] == "started" else lifecycle[-1]
            assert view["lanes"][agent]["state"] == expected, agent
        assert state["agents"][agent]["text"] == events.text(agent), agent
        assert state["agents"][agent]["reasoning"] == events.text(agent, kind="reasoning"), agent

    # Every message rendered exactly once, token by token, in the right card.
    tokens = events.of_type("token")
    message_ids = list(dict.fromkeys(e.message_id for e in tokens))
    assert sorted(view["messages"]) == sorted(message_ids)
    for mid in message_ids:
        mine = [e for e in tokens if e.message_id == mid]
        shown = view["messages"][mid]
        assert shown["text"] == "".join(e.text for e in mine if e.kind == "text"), mid
        assert shown["reasoning"] == "".join(e.text for e in mine if e.kind == "reasoning"), mid
        assert shown["agent"] == mine[0].agent

    assert_tools_shown(view, state, events)

    # The timeline: one row per agent step, in start order, then the end.
    started = [e.agent for e in events.of_type("agent_lifecycle") if e.phase == "started"]
    steps = page.eval_on_selector_all("#timeline li.step", "(rows) => rows.map((r) => r.dataset.agent)")
    assert steps == started
    assert page.eval_on_selector("#timeline li:last-child", "(row) => row.className") == f"tl {done.status}"

    usage = done.usage
    assert state["usage"] == usage.model_dump()
    assert f"{usage.total_tokens} tokens" in view["usage"]
    return state


def answer_count(page: Any) -> int:
    return int(page.locator("#pending .ask").count())


def follow_answer(page: Any, previous: str) -> str:
    """The run the page follows after an answer: a new run on the same thread."""
    page.wait_for_function(f"window.kikiState.runId !== {previous!r} && window.kikiState.runId !== null")
    run_id = str(page.evaluate("window.kikiState.runId"))
    assert page.evaluate("location.hash") == f"#run={run_id}"
    return run_id


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def test_live_run_renders_every_event(
    page: Any, browser: Any, server: tuple[str, StreamFaults], tmp_path: Path
) -> None:
    base_url, faults = server
    run_id = start_run(page, base_url, TASK)

    # Text streams in while the run is still going.
    page.wait_for_function(
        "Object.values(window.kikiState.agents).some((a) => a.text.length > 0) && window.kikiState.status === 'running'"
    )
    assert page.is_visible("#outcome") and page.text_content("#outcome") == "Running…"
    assert page.is_visible("#conn") and page.text_content("#conn") == "live"
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
    # The end is said once, plainly: the connection pill goes, the outcome stays.
    assert page.is_hidden("#conn") and page.text_content("#run-status") == "success"
    assert page.is_hidden("#empty")
    # Who handed to whom.
    timeline = rendered(page)["timeline"]
    assert any("supervisor → research" in row for row in timeline), timeline
    assert any("research → supervisor" in row for row in timeline), timeline
    assert any("supervisor → writer" in row for row in timeline), timeline
    assert timeline[-1].startswith("✓") or "Run finished" in timeline[-1], timeline

    # Laid out as one column of cards (the timeline beside them on wide screens), nothing in a scroll box.
    facts = check_layout(page, tmp_path / "shots", "research-team")
    assert [lane["agent"] for lane in facts[1280]["lanes"]] == ["supervisor", "research", "writer"]
    assert facts[1920]["side"]["left"] >= facts[1920]["lanes"][0]["right"], "the timeline is beside the cards"
    assert facts[390]["side"]["bottom"] <= facts[390]["lanes"][0]["top"], "the timeline is above the cards"
    assert page.problems == []

    # Another tab joins the finished run by its URL and shows the same thing.
    other = browser.new_page()
    try:
        other.goto(f"{base_url}/#run={run_id}")
        assert wait_until_finished(other) == "success"
        assert_page_shows(other, events)
        assert other.evaluate("window.kikiState.duplicates") == 0
    finally:
        other.close()


def test_long_tool_output_is_folded_and_unfolds(page: Any, server: tuple[str, StreamFaults]) -> None:
    base_url, _ = server
    start_run(page, base_url, "Compare Redis streams and pub/sub")
    assert wait_until_finished(page) == "success"
    long_results = page.locator('.tool-result[data-long="yes"]')
    page.set_viewport_size({"width": 390, "height": 900})
    # The search result fits a wide card; on a phone it is folded.
    page.wait_for_function("document.querySelectorAll('.tool-result[data-long=\"yes\"]').length >= 1")
    box = long_results.first
    folded = box.locator(".clip-body").evaluate("(n) => n.getBoundingClientRect().height")
    full = box.locator(".clip-body").evaluate("(n) => n.scrollHeight")
    assert folded < full
    toggle = box.locator(".clip-toggle")
    assert toggle.text_content().startswith("Show all")
    toggle.click()
    assert box.locator(".clip-body").evaluate("(n) => n.getBoundingClientRect().height") >= full
    assert toggle.text_content() == "Show less ▴"
    assert page.problems == []


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
    assert page.text_content("#outcome").startswith("■ Cancelled after")
    # The agent that was running when the run was cancelled is shown stopped, in its card and the timeline.
    stopped = [name for name, a in state["agents"].items() if a["state"] == "stopped"]
    assert len(stopped) == 1
    assert page.locator(f'#timeline li.step[data-agent="{stopped[0]}"]').get_attribute("data-state") == "stopped"
    assert page.problems == []


def test_errors_custom_events_and_questions_are_shown_as_text(page: Any, server: tuple[str, StreamFaults]) -> None:
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
    assert page.text_content("#outcome").startswith("✗ Failed: RuntimeError: writer could not publish")
    assert "hunter2" not in page.text_content("body")

    # A custom event and a question, both carrying HTML that must stay text.
    run_id = start_run(page, base_url, "Review the draft", graph="review")
    assert wait_until_finished(page) == "interrupted"
    state = assert_page_shows(page, fetch_events(base_url, run_id))
    progress = {"name": "progress", "data": {"note": XSS, "pct": 50}, "agent": "announce", "tool_call_id": None}
    assert state["custom"] == [progress]
    assert [i["value"] for i in state["interrupts"]] == [{"question": f"Publish this? {XSS}"}]
    assert state["agents"]["approve"]["state"] == "paused"
    custom = page.locator('.lane[data-agent="announce"] .item.custom')
    assert custom.locator(".item-title").text_content() == "★ progress"
    assert json.loads(custom.locator(".item-body .clip-body").text_content()) == {"note": XSS, "pct": 50}
    assert answer_count(page) == 1
    assert page.text_content("#pending .ask-question") == f"Publish this? {XSS}"
    assert page.text_content("#pending .ask-agent") == "approve asks"
    assert page.locator("img").count() == 0
    assert page.evaluate("window.__xss") is None

    # Answered in words (Enter sends), the run goes on to a question answered with JSON.
    page.fill("#pending input.ask-text", "yes, publish it")
    page.press("#pending input.ask-text", "Enter")
    second = follow_answer(page, run_id)
    assert wait_until_finished(page) == "interrupted"
    assert json.loads(page.text_content("#pending .ask-value .clip-body")) == {"draft": 3, "tags": ["sse", XSS]}
    assert page.locator('.lane[data-agent="approve"]').get_attribute("data-state") == "completed"
    page.fill("#pending textarea.ask-text", '{"publish": true, "tags": ["sse"]}')
    page.click("#pending button.send")
    third = follow_answer(page, second)
    assert wait_until_finished(page) == "success"
    answers = page.locator('.lane[data-agent="confirm"] .item.custom .item-body .clip-body').text_content()
    assert json.loads(answers) == {"question": "yes, publish it", "confirm": {"publish": True, "tags": ["sse"]}}
    assert page.is_hidden("#pending")
    assert fetch_events(base_url, third).done.status == "success"
    assert page.locator("img").count() == 0 and page.evaluate("window.__xss") is None
    assert page.problems == []


def test_link_to_an_unknown_run_says_so(page: Any, server: tuple[str, StreamFaults]) -> None:
    base_url, _ = server
    page.goto(f"{base_url}/#run=no-such-run")
    page.wait_for_function("window.kikiState.connection === 'disconnected'")
    state = page.evaluate("window.kikiState")
    assert state["lastSeq"] == 0 and state["agents"] == {}
    assert any("does not know this run" in w for w in state["warnings"]), state["warnings"]
    assert "does not know this run" in page.text_content("#notices")
    assert "does not know this run" in page.text_content("#outcome")
    assert page.is_disabled("#cancel") and page.is_enabled("#run")


def test_a_person_answers_a_choice_and_a_tool_approval_and_the_run_goes_on(
    page: Any, server: tuple[str, StreamFaults], tmp_path: Path
) -> None:
    base_url, _ = server
    first = start_run(page, base_url, "Write about SSE", graph="publish")
    assert wait_until_finished(page) == "interrupted"
    thread_id = page.evaluate("window.kikiState.threadId")
    assert page.text_content("#outcome") == "‖ Paused: waiting for your answer"

    # A question with choices: one button each.
    assert page.text_content("#pending .ask-question") == LENGTH_QUESTION["question"]
    assert page.locator("#pending button.choice").all_text_contents() == LENGTH_QUESTION["choices"]
    page.click("#pending button.choice:text-is('long')")
    second = follow_answer(page, first)
    assert wait_until_finished(page) == "interrupted"

    # A tool approval: the call waits under the writer, its progress shown under it.
    assert page.text_content("#pending .ask-question") == "Publish the report on SSE?"
    assert page.text_content("#pending .ask-tool .tool-name") == "publish"
    assert json.loads(page.text_content("#pending .ask-args .clip-body")) == {"topic": "SSE"}
    call = rendered(page)["tools"]["call-publish"]
    assert call["agent"] == "writer" and call["state"] == "waiting"
    assert call["summary"] == 'topic: "SSE"'
    assert call["latest"] == "checking the draft · 40%"
    writer_text = page.evaluate("window.kikiState.agents.writer.text")
    assert writer_text == "Here is the draft. Make it long. Publishing it now."
    check_layout(page, tmp_path / "shots", "approval-pending")

    page.fill("#pending .ask-reason", "reads well")
    page.click("#pending button.approve")
    third = follow_answer(page, second)
    assert wait_until_finished(page) == "success"

    # The same call card got its result; its progress went on under it.
    view = rendered(page)
    call = view["tools"]["call-publish"]
    assert call["state"] == "ok" and call["result"] == "Published the report on SSE (reads well)."
    assert call["latest"] == "published · 100%"
    assert call["progress"][-1] == "published · 100%" and len(call["progress"]) >= 2
    assert page.evaluate("window.kikiState.agents.writer.text") == "Done. Published the report on SSE (reads well)."
    assert page.text_content("#run-id") == f"run {third}"
    assert any("Answered: long" in row for row in view["timeline"]), view["timeline"]
    assert any("Answered: Approved" in row for row in view["timeline"]), view["timeline"]
    assert view["outcome"]["text"].startswith("✓ Finished successfully")
    assert page.is_hidden("#pending")
    thread = httpx.get(f"{base_url}/threads/{thread_id}/state", timeout=10).json()
    assert thread["interrupts"] == []
    assert thread["values"]["messages"][-2]["content"] == "Published the report on SSE (reads well)."
    check_layout(page, tmp_path / "shots", "approval-done")
    assert page.problems == []


def test_a_rejected_tool_call_is_not_run(page: Any, server: tuple[str, StreamFaults]) -> None:
    base_url, _ = server
    first = start_run(page, base_url, "Write about SSE", graph="publish")
    assert wait_until_finished(page) == "interrupted"
    page.click("#pending button.choice:text-is('short')")
    second = follow_answer(page, first)
    assert wait_until_finished(page) == "interrupted"
    page.click("#pending button.reject")  # no reason given
    follow_answer(page, second)
    assert wait_until_finished(page) == "success"
    call = rendered(page)["tools"]["call-publish"]
    assert call["result"] == "Not published: no reason given."
    assert call["latest"] == "checking the draft · 40%"
    assert page.problems == []


def test_a_joined_interrupt_that_was_answered_elsewhere_cannot_be_answered_again(
    page: Any, server: tuple[str, StreamFaults]
) -> None:
    base_url, _ = server
    started = httpx.post(f"{base_url}/runs", json={"graph": "publish", "message": "Write"}, timeout=10).json()
    page.goto(f"{base_url}/#run={started['run_id']}")
    assert wait_until_finished(page) == "interrupted"
    page.wait_for_function("!document.querySelector('#pending button.choice').disabled")
    # Someone else answers first; a page that joins the run now sees it answered.
    asked = page.evaluate("window.kikiState.interrupts[0].id")
    body = {"graph": "publish", "thread_id": started["thread_id"], "resume": "short"}
    assert httpx.post(f"{base_url}/runs", json=body, timeout=10).status_code == 202

    def moved_on() -> bool:
        state = httpx.get(f"{base_url}/threads/{started['thread_id']}/state", timeout=10).json()
        return asked not in [i["id"] for i in state["interrupts"]]

    wait_for(moved_on, what="the thread to move past the first question")
    other = page.context.new_page()
    try:
        other.goto(f"{base_url}/#run={started['run_id']}")
        assert wait_until_finished(other) == "interrupted"
        other.wait_for_function("document.getElementById('pending').dataset.state === 'stale'")
        assert other.text_content("#pending .pending-status") == "Answered already: the thread has moved on."
        assert other.locator("#pending button.choice").evaluate_all("(bs) => bs.every((b) => b.disabled)")
    finally:
        other.close()


def test_the_page_follows_its_address(page: Any, server: tuple[str, StreamFaults]) -> None:
    base_url, _ = server
    with httpx.Client(base_url=base_url, timeout=10) as client:
        good = client.post("/runs", json={"graph": "research_team", "message": "Compare Redis streams and pub/sub"})
        bad = client.post("/runs", json={"graph": "research_team", "message": "Compare SSE and websockets. crash"})
    good_id, bad_id = good.json()["run_id"], bad.json()["run_id"]

    page.goto(f"{base_url}/#run={good_id}")
    assert wait_until_finished(page) == "success"
    assert "Redis streams" in page.evaluate("window.kikiState.agents.writer.text")

    page.evaluate(f"location.hash = '#run={bad_id}'")  # typed into the open tab's address bar
    page.wait_for_function(f"window.kikiState.runId === {bad_id!r}")
    assert wait_until_finished(page) == "error"
    assert_page_shows(page, fetch_events(base_url, bad_id))  # the first run's cards are gone
    assert "SSE and websockets" in page.text_content('.lane[data-agent="writer"]')
    assert page.text_content("#run-id") == f"run {bad_id}"

    page.go_back()
    page.wait_for_function(f"window.kikiState.runId === {good_id!r}")
    assert wait_until_finished(page) == "success"
    assert_page_shows(page, fetch_events(base_url, good_id))

    page.evaluate("location.hash = ''")
    page.wait_for_function("window.kikiState.runId === null")
    assert page.is_visible("#empty") and page.is_hidden("#run-view")
    assert page.text_content("#run-status") == "idle"
    assert page.problems == []


def test_the_empty_page_says_how_to_start(page: Any, server: tuple[str, StreamFaults], tmp_path: Path) -> None:
    base_url, _ = server
    page.goto(f"{base_url}/")
    page.wait_for_function("document.getElementById('example-curl').textContent.includes('graph')")
    hint = page.text_content("#empty")
    assert "press Run" in hint and "#run=<run id>" in hint
    page.select_option("#graph", "research_team")
    example = page.text_content("#example-curl")
    assert example.startswith(f"curl -N -X POST {base_url}/runs/stream")
    body = json.loads(example.split("-d '", 1)[1].rstrip("'"))
    assert body == {"graph": "research_team", "message": "Compare Redis streams and pub/sub"}
    assert httpx.post(f"{base_url}/runs", json=body, timeout=10).status_code == 202  # the example works
    assert page.is_hidden("#run-view") and page.is_hidden("#conn")
    check_layout(page, tmp_path / "shots", "empty")

    # An example task fills the form; Run starts it and the hint makes way for the run.
    page.click(".chip:has-text('fail')")
    assert page.input_value("#message") == "Compare Redis streams and pub/sub. Make one tool fail."
    page.click("#run")
    assert wait_until_finished(page) == "success"
    assert page.is_hidden("#empty")
    assert page.problems == []


def test_the_demo_writer_asks_before_publishing(page: Any, server: tuple[str, StreamFaults]) -> None:
    base_url, _ = server
    first = start_run(page, base_url, "Compare SSE and websockets with approval")
    assert wait_until_finished(page) == "interrupted"
    assert page.text_content("#pending .ask-agent") == "writer wants to call publish"
    assert page.text_content("#pending .ask-question") == "Publish the report on SSE and websockets with approval?"
    waiting = page.locator('.lane[data-agent="writer"] .tool[data-state="waiting"]')
    assert waiting.count() == 1 and waiting.locator(".tool-name").text_content() == "publish"
    call_id = waiting.get_attribute("data-tool-call-id")

    page.fill("#pending .ask-reason", "not today")
    page.click("#pending button.reject")
    follow_answer(page, first)
    assert wait_until_finished(page) == "success"
    card = rendered(page)["tools"][call_id]
    assert card["state"] == "ok" and card["result"] == "Not published: not today."
    assert page.evaluate("window.kikiState.agents.writer.text").startswith("I did not publish the report.")
    assert page.problems == []


def test_several_questions_are_answered_together(page: Any, server: tuple[str, StreamFaults]) -> None:
    base_url, _ = server
    first = start_run(page, base_url, "Both ways", graph="pair")
    assert wait_until_finished(page) == "interrupted"
    assert sorted(page.locator("#pending .ask-question").all_text_contents()) == ["Go left?", "Go right?"]
    send = page.locator("#pending button.send-all")
    page.wait_for_function("!document.querySelector('#pending button.choice').disabled")
    assert send.is_visible() and send.is_disabled()
    page.click("#pending .ask:has-text('Go left?') button.choice:text-is('yes')")
    assert send.is_disabled(), "one answer of two: nothing is sent yet"
    assert page.evaluate("window.kikiState.runId") == first
    page.click("#pending .ask:has-text('Go right?') button.choice:text-is('no')")
    page.click("#pending .ask:has-text('Go right?') button.choice:text-is('yes')")  # changed my mind
    send.click()
    follow_answer(page, first)
    assert wait_until_finished(page) == "success"
    thread = httpx.get(f"{base_url}/threads/{page.evaluate('window.kikiState.threadId')}/state", timeout=10).json()
    assert sorted(thread["values"]["picked"]) == ["left=yes", "right=yes"]
    assert page.problems == []
