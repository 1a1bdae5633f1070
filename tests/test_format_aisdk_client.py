"""The AI SDK format read by the AI SDK's own client (``ai`` 6 and ``ai`` 7 on Node): chunk schema and message state.

Each body goes through ``DefaultChatTransport`` (which parses every chunk against the
SDK's UI message chunk schema) and ``readUIMessageStream`` (the state machine
``useChat`` runs), with a ``fetch`` that answers with the body: the harness of
tests/aisdk_node.py (tests/js/aisdk, installed with ``npm ci``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from langchain_core.messages import ToolCall
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from kiki_events.events import StatusEvent
from kiki_events.formats.aisdk import FORMAT, AISDKFormat
from kiki_events.testing import capture_run
from tests.aisdk_node import AIClient, Client, harness
from tests.scenarios import frames_of, interrupted_run, one_chunk_run, tool_agent, user
from tests.test_format_aisdk_tools import _model, crawl, publish

_tags = itertools.count()


@pytest.fixture(scope="module", params=[6, 7], ids=["ai6", "ai7"])
def reader(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AIClient, Path]]:
    """The AI SDK's client of one version, reading bodies from files, and a folder for them."""
    client: Client = harness()[request.param]
    with AIClient(client, "http://kiki.invalid/ai-sdk", "unused") as node:
        yield node, tmp_path_factory.mktemp(f"aisdk-bodies-{request.param}")


def _read(reader: tuple[AIClient, Path], body: bytes, message: Any = None) -> dict[str, Any]:
    """What the AI SDK's client makes of ``body`` (continuing ``message``): the final message, the errors
    it reported, the chunks it took."""
    node, folder = reader
    tag = f"body-{next(_tags)}"
    path = folder / f"{tag}.txt"
    path.write_bytes(body)
    node.send(tag, "read", path=str(path), message=message)
    result = node.result(tag)
    assert result["sent"] == len(result["accepted"]) or result["errors"], result
    return result


def _body(items: list[Any], fmt: AISDKFormat = FORMAT) -> bytes:
    encoder = fmt.encoder()
    return encoder.encode_all(items) + encoder.finish()


def _text(message: dict[str, Any]) -> str:
    return "".join(part["text"] for part in message["parts"] if part["type"] == "text")


def _tools(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {part["toolCallId"]: part for part in message["parts"] if part["type"] == "dynamic-tool"}


@pytest.mark.slow
@pytest.mark.timeout(360)
@pytest.mark.asyncio
async def test_the_ai_sdk_client_reads_every_kind_of_stream(
    reader: tuple[AIClient, Path], research_team: ModuleType, scripted: ModuleType
) -> None:
    # A demo run: text, parallel tool calls with streamed arguments, agents as data parts.
    events = await capture_run(research_team.build_graph(), user("Compare Redis streams and pub/sub"))
    read = _read(reader, _body(frames_of(events)))
    message = read["message"]
    assert read["errors"] == [] and message["id"] == events.runs()[0] and message["role"] == "assistant"
    assert _text(message) == events.text()
    assert all(part["state"] == "done" for part in message["parts"] if part["type"] == "text")
    tools = _tools(message)
    for call_id, call in events.tool_calls().items():
        assert (tools[call_id]["state"], tools[call_id]["input"]) == ("output-available", call["args"])
        assert tools[call_id]["output"] == call["output"] and tools[call_id]["toolName"] == call["name"]
    assert {p["data"]["agent"] for p in message["parts"] if p["type"] == "data-kiki-agent"} == set(events.agents())

    # A failed tool is an output error.
    events = await capture_run(research_team.build_graph(), user("Please fail to fetch the Redis docs"))
    read = _read(reader, _body(frames_of(events)))
    [failed_id] = [i for i, c in events.tool_calls().items() if c.get("error")]
    assert read["errors"] == [] and _tools(read["message"])[failed_id]["state"] == "output-error"

    # A crash: the client reports the error, once.
    events = await capture_run(research_team.build_graph(), user("Compare queues and crash"))
    read = _read(reader, _body(frames_of(events)))
    [error] = events.of_type("error")
    assert read["errors"] == [f"RuntimeError: {error.message}"]  # type: ignore[union-attr]

    # An interrupt arrives as a data part.
    read = _read(reader, _body(frames_of(await interrupted_run())))
    [carried] = [p for p in read["message"]["parts"] if p["type"] == "data-kiki-interrupt"]
    assert read["errors"] == [] and carried["data"]["interrupts"][0]["value"] == "Publish the report?"

    # Tool calls whose arguments came in one chunk.
    read = _read(reader, _body(frames_of(await one_chunk_run(scripted))))
    assert read["errors"] == []
    assert {i: p["input"] for i, p in _tools(read["message"]).items()} == {
        "call-a": {"key": "a"},
        "call-b": {"key": "b"},
    }

    # A stream cut short after a gap notice.
    gap = StatusEvent(run_id="r1", seq=0, ts=1.0, status="gap", first_seq=2, detail="older events are gone")
    read = _read(reader, _body([gap]))
    assert read["errors"] == ["the stream ended before the run finished"] and read["message"]["id"] == "r1"


def test_the_client_rejects_a_broken_stream(reader: tuple[AIClient, Path]) -> None:
    broken = b'data: {"type":"start"}\n\ndata: {"type":"text-delta","id":"a","delta":"x"}\n\ndata: [DONE]\n\n'
    assert _read(reader, broken)["errors"], "a delta without its start must be refused"
    unknown = b'data: {"type":"start"}\n\ndata: {"type":"kiki-unknown"}\n\ndata: [DONE]\n\n'
    assert _read(reader, unknown)["errors"], "an unknown chunk type must be refused"


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.asyncio
async def test_the_client_shows_tool_progress_and_asks_for_approval(
    reader: tuple[AIClient, Path], scripted: ModuleType
) -> None:
    # Progress: preliminary outputs, replaced by the final one.
    calls = [ToolCall(name="crawl", args={"site": s}, id=f"call-{s}") for s in ("a", "b")]
    events = await capture_run(tool_agent(_model(scripted, calls), [crawl]), user("crawl both"))
    read = _read(reader, _body(frames_of(events)))
    tools = _tools(read["message"])
    assert read["errors"] == [] and read["accepted"].count("tool-output-available") == 6
    assert {i: (p["state"], p["output"], p.get("preliminary")) for i, p in tools.items()} == {
        "call-a": ("output-available", "crawled a", None),
        "call-b": ("output-available", "crawled b", None),
    }

    # An approval: the call waits for an answer; the answer's stream gives it its output.
    approval = [ToolCall(name="publish", args={"title": "Redis"}, id="call-p")]
    graph = tool_agent(_model(scripted, approval), [publish], InMemorySaver())
    config: RunnableConfig = {"configurable": {"thread_id": "approval"}}
    events = await capture_run(graph, user("publish it"), config)
    read = _read(reader, _body(frames_of(events)))
    [info] = events.of_type("interrupt")[0].interrupts  # type: ignore[union-attr]
    asked = _tools(read["message"])["call-p"]
    assert read["errors"] == [] and asked["state"] == "approval-requested"
    assert asked["approval"] == {"id": info.id} and asked["input"] == {"title": "Redis"}
    # What addToolApprovalResponse makes of the message; the answer's stream continues it.
    held = {**read["message"], "id": "m-1"}
    held["parts"] = [
        {**p, "state": "approval-responded", "approval": {"id": info.id, "approved": True}}
        if p.get("toolCallId") == "call-p"
        else p
        for p in held["parts"]
    ]
    resumed = await capture_run(graph, Command(resume={"approved": True}), config)
    read = _read(reader, _body(frames_of(resumed), AISDKFormat(frozenset({"call-p"}), "m-1")), held)
    assert read["errors"] == [] and read["message"]["id"] == "m-1"
    [answered] = [p for p in read["message"]["parts"] if p.get("toolCallId") == "call-p"]
    assert (answered["state"], answered["output"]) == ("output-available", "published")
    assert answered["approval"] == {"id": info.id, "approved": True}
