"""The AG-UI format's tool progress and interrupt entries, from real runs, checked with the protocol's models."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from langchain_core.callbacks import adispatch_custom_event
from langchain_core.messages import AIMessage, BaseMessage, ToolCall
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Send, interrupt

from kiki_events.events import InterruptInfo
from kiki_events.formats.aguiparts import APPROVAL_SCHEMA, PROGRESS_NAME, interrupt_of
from kiki_events.testing import capture_run
from tests.scenarios import frames_of, tool_agent, user
from tests.test_format_agui import _check, _of


@tool
async def crawl(site: str) -> str:
    """Crawl a site, reporting each page."""
    for page in (1, 2):
        await adispatch_custom_event("page", {"site": site, "page": page})
    return f"crawled {site}"


def progress_graph(scripted: ModuleType) -> Any:
    """Two parallel ``crawl`` calls reporting pages, and a custom event outside any tool."""
    calls = [ToolCall(name="crawl", args={"site": s}, id=f"call-{s}") for s in ("a", "b")]

    def script(messages: list[BaseMessage]) -> AIMessage:
        return AIMessage(content="", tool_calls=calls) if len(messages) == 1 else AIMessage(content="done")

    crawler = tool_agent(scripted.ScriptedChatModel(script=script, token_delay=0.0), [crawl])

    async def plan(state: MessagesState) -> dict[str, Any]:
        await adispatch_custom_event("plan", {"steps": 2})
        return {}

    builder = StateGraph(MessagesState)
    builder.add_node("plan", plan)
    builder.add_node("crawler", crawler)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "crawler")
    return builder.compile()


async def _progress_run(scripted: ModuleType) -> Any:
    return await capture_run(progress_graph(scripted), user("crawl a and b"))


@pytest.mark.asyncio
async def test_a_tool_calls_progress_is_an_activity_for_1_0_and_a_named_custom_event_for_0_0_x(
    scripted: ModuleType,
) -> None:
    events = await _progress_run(scripted)
    v1, legacy = _check(frames_of(events)), _check(frames_of(events), v1=False)

    # 1.0: one activity per call and event name, each snapshot replacing the last (the latest progress).
    snapshots = _of(v1, "ACTIVITY_SNAPSHOT")
    assert len(snapshots) == 4
    for call, site in (("call-a", "a"), ("call-b", "b")):
        mine = [e for e in snapshots if e["content"]["toolCallId"] == call]
        assert [e["messageId"] for e in mine] == [f"{call}:progress:page"] * 2
        assert [e["content"] for e in mine] == [
            {"toolCallId": call, "name": "page", "data": {"site": site, "page": page}} for page in (1, 2)
        ]
        assert {e["activityType"] for e in mine} == {"page"} and all("replace" not in e for e in mine)
        # Between the call's end and its result.
        [end] = [e for e in _of(v1, "TOOL_CALL_END") if e["toolCallId"] == call]
        [result] = [e for e in _of(v1, "TOOL_CALL_RESULT") if e["toolCallId"] == call]
        assert all(v1.index(end) < v1.index(e) < v1.index(result) for e in mine)
    # A custom event outside a tool stays a plain CUSTOM event, in both versions.
    for out in (v1, legacy):
        assert [e["value"] for e in _of(out, "CUSTOM") if e["name"] == "plan"] == [{"steps": 2}]
    # 0.0.x: the same content, as a CUSTOM event it knows.
    assert not _of(legacy, "ACTIVITY_SNAPSHOT")
    progress = [e["value"] for e in _of(legacy, "CUSTOM") if e["name"] == PROGRESS_NAME]
    assert progress == [e["content"] for e in snapshots]


def _asking_graph() -> Any:
    """Three reviewers in parallel: a tool approval, a choice, and a plain string question."""
    values: dict[str, Any] = {
        "publish": {
            "question": "Publish the report on Redis?",
            "tool_call_id": "call-pub",
            "tool": "publish",
            "args": {"topic": "Redis"},
        },
        "tone": {"question": "Which tone?", "choices": ["formal", "casual"]},
        "note": "Anything to add?",
    }

    def fan_out(state: MessagesState) -> list[Send]:
        return [Send("ask", {"messages": [], "which": name}) for name in values]

    def ask(state: dict[str, Any]) -> dict[str, Any]:
        return {"messages": [AIMessage(content=str(interrupt(values[state["which"]])))]}

    builder = StateGraph(MessagesState)
    builder.add_node("ask", ask)
    builder.add_conditional_edges(START, fan_out, ["ask"])
    builder.add_edge("ask", END)
    return builder.compile(checkpointer=InMemorySaver())


@pytest.mark.asyncio
async def test_interrupts_tell_a_tool_approval_from_an_input_request_with_what_to_answer() -> None:
    config: RunnableConfig = {"configurable": {"thread_id": "asks"}}
    events = await capture_run(_asking_graph(), user("review"), config)
    assert events.done.status == "interrupted"
    out = _check(frames_of(events))

    asked = {i.id: i.value for e in events.of_type("interrupt") for i in e.interrupts}  # type: ignore[attr-defined]
    entries = {e["id"]: e for e in out[-1]["outcome"]["interrupts"]}
    assert entries.keys() == asked.keys()
    by_message = {e["message"]: e for e in entries.values()}
    assert by_message["Publish the report on Redis?"] == {
        "id": by_message["Publish the report on Redis?"]["id"],
        "reason": "tool_call",
        "message": "Publish the report on Redis?",
        "toolCallId": "call-pub",
        "responseSchema": APPROVAL_SCHEMA,
    }
    tone = by_message["Which tone?"]
    assert tone["reason"] == "input_required"
    assert tone["responseSchema"] == {"type": "string", "enum": ["formal", "casual"]}
    note = by_message["Anything to add?"]
    assert note["reason"] == "input_required" and "responseSchema" not in note and "toolCallId" not in note
    # A 0.0.x client has no outcome: the interrupts reach it in the kiki.interrupt event.
    legacy = _check(frames_of(events), v1=False)
    carried = [i for e in _of(legacy, "CUSTOM") if e["name"] == "kiki.interrupt" for i in e["value"]["interrupts"]]
    assert {i["id"]: i["value"] for i in carried} == asked


def test_interrupt_values_outside_the_convention_are_shown_as_text() -> None:
    assert interrupt_of(InterruptInfo(id="i", value=None), "f") == {"id": "i", "reason": "input_required"}
    assert interrupt_of(InterruptInfo(value=[1, 2]), "f") == {"id": "f", "reason": "input_required", "message": "[1,2]"}
    odd = {"question": 3, "choices": ["a", 1], "tool_call_id": ""}
    assert interrupt_of(InterruptInfo(id="i", value=odd), "f") == {
        "id": "i",
        "reason": "input_required",
        "message": '{"question":3,"choices":["a",1],"tool_call_id":""}',
    }
    # A tool approval without a question shows its value; its answer is still {approved, reason?}.
    approval = interrupt_of(InterruptInfo(id="i", value={"tool_call_id": "c", "choices": ["x"]}), "f")
    assert approval["reason"] == "tool_call" and approval["responseSchema"] == APPROVAL_SCHEMA
    assert approval["message"] == '{"tool_call_id":"c","choices":["x"]}'
