"""The AG-UI format: real demo runs encoded, checked against the protocol's own models and ordering rules."""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import pytest
from ag_ui import core as agui
from langchain_core.messages import ToolCall

from kiki_events.core.runlog import Item
from kiki_events.events import (
    AgentLifecycleEvent,
    DoneEvent,
    InterruptEvent,
    InterruptInfo,
    LLMCallEvent,
    StatusEvent,
    StreamEvent,
    TokenEvent,
    ToolCallEvent,
)
from kiki_events.formats import get_format
from kiki_events.formats.agui import FORMAT, PROTOCOL_LEGACY, PROTOCOL_V1, AGUIEncoder
from kiki_events.testing import capture_run
from tests.scenarios import cancelled_run, frames_of, interrupted_run, one_chunk_run, user

MODELS: dict[str, type[Any]] = {
    name: getattr(agui, "".join(part.title() for part in name.split("_")) + "Event")
    for name in agui.EventType.__members__
}
ONLY_V1 = {name for name in MODELS if name.startswith(("REASONING_", "SUBAGENT_", "ACTIVITY_"))}
TERMINAL = {"RUN_FINISHED", "RUN_ERROR"}


def _encode(items: Sequence[Item], encoder: AGUIEncoder | None = None) -> list[dict[str, Any]]:
    """Encode a stream and parse its frames; each must be exactly ``data: <json>`` and a blank line."""
    encoder = encoder or FORMAT.encoder_for(PROTOCOL_V1)
    body = encoder.encode_all(items) + encoder.finish()
    assert body.endswith(b"\n\n") and b"\r" not in body
    parsed = []
    for chunk in body[:-2].split(b"\n\n"):
        assert chunk.startswith(b"data: ") and b"\n" not in chunk, chunk
        parsed.append(json.loads(chunk[6:]))
    assert encoder.encode_all(items) == b"" and encoder.finish() == b""  # nothing after the terminal event
    return parsed


def _no_nulls(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert item is not None, f"{where}.{key} is null"
            _no_nulls(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _no_nulls(item, f"{where}[{index}]")


def _validate(out: list[dict[str, Any]], *, v1: bool) -> None:
    """Every event validates against the protocol's model, with no unknown and no null keys."""
    for event in out:
        model = MODELS[event["type"]].model_validate(event)
        assert not model.model_extra, event
        data = {"CUSTOM": "value", "ACTIVITY_SNAPSHOT": "content"}.get(event["type"])  # the user's data may hold nulls
        _no_nulls({k: v for k, v in event.items() if k != data}, event["type"])
        if not v1:
            assert event["type"] not in ONLY_V1, event
            assert "outcome" not in event and "protocolVersion" not in event, event


def _verify_order(out: list[dict[str, Any]]) -> None:  # noqa: C901 - one branch per rule, kept together
    """The ordering rules of an AG-UI client's verifier (and stricter: ids are never reused)."""
    assert out[0]["type"] == "RUN_STARTED"
    assert [e["type"] in TERMINAL for e in out].count(True) == 1 and out[-1]["type"] in TERMINAL
    texts: set[str] = set()
    spans: set[str] = set()
    reasoning: set[str] = set()
    tools: dict[str, bool] = {}
    steps: set[str] = set()
    used: set[str] = set()
    ended_tools: set[str] = set()
    for event in out:
        kind, mid, call = event["type"], event.get("messageId"), event.get("toolCallId")
        if kind in ("TEXT_MESSAGE_START", "REASONING_START"):
            assert mid not in used, event
            used.add(mid)
            (texts if kind == "TEXT_MESSAGE_START" else spans).add(mid)
        elif kind in ("TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END"):
            assert mid in texts, event
            if kind.endswith("END"):
                texts.remove(mid)
        elif kind == "REASONING_MESSAGE_START":
            assert mid in spans and mid not in reasoning, event
            reasoning.add(mid)
        elif kind in ("REASONING_MESSAGE_CONTENT", "REASONING_MESSAGE_END"):
            assert mid in reasoning, event
            if kind.endswith("END"):
                reasoning.remove(mid)
        elif kind == "REASONING_END":
            assert mid in spans and mid not in reasoning, event
            spans.remove(mid)
        elif kind == "TOOL_CALL_START":
            assert call not in tools and call not in ended_tools, event
            tools[call] = False
        elif kind == "TOOL_CALL_ARGS":
            tools[call] = True
        elif kind == "TOOL_CALL_END":
            assert tools.pop(call), f"tool call {call} ended without TOOL_CALL_ARGS"
            ended_tools.add(call)
        elif kind == "TOOL_CALL_RESULT":
            assert call in ended_tools, event
        elif kind == "STEP_STARTED":
            assert event["stepName"] not in steps, event
            steps.add(event["stepName"])
        elif kind == "STEP_FINISHED":
            steps.remove(event["stepName"])
        elif kind in TERMINAL:
            assert not (texts or spans or reasoning or tools or steps), (texts, spans, reasoning, tools, steps)


def _check(items: Sequence[Item], *, v1: bool = True) -> list[dict[str, Any]]:
    out = _encode(items, FORMAT.encoder_for(PROTOCOL_V1 if v1 else None))
    _validate(out, v1=v1)
    _verify_order(out)
    return out


def _of(out: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in out if e["type"] == kind]


@pytest.mark.parametrize("v1", [True, False])
@pytest.mark.asyncio
async def test_a_demo_run_maps_text_steps_and_parallel_tool_calls(research_team: ModuleType, v1: bool) -> None:
    events = await capture_run(
        research_team.build_graph(), user("Compare Redis streams and pub/sub"), {"configurable": {"thread_id": "t-1"}}
    )
    out = _check(frames_of(events), v1=v1)

    run_id = events.runs()[0]
    assert out[0] == {
        "type": "RUN_STARTED",
        "threadId": "t-1",
        "runId": run_id,
        **({"protocolVersion": "1.0"} if v1 else {}),
    }
    finished = {"type": "RUN_FINISHED", "threadId": "t-1", "runId": run_id}
    assert out[-1] == ({**finished, "outcome": {"type": "success"}} if v1 else finished)
    assert "".join(e["delta"] for e in _of(out, "TEXT_MESSAGE_CONTENT")) == events.text()
    assert {e["stepName"] for e in _of(out, "STEP_STARTED")} == set(events.agents())
    calls = events.tool_calls()
    assert len(calls) == 2  # the researcher calls both tools in one turn
    for call_id, call in calls.items():
        start = [e for e in _of(out, "TOOL_CALL_START") if e["toolCallId"] == call_id]
        assert [e["toolCallName"] for e in start] == [call["name"]]
        args = "".join(e["delta"] for e in _of(out, "TOOL_CALL_ARGS") if e["toolCallId"] == call_id)
        assert json.loads(args) == call["args"]
        [result] = [e for e in _of(out, "TOOL_CALL_RESULT") if e["toolCallId"] == call_id]
        assert result == {
            "type": "TOOL_CALL_RESULT",
            "messageId": f"{call_id}:result",
            "toolCallId": call_id,
            "content": call["output"],
            "role": "tool",
        }
    llm_calls = [e for e in _of(out, "CUSTOM") if e["name"] == "kiki.llm"]
    assert len(llm_calls) == len(events.of_type("llm"))
    # A message ends at its llm event, or where a tool call of it starts.
    for end in _of(out, "TEXT_MESSAGE_END"):
        after = out[out.index(end) + 1]
        ours = f"{run_id}:{after.get('value', {}).get('message_id')}"  # AG-UI ids are <run_id>:<message_id>
        assert (after["type"], after.get("name"), ours) == ("CUSTOM", "kiki.llm", end["messageId"]) or (
            after["type"],
            after.get("parentMessageId"),
        ) == ("TOOL_CALL_START", end["messageId"]), after


@pytest.mark.asyncio
async def test_a_failed_tool_is_a_result_with_the_error_as_content(research_team: ModuleType) -> None:
    events = await capture_run(research_team.build_graph(), user("Please fail to fetch the Redis docs"))
    out = _check(frames_of(events))

    [failed] = [c for c in events.tool_calls().values() if c.get("error")]
    results = {e["content"] for e in _of(out, "TOOL_CALL_RESULT")}
    assert f"PermissionError: {failed['error']}" in results
    assert out[-1]["outcome"] == {"type": "success"}


@pytest.mark.parametrize("v1", [True, False])
@pytest.mark.asyncio
async def test_a_crash_ends_with_one_redacted_run_error(research_team: ModuleType, v1: bool) -> None:
    events = await capture_run(research_team.build_graph(), user("Compare queues and crash"))
    out = _check(frames_of(events), v1=v1)

    [error] = events.of_type("error")
    assert out[-1] == {"type": "RUN_ERROR", "message": f"RuntimeError: {error.message}", "code": "RuntimeError"}  # type: ignore[union-attr]
    assert b"hunter2" not in json.dumps(out).encode()
    # The writer's step and its message were ended before the error; the done after it is not sent.
    assert _of(out, "STEP_FINISHED")[-1]["stepName"] == "writer"
    assert not [e for e in _of(out, "CUSTOM") if e["name"] == "kiki.done"]


@pytest.mark.parametrize("v1", [True, False])
@pytest.mark.asyncio
async def test_an_interrupt_finishes_the_run_with_an_interrupt_outcome(v1: bool) -> None:
    events = await interrupted_run()
    assert events.done.status == "interrupted"
    out = _check(frames_of(events), v1=v1)

    [info] = events.of_type("interrupt")[0].interrupts  # type: ignore[union-attr]
    carried = [e for e in _of(out, "CUSTOM") if e["name"] == "kiki.interrupt"]
    assert carried and carried[0]["value"]["interrupts"][0]["value"] == "Publish the report?"
    assert out.index(carried[0]) < len(out) - 1
    if v1:
        outcome = {
            "type": "interrupt",
            "interrupts": [{"id": info.id, "reason": "input_required", "message": "Publish the report?"}],
        }
        assert out[-1] == {"type": "RUN_FINISHED", "threadId": "hitl", "runId": events.runs()[0], "outcome": outcome}
    else:
        assert out[-1] == {"type": "RUN_FINISHED", "threadId": "hitl", "runId": events.runs()[0]}


@pytest.mark.parametrize("v1", [True, False])
@pytest.mark.asyncio
async def test_a_cancelled_run_closes_its_open_message(scripted: ModuleType, v1: bool) -> None:
    events = await cancelled_run(scripted)
    assert events.done.status == "cancelled"
    out = _check(frames_of(events), v1=v1)

    assert _of(out, "TEXT_MESSAGE_END") and _of(out, "STEP_FINISHED")
    if v1:
        assert out[-1]["type"] == "RUN_FINISHED" and out[-1]["outcome"] == {"type": "cancelled"}
    else:
        assert out[-1] == {"type": "RUN_ERROR", "message": "the run was cancelled", "code": "cancelled"}


@pytest.mark.asyncio
async def test_parallel_tool_calls_in_one_chunk_each_get_their_arguments(scripted: ModuleType) -> None:
    calls = [ToolCall(name="lookup", args={"key": key}, id=f"call-{key}") for key in ("a", "b")]
    events = await one_chunk_run(scripted)
    out = _check(frames_of(events))

    starts = _of(out, "TOOL_CALL_START")
    assert [e["toolCallId"] for e in starts] == ["call-a", "call-b"]
    [first_text] = [e for e in _of(out, "TEXT_MESSAGE_START") if e["messageId"] == starts[0]["parentMessageId"]]
    assert out.index(first_text) < out.index(starts[0])
    assert starts[0]["parentMessageId"] == starts[1]["parentMessageId"]
    for call in calls:
        args = [e["delta"] for e in _of(out, "TOOL_CALL_ARGS") if e["toolCallId"] == call["id"]]
        assert json.loads("".join(args)) == call["args"]
    assert {e["content"] for e in _of(out, "TOOL_CALL_RESULT")} == {"found a", "found b"}


_ENV: dict[str, Any] = {"run_id": "r1", "ts": 1.0}


def _token(seq: int, text: str, kind: str = "text", message_id: str = "m1") -> TokenEvent:
    return TokenEvent(**_ENV, seq=seq, agent="thinker", message_id=message_id, text=text, kind=kind)  # type: ignore[arg-type]


def _reasoning_run() -> list[StreamEvent]:
    return [
        StatusEvent(**_ENV, seq=1, status="started", graph="g"),
        AgentLifecycleEvent(**_ENV, seq=2, agent="thinker", phase="started"),
        _token(3, "hmm", "reasoning"),
        _token(4, " ok", "reasoning"),
        _token(5, "Answer"),
        ToolCallEvent(**_ENV, seq=6, phase="start", tool_call_id="c1", name="lookup", message_id="m1"),
        ToolCallEvent(**_ENV, seq=7, phase="end", tool_call_id="c1", args={"key": "x"}),
        _token(8, " more"),
        LLMCallEvent(**_ENV, seq=9, message_id="m1", status="success", duration_s=0.1),
        AgentLifecycleEvent(**_ENV, seq=10, agent="thinker", phase="completed"),
        DoneEvent(**_ENV, seq=11, status="success"),
    ]


@pytest.mark.parametrize("v1", [True, False])
def test_reasoning_text_and_an_unstreamed_tool_call(v1: bool) -> None:
    out = _check(frames_of(_reasoning_run()), v1=v1)

    assert out[0]["threadId"] == "r1"  # no thread: the run is its own conversation
    assert [e["delta"] for e in _of(out, "TOOL_CALL_ARGS")] == ['{"key":"x"}']
    assert [e["delta"] for e in _of(out, "TEXT_MESSAGE_CONTENT")] == ["Answer", " more"]
    # Text resumed after the tool call goes to a continuation message.
    assert [e["messageId"] for e in _of(out, "TEXT_MESSAGE_START")] == ["r1:m1", "r1:m1#2"]
    assert _of(out, "TOOL_CALL_START")[0]["parentMessageId"] == "r1:m1"
    if v1:
        assert [e["delta"] for e in _of(out, "REASONING_MESSAGE_CONTENT")] == ["hmm", " ok"]
        assert out.index(_of(out, "REASONING_END")[0]) < out.index(_of(out, "TEXT_MESSAGE_START")[0])
    else:
        assert [e["value"]["text"] for e in _of(out, "CUSTOM") if e["name"] == "kiki.token"] == ["hmm", " ok"]


def test_a_stream_cut_short_still_closes_everything_once() -> None:
    frames = frames_of(_reasoning_run()[:6])
    gap = StatusEvent(**_ENV, seq=0, status="gap", first_seq=2, detail="older events are gone")
    out = _check([gap, *frames[1:]])  # joined after a gap: no status started

    assert out[0] == {"type": "RUN_STARTED", "threadId": "r1", "runId": "r1", "protocolVersion": "1.0"}
    assert out[1]["type"] == "CUSTOM" and out[1]["name"] == "kiki.status" and out[1]["value"]["status"] == "gap"
    assert out[-1] == {
        "type": "RUN_ERROR",
        "message": "the stream ended before the run finished",
        "code": "stream_ended",
    }
    assert AGUIEncoder().finish() == b""  # a stream that sent nothing ends with nothing


def test_a_step_running_twice_at_once_is_opened_and_finished_once() -> None:
    events: list[StreamEvent] = [StatusEvent(**_ENV, seq=1, status="started")]
    for seq, phase in enumerate(("started", "started", "completed", "failed"), start=2):
        events.append(AgentLifecycleEvent(**_ENV, seq=seq, agent="worker", phase=phase))  # type: ignore[arg-type]
    events.append(InterruptEvent(**_ENV, seq=6, interrupts=(InterruptInfo(value={"q": 1}),)))
    events.append(DoneEvent(**_ENV, seq=7, status="interrupted"))
    out = _check(frames_of(events))

    assert [e["type"] for e in out if e["type"].startswith("STEP")] == ["STEP_STARTED", "STEP_FINISHED"]
    # Finished when the last of the two ended (the failed one, reported right after), not at the first.
    after = out[out.index(_of(out, "STEP_FINISHED")[0]) + 1]
    assert after["name"] == "kiki.agent_lifecycle" and after["value"]["phase"] == "failed"
    assert out[-1]["outcome"]["interrupts"] == [{"id": "r1:6:0", "reason": "input_required", "message": '{"q":1}'}]


def test_the_format_is_registered_per_stream_and_picks_the_version() -> None:
    assert get_format("agui") is FORMAT
    assert FORMAT.media_type == "text/event-stream" and not FORMAT.cacheable
    assert FORMAT.encoder() is not FORMAT.encoder()
    assert FORMAT.retry_frame(2.0) == b""
    versions = {None: False, "0.0.40": False, "1.0": True, "1.2": True, "2.0": True, "garbled": True}
    for declared, v1 in versions.items():
        assert FORMAT.encoder_for(declared).v1 is v1, declared
    assert AGUIEncoder(PROTOCOL_LEGACY).v1 is False


@pytest.mark.parametrize(
    "stream",
    [
        [{"type": "RUN_STARTED"}, {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m"}, {"type": "RUN_FINISHED"}],
        [{"type": "RUN_STARTED"}, {"type": "TEXT_MESSAGE_START", "messageId": "m"}, {"type": "RUN_FINISHED"}],
        [{"type": "RUN_STARTED"}, {"type": "STEP_STARTED", "stepName": "a"}, {"type": "RUN_ERROR"}],
        [
            {"type": "RUN_STARTED"},
            {"type": "TOOL_CALL_START", "toolCallId": "c"},
            {"type": "TOOL_CALL_END", "toolCallId": "c"},
        ],
        [{"type": "RUN_STARTED"}, {"type": "RUN_FINISHED"}, {"type": "CUSTOM"}],
        [{"type": "STEP_STARTED", "stepName": "a"}, {"type": "RUN_FINISHED"}],
    ],
)
def test_the_order_checker_rejects_what_a_client_rejects(stream: list[dict[str, Any]]) -> None:
    with pytest.raises(AssertionError):
        _verify_order(stream)


def _parse(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(chunk[6:]) for chunk in body[:-2].split(b"\n\n")]


def _runs(out: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A stream's events cut into runs, each from its RUN_STARTED."""
    runs: list[list[dict[str, Any]]] = []
    for event in out:
        if event["type"] == "RUN_STARTED":
            runs.append([])
        runs[-1].append(event)
    return runs


@pytest.mark.parametrize("v1", [True, False])
@pytest.mark.asyncio
async def test_a_thread_stream_carries_its_runs_one_after_another(research_team: ModuleType, v1: bool) -> None:
    config = {"configurable": {"thread_id": "t-2"}}
    first = await capture_run(research_team.build_graph(), user("Compare queues"), config)
    second = await capture_run(research_team.build_graph(), user("Compare logs"), config)
    encoder = FORMAT.encoder_for(PROTOCOL_V1 if v1 else None)

    out = _parse(encoder.encode_all([*frames_of(first), *frames_of(second)]))

    runs = _runs(out)
    assert [run[0]["runId"] for run in runs] == [first.runs()[0], second.runs()[0]]
    for run in runs:
        _validate(run, v1=v1)
        _verify_order(run)
        assert run[-1]["type"] == "RUN_FINISHED" and run[0]["threadId"] == "t-2"
    assert not encoder.ended  # a thread stream goes on after RUN_FINISHED


@pytest.mark.asyncio
async def test_nothing_follows_a_run_error_on_a_thread_stream(research_team: ModuleType) -> None:
    config = {"configurable": {"thread_id": "t-3"}}
    crashed = await capture_run(research_team.build_graph(), user("Compare queues, then crash"), config)
    later = await capture_run(research_team.build_graph(), user("Compare logs"), config)
    encoder = FORMAT.encoder_for(PROTOCOL_V1)

    out = _parse(encoder.encode_all([*frames_of(crashed), *frames_of(later)]))

    assert [run[0]["runId"] for run in _runs(out)] == crashed.runs()
    assert out[-1]["type"] == "RUN_ERROR" and encoder.ended
    assert encoder.encode_all(frames_of(later)) == b"" and encoder.finish() == b""
