"""Tool progress: what a tool or node reports while it runs becomes a ``custom`` event tied to its call."""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

import pytest
from langchain_core.callbacks import adispatch_custom_event
from langchain_core.messages import AIMessage, BaseMessage, ToolCall
from langchain_core.tools import tool
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, MessagesState, StateGraph

from kiki_events.config import Settings
from kiki_events.core.runrecord import RunRecord
from kiki_events.events import CustomEvent
from kiki_events.runtime import KikiRuntime
from kiki_events.testing import CapturedEvents, capture_run
from tests.scenarios import tool_agent, user

pytestmark = pytest.mark.asyncio


@tool
async def crawl(site: str) -> str:
    """Crawl a site, reporting each page."""
    for page in (1, 2):
        await adispatch_custom_event("page", {"site": site, "page": page})
        await asyncio.sleep(0)
    return f"crawled {site}"


@tool
async def index(site: str) -> str:
    """Index a site, reporting through the stream writer."""
    write = get_stream_writer()
    write({"site": site, "step": "indexing"})
    await asyncio.sleep(0.01)
    return f"indexed {site}"


def _calls(*calls: tuple[str, str, str]) -> AIMessage:
    return AIMessage(content="", tool_calls=[ToolCall(name=n, args={"site": s}, id=i) for n, s, i in calls])


def _model(scripted: ModuleType, first: AIMessage) -> Any:
    def script(messages: list[BaseMessage]) -> AIMessage:
        return first if len(messages) == 1 else AIMessage(content="done")

    return scripted.ScriptedChatModel(script=script, token_delay=0.0)


def _custom(events: CapturedEvents) -> list[CustomEvent]:
    return [e for e in events.of_type("custom") if isinstance(e, CustomEvent)]


def _record_events(record: RunRecord) -> CapturedEvents:
    frames, gap = record.log.read(0, 1_000_000)
    assert gap is None
    return CapturedEvents(frame.event for frame in frames)


async def test_custom_events_of_parallel_tool_calls_carry_their_own_call(scripted: ModuleType) -> None:
    first = _calls(("crawl", "a.example", "call-a"), ("crawl", "b.example", "call-b"))
    graph = tool_agent(_model(scripted, first), [crawl])

    events = await capture_run(graph, user("crawl both"))

    events.check_invariants()
    by_call = {(e.tool_call_id, e.data["site"], e.data["page"]) for e in _custom(events)}
    assert by_call == {
        ("call-a", "a.example", 1),
        ("call-a", "a.example", 2),
        ("call-b", "b.example", 1),
        ("call-b", "b.example", 2),
    }
    assert {e.agent for e in _custom(events)} == {"tools"}
    results = {e.tool_call_id: e.seq for e in events.of_type("tool_result")}  # type: ignore[union-attr]
    for event in _custom(events):
        assert event.seq < results[event.tool_call_id]  # type: ignore[index]


async def test_a_custom_event_outside_a_tool_has_no_call(scripted: ModuleType) -> None:
    async def step(state: MessagesState) -> dict[str, list[BaseMessage]]:
        await adispatch_custom_event("note", {"ok": True})
        return {"messages": []}

    builder = StateGraph(MessagesState)
    builder.add_node("stepper", step)
    builder.add_edge(START, "stepper")
    builder.add_edge("stepper", END)

    events = await capture_run(builder.compile(), user("x"))

    assert [(e.agent, e.name, e.tool_call_id) for e in _custom(events)] == [("stepper", "note", None)]


async def test_stream_writer_writes_of_a_served_run_become_events_tied_to_the_running_call(
    scripted: ModuleType,
) -> None:
    graph = tool_agent(_model(scripted, _calls(("index", "c.example", "call-c"))), [index])

    def noted(state: MessagesState) -> dict[str, list[BaseMessage]]:
        get_stream_writer()({"note": "planning"})
        return {"messages": []}

    planner = StateGraph(MessagesState)
    planner.add_node("plan", noted)
    planner.add_node("work", graph)
    planner.add_edge(START, "plan")
    planner.add_edge("plan", "work")
    planner.add_edge("work", END)

    async with KikiRuntime(Settings(), graphs={"indexer": planner.compile()}) as runtime:
        handle = runtime.runs.start("indexer", user("index it"))
        assert await handle.task == "success"
        events = _record_events(handle.record)

    events.check_invariants()
    writes = [e for e in _custom(events) if e.name == "stream"]
    assert [(e.data, e.tool_call_id) for e in writes] == [
        ({"note": "planning"}, None),
        ({"site": "c.example", "step": "indexing"}, "call-c"),
    ]
    assert writes[1].agent == "work/tools"
