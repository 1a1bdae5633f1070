"""The AI SDK UI message stream format: real demo runs encoded, checked for the chunks' shapes and order."""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import httpx
import pytest

from kiki_events.core.runlog import Item
from kiki_events.events import StatusEvent
from kiki_events.formats import get_format
from kiki_events.formats.aisdk import FORMAT, AISDKEncoder
from kiki_events.server import create_app
from kiki_events.testing import capture_run
from tests.scenarios import cancelled_run, frames_of, interrupted_run, one_chunk_run, user
from tests.servers import live_server

# Chunk type → (required fields, optional fields), from the UI message chunk schema of ai 6.0.333
# (uiMessageChunkSchema) and ai 7.0.173; only the chunks this format sends, and only fields
# ai 5 knows too, but for the tool approval request (ai 6 and later).
SHAPES: dict[str, tuple[set[str], set[str]]] = {
    "start": (set(), {"messageId", "messageMetadata"}),
    "start-step": (set(), set()),
    "finish-step": (set(), set()),
    "text-start": ({"id"}, set()),
    "text-delta": ({"id", "delta"}, set()),
    "text-end": ({"id"}, set()),
    "reasoning-start": ({"id"}, set()),
    "reasoning-delta": ({"id", "delta"}, set()),
    "reasoning-end": ({"id"}, set()),
    "tool-input-start": ({"toolCallId", "toolName"}, {"dynamic"}),
    "tool-input-delta": ({"toolCallId", "inputTextDelta"}, set()),
    "tool-input-available": ({"toolCallId", "toolName", "input"}, {"dynamic"}),
    "tool-output-available": ({"toolCallId", "output"}, {"dynamic", "preliminary"}),
    "tool-approval-request": ({"approvalId", "toolCallId"}, set()),
    "tool-output-error": ({"toolCallId", "errorText"}, {"dynamic"}),
    "error": ({"errorText"}, set()),
    "finish": (set(), {"messageMetadata"}),
    "abort": (set(), set()),
}
STRINGS = {"messageId", "id", "delta", "toolCallId", "toolName", "inputTextDelta", "errorText", "approvalId"}
TERMINAL = {"finish", "abort"}


def parse_body(body: bytes) -> list[dict[str, Any]]:
    """The chunks of a body: every block exactly ``data: <json>``, the last one ``data: [DONE]``."""
    assert body.endswith(b"data: [DONE]\n\n") and b"\r" not in body, body[-200:]
    blocks = body[:-2].split(b"\n\n")
    assert blocks.pop() == b"data: [DONE]"
    parsed = []
    for block in blocks:
        assert block.startswith(b"data: ") and b"\n" not in block, block
        parsed.append(json.loads(block[6:]))
    return parsed


def _no_nulls(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert item is not None, f"{where}.{key} is null"
            _no_nulls(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _no_nulls(item, f"{where}[{index}]")


def _validate(out: list[dict[str, Any]]) -> None:
    """Every chunk has a known type, its required fields, no unknown field, strings where strings go, no null."""
    for chunk in out:
        kind = chunk["type"]
        if kind.startswith("data-kiki-"):
            assert set(chunk) == {"type", "data"}, chunk
        else:
            required, optional = SHAPES[kind]
            assert required <= set(chunk) - {"type"} <= required | optional, chunk
        assert all(isinstance(chunk[key], str) for key in STRINGS & set(chunk)), chunk
        assert chunk.get("dynamic", True) is True and chunk.get("preliminary", True) is True, chunk
        _no_nulls(chunk, kind)


def _verify_order(out: list[dict[str, Any]], known: frozenset[str] = frozenset()) -> None:
    """What the AI SDK's client needs: start first, deltas inside their start, everything ended, one terminal;
    a tool's progress and approval request after its input and before its final output (``known``: calls
    the client holds from before)."""
    assert out[0]["type"] == "start"
    assert [c["type"] in TERMINAL for c in out].count(True) == 1 and out[-1]["type"] in TERMINAL
    parts: dict[str, str] = {}
    used: set[str] = set()
    tools: set[str] = set()
    available: set[str] = set(known)
    final: set[str] = set()
    steps = 0
    for chunk in out:
        kind, part, call = chunk["type"], chunk.get("id"), chunk.get("toolCallId")
        family, _, phase = kind.rpartition("-")
        if family in ("text", "reasoning"):
            if phase == "start":
                assert part not in used, chunk
                used.add(part)
                parts[part] = family
            else:
                assert parts.get(part) == family, chunk
                if phase == "end":
                    del parts[part]
        elif kind == "tool-input-start":
            assert call not in tools and call not in available, chunk
            tools.add(call)
        elif kind == "tool-input-delta":
            assert call in tools, chunk
        elif kind == "tool-input-available":
            assert call not in available, chunk
            tools.discard(call)
            available.add(call)
        elif kind.startswith("tool-output-") or kind == "tool-approval-request":
            assert call in available and call not in final, chunk
            if kind.startswith("tool-output-") and not chunk.get("preliminary"):
                final.add(call)
        elif kind in ("start-step", "finish-step"):
            steps += 1 if kind == "start-step" else -1
            assert steps in (0, 1), "steps do not nest"
            assert kind == "start-step" or not (parts or tools), (parts, tools)
        elif kind in TERMINAL:
            assert not (parts or tools or steps), (parts, tools, steps)


def _check(items: Sequence[Item]) -> list[dict[str, Any]]:
    encoder = FORMAT.encoder()
    out = parse_body(encoder.encode_all(items) + encoder.finish())
    assert encoder.encode_all(items) == b"" and encoder.finish() == b""  # nothing after [DONE]
    _validate(out)
    _verify_order(out)
    return out


def _of(out: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [c for c in out if c["type"] == kind]


@pytest.mark.asyncio
async def test_a_demo_run_maps_text_agents_and_parallel_tool_calls(research_team: ModuleType) -> None:
    events = await capture_run(
        research_team.build_graph(), user("Compare Redis streams and pub/sub"), {"configurable": {"thread_id": "t-1"}}
    )
    out = _check(frames_of(events))

    run_id = events.runs()[0]
    assert out[:2] == [{"type": "start", "messageId": run_id}, {"type": "start-step"}]
    assert out[-2:] == [{"type": "finish-step"}, {"type": "finish"}]
    assert "".join(c["delta"] for c in _of(out, "text-delta")) == events.text()
    assert {c["data"]["agent"] for c in _of(out, "data-kiki-agent")} == set(events.agents())
    calls = events.tool_calls()
    assert len(calls) == 2
    for call_id, call in calls.items():
        [start] = [c for c in _of(out, "tool-input-start") if c["toolCallId"] == call_id]
        assert start == {"type": "tool-input-start", "toolCallId": call_id, "toolName": call["name"], "dynamic": True}
        deltas = "".join(c["inputTextDelta"] for c in _of(out, "tool-input-delta") if c["toolCallId"] == call_id)
        assert json.loads(deltas) == call["args"]
        [ready] = [c for c in _of(out, "tool-input-available") if c["toolCallId"] == call_id]
        assert ready["input"] == call["args"] and ready["toolName"] == call["name"]
        [result] = [c for c in _of(out, "tool-output-available") if c["toolCallId"] == call_id]
        assert result == {
            "type": "tool-output-available",
            "toolCallId": call_id,
            "output": call["output"],
            "dynamic": True,
        }
    assert len(_of(out, "data-kiki-llm")) == len(events.of_type("llm"))
    assert _of(out, "data-kiki-done")[0]["data"]["status"] == "success"


@pytest.mark.asyncio
async def test_a_failed_tool_is_an_output_error(research_team: ModuleType) -> None:
    events = await capture_run(research_team.build_graph(), user("Please fail to fetch the Redis docs"))
    out = _check(frames_of(events))

    [failed_id] = [i for i, c in events.tool_calls().items() if c.get("error")]
    [error] = _of(out, "tool-output-error")
    failed = events.tool_calls()[failed_id]
    assert error == {
        "type": "tool-output-error",
        "toolCallId": failed_id,
        "errorText": f"PermissionError: {failed['error']}",
        "dynamic": True,
    }
    assert out[-1] == {"type": "finish"}


@pytest.mark.asyncio
async def test_a_crash_sends_one_redacted_error_then_finish(research_team: ModuleType) -> None:
    events = await capture_run(research_team.build_graph(), user("Compare queues and crash"))
    out = _check(frames_of(events))

    [error] = events.of_type("error")
    assert out[-3:] == [
        {"type": "error", "errorText": f"RuntimeError: {error.message}"},  # type: ignore[union-attr]
        {"type": "finish-step"},
        {"type": "finish"},
    ]
    assert len(_of(out, "error")) == 1 and not _of(out, "data-kiki-done")
    assert b"hunter2" not in json.dumps(out).encode()


@pytest.mark.asyncio
async def test_an_interrupt_is_a_data_part_then_finish() -> None:
    events = await interrupted_run()
    assert events.done.status == "interrupted"
    out = _check(frames_of(events))

    [carried] = _of(out, "data-kiki-interrupt")
    assert carried["data"]["interrupts"][0]["value"] == "Publish the report?"
    assert out.index(carried) < out.index(_of(out, "data-kiki-done")[0]) < len(out) - 1
    assert out[-1] == {"type": "finish"}


@pytest.mark.asyncio
async def test_a_cancelled_run_closes_its_text_and_aborts(scripted: ModuleType) -> None:
    events = await cancelled_run(scripted)
    assert events.done.status == "cancelled"
    out = _check(frames_of(events))

    assert _of(out, "text-end") and out[-1] == {"type": "abort"} and not _of(out, "finish")


@pytest.mark.asyncio
async def test_tool_calls_in_one_chunk_go_straight_to_available(scripted: ModuleType) -> None:
    events = await one_chunk_run(scripted)
    out = _check(frames_of(events))

    assert [c["toolCallId"] for c in _of(out, "tool-input-start")] == ["call-a", "call-b"]
    assert {c["toolCallId"]: c["input"] for c in _of(out, "tool-input-available")} == {
        "call-a": {"key": "a"},
        "call-b": {"key": "b"},
    }
    # The text before the calls ended where the first call started.
    first_end = out.index(_of(out, "text-end")[0])
    assert out[first_end + 1]["type"] == "tool-input-start"
    assert {c["output"] for c in _of(out, "tool-output-available")} == {"found a", "found b"}


def test_a_stream_cut_short_is_closed_with_an_error() -> None:
    gap = StatusEvent(run_id="r1", seq=0, ts=1.0, status="gap", first_seq=2, detail="older events are gone")
    out = _check([gap])

    assert out[0] == {"type": "start", "messageId": "r1"}
    assert out[2]["type"] == "data-kiki-status" and out[2]["data"]["status"] == "gap"
    assert out[-3:] == [
        {"type": "error", "errorText": "the stream ended before the run finished"},
        {"type": "finish-step"},
        {"type": "finish"},
    ]
    assert AISDKEncoder().finish() == b""  # a stream that sent nothing ends with nothing


def test_the_format_is_registered_per_stream_with_its_header() -> None:
    assert get_format("aisdk") is FORMAT
    assert FORMAT.media_type == "text/event-stream" and not FORMAT.cacheable
    assert dict(FORMAT.headers) == {"x-vercel-ai-ui-message-stream": "v1"}
    assert FORMAT.encoder() is not FORMAT.encoder()


@pytest.mark.parametrize(
    "stream",
    [
        [{"type": "start"}, {"type": "text-delta", "id": "m"}, {"type": "finish"}],
        [{"type": "start"}, {"type": "text-start", "id": "m"}, {"type": "finish"}],
        [{"type": "start"}, {"type": "reasoning-start", "id": "m"}, {"type": "text-delta", "id": "m"}],
        [{"type": "start"}, {"type": "tool-output-available", "toolCallId": "c"}, {"type": "finish"}],
        [{"type": "start"}, {"type": "start-step"}, {"type": "start-step"}],
        [{"type": "start"}, {"type": "finish"}, {"type": "abort"}],
        [{"type": "text-start", "id": "m"}, {"type": "finish"}],
    ],
)
def test_the_order_checker_rejects_what_a_client_rejects(stream: list[dict[str, Any]]) -> None:
    with pytest.raises((AssertionError, KeyError)):
        _verify_order(stream)


def test_the_shape_checker_rejects_unknown_fields_and_nulls() -> None:
    for chunk in (
        {"type": "finish", "finishReason": "stop"},
        {"type": "text-start"},
        {"type": "start", "messageId": None},
    ):
        with pytest.raises(AssertionError):
            _validate([chunk])


def test_a_run_streamed_over_http_in_the_aisdk_format(research_team: ModuleType) -> None:
    app = create_app(graphs={"team": research_team.build_graph()})
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        run_id = client.post("/runs", json={"graph": "team", "message": "Compare Redis streams"}).json()["run_id"]
        with client.stream("GET", f"/runs/{run_id}/stream", params={"format": "aisdk"}) as response:
            assert response.status_code == 200, response.read()
            headers = response.headers
            body = b"".join(response.iter_raw())

    assert headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert headers["content-type"].startswith("text/event-stream")
    # Keep-alives, if any, are comment blocks the client skips; everything else is a chunk.
    kept = b"".join(block + b"\n\n" for block in body.split(b"\n\n") if block and not block.startswith(b":"))
    assert kept.endswith(b"data: [DONE]\n\n")
    out = parse_body(kept)
    _validate(out)
    _verify_order(out)
    assert out[0] == {"type": "start", "messageId": run_id} and out[-1] == {"type": "finish"}
