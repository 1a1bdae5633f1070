"""The AI SDK format's tool progress and tool approvals, over real runs captured with the real handler."""

from __future__ import annotations

from types import ModuleType
from typing import Annotated, Any

import pytest
from langchain_core.callbacks import adispatch_custom_event
from langchain_core.messages import AIMessage, BaseMessage, ToolCall
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command, interrupt

from kiki_events.events import CustomEvent, InterruptEvent, InterruptInfo
from kiki_events.formats.aisdk import FORMAT, AISDKFormat
from kiki_events.testing import CapturedEvents, capture_run
from tests.scenarios import frames_of, tool_agent, user
from tests.test_format_aisdk import _validate, _verify_order, parse_body

pytestmark = pytest.mark.asyncio


@tool
async def crawl(site: str) -> str:
    """Crawl a site, reporting each page."""
    for page in (1, 2):
        await adispatch_custom_event("page", {"site": site, "page": page})
    return f"crawled {site}"


@tool
def publish(title: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> str:
    """Publish a report once a person approves."""
    answer = interrupt(
        {"question": f"Publish {title}?", "tool_call_id": tool_call_id, "tool": "publish", "args": {"title": title}}
    )
    return "published" if answer["approved"] else f"not published: {answer.get('reason', '')}"


def _model(scripted: ModuleType, calls: list[ToolCall]) -> Any:
    def script(messages: list[BaseMessage]) -> AIMessage:
        return AIMessage(content="On it.", tool_calls=calls) if len(messages) == 1 else AIMessage(content="Done.")

    return scripted.ScriptedChatModel(script=script, token_delay=0.0)


def _encode(events: CapturedEvents, fmt: AISDKFormat = FORMAT) -> list[dict[str, Any]]:
    encoder = fmt.encoder()
    out = parse_body(encoder.encode_all(frames_of(events)) + encoder.finish())
    _validate(out)
    _verify_order(out, fmt.known_calls)
    return out


def _of(out: list[dict[str, Any]], kind: str, call: str | None = None) -> list[dict[str, Any]]:
    return [c for c in out if c["type"] == kind and (call is None or c.get("toolCallId") == call)]


async def test_progress_of_a_tool_call_is_preliminary_output_replaced_by_the_final_one(scripted: ModuleType) -> None:
    calls = [ToolCall(name="crawl", args={"site": s}, id=f"call-{s}") for s in ("a", "b")]
    events = await capture_run(tool_agent(_model(scripted, calls), [crawl]), user("crawl both"))
    out = _encode(events)

    for site in ("a", "b"):
        outputs = _of(out, "tool-output-available", f"call-{site}")
        assert [c.get("preliminary", False) for c in outputs] == [True, True, False]
        assert [c["output"] for c in outputs[:2]] == [{"site": site, "page": 1}, {"site": site, "page": 2}]
        assert outputs[2]["output"] == f"crawled {site}"
        [ready] = _of(out, "tool-input-available", f"call-{site}")
        assert out.index(ready) < out.index(outputs[0])
    assert not _of(out, "data-kiki-custom")


async def test_progress_after_the_final_output_or_outside_a_call_stays_a_data_part(scripted: ModuleType) -> None:
    calls = [ToolCall(name="crawl", args={"site": "a"}, id="call-a")]
    events = await capture_run(tool_agent(_model(scripted, calls), [crawl]), user("crawl"))
    result = events.of_type("tool_result")[0]
    seq = events[-1].seq

    def custom(call_id: str | None, offset: int) -> CustomEvent:
        return CustomEvent(run_id=result.run_id, seq=seq + offset, ts=result.ts, name="page", tool_call_id=call_id)

    late, stray, plain = custom("call-a", 1), custom("call-unknown", 2), custom(None, 3)
    done = events.done.model_validate({**events.done.model_dump(), "seq": seq + 4})
    out = _encode(CapturedEvents([*events[:-1], late, stray, plain, done]))

    assert [c["data"].get("tool_call_id") for c in _of(out, "data-kiki-custom")] == ["call-a", "call-unknown", None]
    assert _of(out, "tool-output-available", "call-a")[-1]["output"] == "crawled a"


async def test_a_tool_approval_is_an_approval_request_and_the_resumed_run_updates_the_same_call(
    scripted: ModuleType,
) -> None:
    calls = [ToolCall(name="publish", args={"title": "Redis"}, id="call-p")]
    graph = tool_agent(_model(scripted, calls), [publish], InMemorySaver())
    config: RunnableConfig = {"configurable": {"thread_id": "approve-1"}}
    events = await capture_run(graph, user("publish it"), config)
    assert events.done.status == "interrupted"
    [info] = events.of_type("interrupt")[0].interrupts  # type: ignore[union-attr]
    out = _encode(events)

    [ready] = _of(out, "tool-input-available", "call-p")
    [request] = _of(out, "tool-approval-request")
    assert ready["input"] == {"title": "Redis"} and out.index(ready) < out.index(request)
    assert request == {"type": "tool-approval-request", "approvalId": info.id, "toolCallId": "call-p"}
    assert not _of(out, "data-kiki-interrupt") and not _of(out, "tool-output-available")
    assert out[-1] == {"type": "finish"}

    # The answer resumes the run: the call the client holds gets its output, announced no second time.
    resumed = await capture_run(graph, Command(resume={"approved": False, "reason": "not yet"}), config)
    out = _encode(resumed, AISDKFormat(known_calls=frozenset({"call-p"})))
    assert not _of(out, "tool-input-start") and not _of(out, "tool-input-available")
    [result] = _of(out, "tool-output-available", "call-p")
    assert result["output"] == "not published: not yet" and out[-1] == {"type": "finish"}


async def test_an_approval_the_stream_never_announced_is_announced_from_the_value() -> None:
    approval = {"question": "Run it?", "tool_call_id": "call-x", "tool": "shell", "args": {"cmd": "ls"}}
    event = InterruptEvent(
        run_id="r1",
        seq=1,
        ts=1.0,
        interrupts=(InterruptInfo(id="i-1", value=approval), InterruptInfo(id="i-2", value="Why?")),
    )
    out = _encode(CapturedEvents([event]))

    [ready] = _of(out, "tool-input-available")
    assert ready == {
        "type": "tool-input-available",
        "toolCallId": "call-x",
        "toolName": "shell",
        "input": {"cmd": "ls"},
        "dynamic": True,
    }
    assert _of(out, "tool-approval-request") == [
        {"type": "tool-approval-request", "approvalId": "i-1", "toolCallId": "call-x"}
    ]
    [others] = _of(out, "data-kiki-interrupt")
    assert others["data"]["interrupts"] == [{"id": "i-2", "value": "Why?"}]


async def test_a_call_made_available_early_is_not_announced_again(scripted: ModuleType) -> None:
    calls = [ToolCall(name="crawl", args={"site": "a"}, id="call-a")]
    events = await capture_run(tool_agent(_model(scripted, calls), [crawl]), user("crawl"))
    end = next(e for e in events if e.type == "tool_call" and e.phase == "end")  # type: ignore[union-attr]
    progress = next(e for e in events if e.type == "custom")
    # The progress arrives while the call's arguments still stream: its end comes after.
    moved = [e for e in events if e is not end and e is not progress]
    moved.insert(moved.index(next(e for e in moved if e.type == "tool_result")), end)
    moved.insert(moved.index(end), progress)
    out = _encode(CapturedEvents(e.model_validate({**e.model_dump(), "seq": i + 1}) for i, e in enumerate(moved)))

    assert len(_of(out, "tool-input-start", "call-a")) == len(_of(out, "tool-input-available", "call-a")) == 1
    assert [c.get("preliminary", False) for c in _of(out, "tool-output-available", "call-a")] == [True, True, False]
