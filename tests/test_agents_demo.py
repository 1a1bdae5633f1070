"""Tests for the deterministic demo agents in ``agents/`` (loaded by file path)."""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.outputs import LLMResult

AGENTS_DIR = Path(__file__).resolve().parent.parent / "agents"

TASK = "Compare Redis streams and pub/sub"


@functools.cache
def load_agent_module(stem: str) -> ModuleType:
    """Load ``agents/<stem>.py`` by path, the way ``langgraph.json`` does."""
    path = AGENTS_DIR / f"{stem}.py"
    name = f"_test_agents_demo_{stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def sm() -> ModuleType:
    return load_agent_module("scripted_model")


@pytest.fixture
def rt() -> ModuleType:
    return load_agent_module("research_team")


def user(text: str) -> dict[str, list[BaseMessage]]:
    return {"messages": [HumanMessage(content=text)]}


class Recorder(BaseCallbackHandler):
    """Records tokens and final LLM results."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.results: list[LLMResult] = []
        self.metadata: list[dict[str, Any]] = []

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.metadata.append(metadata or {})

    def on_llm_new_token(self, token: str | list[str | dict[str, Any]], **kwargs: Any) -> None:
        assert isinstance(token, str)
        self.tokens.append(token)

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        self.results.append(response)


class AsyncRecorder(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.results: list[LLMResult] = []

    async def on_llm_new_token(self, token: str | list[str | dict[str, Any]], **kwargs: Any) -> None:
        assert isinstance(token, str)
        self.tokens.append(token)

    async def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        self.results.append(response)


def final_message(result: LLMResult) -> AIMessage:
    """The aggregated message an ``on_llm_end`` handler receives."""
    generation = result.generations[0][0]
    message = getattr(generation, "message", None)
    assert isinstance(message, AIMessage)
    return message


def join(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


# -- scripted model ---------------------------------------------------------------


def test_split_text_round_trips(sm: ModuleType) -> None:
    for text in ["", "one", "Hello there,  world.\n\nBye ", "  leading", "a\tb\n"]:
        assert "".join(sm.split_text(text)) == text
    assert sm.split_text("Hello there, world.") == ["Hello", " there,", " world."]


def test_lorem_tokens_and_fit_to_tokens_are_exact(sm: ModuleType) -> None:
    for n in [0, 1, 2, 17, 2000]:
        text = sm.lorem_tokens(n, seed=3)
        assert len(sm.split_text(text)) == n
        assert text == sm.lorem_tokens(n, seed=3)
    for n in [1, 3, 8, 500]:
        fitted = sm.fit_to_tokens("Hello there, world.\n\n", n)
        assert len(sm.split_text(fitted)) == n
        assert fitted.startswith("Hello")


def test_stream_chunks_concatenate_to_full_text(sm: ModuleType) -> None:
    text = "Streams keep history.\n\nPub/sub forgets it, fast. "
    model = sm.ScriptedChatModel(script=lambda messages: AIMessage(content=text))
    chunks = list(model.stream("hi"))
    *text_chunks, final = chunks
    assert [c.content for c in text_chunks] == sm.split_text(text)
    assert "".join(str(c.content) for c in chunks) == text
    # Usage arrives on one extra, empty, final chunk.
    assert final.content == ""
    assert final.chunk_position == "last"
    assert final.usage_metadata is not None
    assert final.usage_metadata["output_tokens"] == len(text_chunks)
    assert final.response_metadata["finish_reason"] == "stop"
    assert all(c.usage_metadata is None and c.chunk_position is None for c in text_chunks)
    assert model.invoke("hi").content == text


def test_list_script_is_consumed_in_order(sm: ModuleType) -> None:
    model = sm.ScriptedChatModel(script=[AIMessage(content="first"), "second"])
    assert model.invoke("a").content == "first"
    assert "".join(str(c.content) for c in model.stream("b")) == "second"
    with pytest.raises(sm.ScriptExhaustedError, match="exhausted"):
        model.invoke("c")


def test_usage_reaches_on_llm_end_for_streaming_invoke(sm: ModuleType) -> None:
    model = sm.ScriptedChatModel(script=lambda messages: AIMessage(content="one two three"), streaming=True)
    recorder = Recorder()
    reply = model.invoke("count to three", config={"callbacks": [recorder]})
    assert recorder.tokens == ["one", " two", " three", ""]
    usage = final_message(recorder.results[0]).usage_metadata
    assert usage is not None
    assert usage["output_tokens"] == 3
    assert usage["total_tokens"] == usage["input_tokens"] + 3
    assert reply.usage_metadata == usage
    assert recorder.metadata[0]["ls_provider"] == "kiki"
    assert recorder.metadata[0]["ls_model_name"] == "scripted-1"


def test_usage_reaches_on_llm_end_for_invoke_without_streaming(sm: ModuleType) -> None:
    model = sm.ScriptedChatModel(script=lambda messages: AIMessage(content="one two"))
    recorder = Recorder()
    model.invoke("hi", config={"callbacks": [recorder]})
    assert recorder.tokens == []
    usage = final_message(recorder.results[0]).usage_metadata
    assert usage is not None
    assert usage["output_tokens"] == 2


@pytest.mark.asyncio
async def test_usage_reaches_on_llm_end_for_astream(sm: ModuleType) -> None:
    model = sm.ScriptedChatModel(script=lambda messages: AIMessage(content="one two three"))
    recorder = AsyncRecorder()
    chunks = [c async for c in model.astream("hi", config={"callbacks": [recorder]})]
    assert recorder.tokens == ["one", " two", " three", ""]
    assert len(chunks) == 4
    message = final_message(recorder.results[0])
    assert message.content == "one two three"
    assert message.usage_metadata is not None
    assert message.usage_metadata["output_tokens"] == 3


def _tool_reply(messages: list[BaseMessage]) -> AIMessage:
    return AIMessage(
        content="Looking it up.",
        tool_calls=[
            {"name": "web_search", "args": {"query": "redis streams"}, "id": "call_1"},
            {"name": "fetch_page", "args": {"url": "https://a.example/x"}, "id": None},
        ],
    )


def test_tool_calls_stream_as_chunks(sm: ModuleType) -> None:
    model = sm.ScriptedChatModel(script=_tool_reply)
    chunks = list(model.stream("hi"))
    tool_chunks = [tc for c in chunks for tc in c.tool_call_chunks]
    by_index: dict[int, list[Any]] = defaultdict(list)
    for tc in tool_chunks:
        assert tc["index"] is not None
        by_index[tc["index"]].append(tc)
    assert sorted(by_index) == [0, 1]
    for pieces in by_index.values():
        assert len(pieces) > 2
        assert pieces[0]["id"]
        assert pieces[0]["name"]
        assert pieces[0]["args"] == ""
        assert all(p["id"] is None and p["name"] is None for p in pieces[1:])
    # Text comes first, tool calls after it.
    assert "".join(str(c.content) for c in chunks) == "Looking it up."
    assert not chunks[0].tool_call_chunks
    total = join(chunks)
    assert [tc["name"] for tc in total.tool_calls] == ["web_search", "fetch_page"]
    assert total.tool_calls[0]["args"] == {"query": "redis streams"}
    assert total.tool_calls[0]["id"] == "call_1"
    assert total.tool_calls[1]["id"]  # generated
    assert total.usage_metadata is not None
    assert total.usage_metadata["output_tokens"] == len(chunks) - 1
    assert total.response_metadata["finish_reason"] == "tool_calls"
    # The non-streaming path gives the same message.
    reply = model.invoke("hi")
    assert reply.tool_calls == total.tool_calls
    assert reply.usage_metadata == total.usage_metadata


def test_tool_args_in_one_chunk(sm: ModuleType) -> None:
    model = sm.ScriptedChatModel(script=_tool_reply, tool_args_in_one_chunk=True)
    chunks = list(model.stream("hi"))
    tool_chunks = [tc for c in chunks for tc in c.tool_call_chunks]
    assert len(tool_chunks) == 2
    assert tool_chunks[0]["name"] == "web_search"
    assert tool_chunks[0]["args"] == '{"query": "redis streams"}'
    assert tool_chunks[1]["name"] == "fetch_page"
    assert [tc["args"] for tc in join(chunks).tool_calls] == [
        {"query": "redis streams"},
        {"url": "https://a.example/x"},
    ]


def test_protocol_event_stream_keeps_tool_calls_and_usage(sm: ModuleType) -> None:
    """The content-block event bridge (``stream_events(version="v3")``) also works."""
    model = sm.ScriptedChatModel(script=_tool_reply)
    stream = model.stream_events("hi", version="v3")
    events = [event["event"] for event in stream]
    assert events[0] == "message-start"
    assert events[-1] == "message-finish"
    output = stream.output
    assert output.text == "Looking it up."
    assert [tc["args"] for tc in output.tool_calls] == [{"query": "redis streams"}, {"url": "https://a.example/x"}]
    assert not output.invalid_tool_calls
    assert output.usage_metadata is not None


def test_bind_tools_returns_usable_model(sm: ModuleType, rt: ModuleType) -> None:
    model = sm.ScriptedChatModel(script=_tool_reply).bind_tools([rt.web_search])
    reply = model.invoke("hi")
    assert isinstance(reply, AIMessage)
    assert len(reply.tool_calls) == 2


@pytest.mark.asyncio
async def test_zero_delay_never_sleeps(sm: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sleep(*args: Any) -> None:
        raise AssertionError("sleep called with token_delay=0")

    monkeypatch.setattr(sm.time, "sleep", no_sleep)
    monkeypatch.setattr(sm.asyncio, "sleep", no_sleep)
    model = sm.ScriptedChatModel(script=lambda messages: AIMessage(content="a b c"))
    assert len(list(model.stream("hi"))) == 4
    assert len([c async for c in model.astream("hi")]) == 4


@pytest.mark.asyncio
async def test_token_delay_sleeps_before_each_chunk(sm: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    sync_calls: list[float] = []
    async_calls: list[float] = []

    async def fake_async_sleep(delay: float) -> None:
        async_calls.append(delay)

    monkeypatch.setattr(sm.time, "sleep", sync_calls.append)
    monkeypatch.setattr(sm.asyncio, "sleep", fake_async_sleep)
    model = sm.ScriptedChatModel(script=lambda messages: AIMessage(content="a b c"), token_delay=0.25)
    list(model.stream("hi"))
    assert sync_calls == [0.25] * 3
    _ = [c async for c in model.astream("hi")]
    assert async_calls == [0.25] * 3


# -- research team ------------------------------------------------------------------


def _messages(result: dict[str, Any]) -> list[BaseMessage]:
    messages = result["messages"]
    assert isinstance(messages, list)
    return messages


def test_module_level_graph(rt: ModuleType) -> None:
    assert rt.graph.name == "research_team"
    assert set(rt.graph.nodes) >= {"supervisor", "research", "writer"}


def test_full_run_ends_with_writer_answer(rt: ModuleType) -> None:
    result = rt.build_graph().invoke(user(TASK))
    messages = _messages(result)
    last = messages[-1]
    assert isinstance(last, AIMessage)
    assert last.name == "writer"
    assert "Redis streams and pub/sub" in last.text
    assert len(last.text.split("\n\n")) >= 3
    names = [m.name for m in messages if isinstance(m, AIMessage)]
    assert names == ["supervisor", "researcher", "researcher", "supervisor", "writer"]
    tool_messages = [m for m in messages if isinstance(m, ToolMessage)]
    assert [m.name for m in tool_messages] == ["web_search", "fetch_page"]
    assert all(m.status == "success" for m in tool_messages)
    assert result["next"] == "writer"


@pytest.mark.asyncio
async def test_fail_keyword_makes_one_tool_fail(rt: ModuleType) -> None:
    result = await rt.build_graph().ainvoke(user(TASK + ". Let the fetch fail."))
    messages = _messages(result)
    errors = [m for m in messages if isinstance(m, ToolMessage) and m.status == "error"]
    assert len(errors) == 1
    assert errors[0].name == "fetch_page"
    assert "paywall" in errors[0].text
    last = messages[-1]
    assert isinstance(last, AIMessage)
    assert last.name == "writer"
    assert "could not be retrieved" in last.text


def test_crash_keyword_raises_sync(rt: ModuleType) -> None:
    with pytest.raises(RuntimeError, match="password=hunter2"):
        rt.build_graph().invoke(user(TASK + ", then crash."))


@pytest.mark.asyncio
async def test_crash_keyword_raises_async(rt: ModuleType) -> None:
    writer_chunks: list[AIMessageChunk] = []

    async def consume() -> None:
        async for chunk, metadata in rt.build_graph().astream(user(TASK + ", then crash."), stream_mode="messages"):
            if metadata["langgraph_node"] == "writer":
                writer_chunks.append(chunk)

    with pytest.raises(RuntimeError, match="password=hunter2"):
        await consume()
    assert len(writer_chunks) > 10  # the writer streamed its answer before failing


@pytest.mark.asyncio
async def test_streamed_tokens_concatenate_to_final_messages(rt: ModuleType) -> None:
    chunks_by_id: dict[str, list[AIMessageChunk]] = defaultdict(list)
    node_by_id: dict[str, str] = {}
    final_state: dict[str, Any] = {}
    async for namespace, mode, data in rt.build_graph().astream(
        user(TASK), stream_mode=["messages", "values"], subgraphs=True
    ):
        if mode == "values" and not namespace:
            final_state = data
        elif mode == "messages":
            message, metadata = data
            if isinstance(message, AIMessageChunk):
                assert message.id is not None
                chunks_by_id[message.id].append(message)
                node_by_id[message.id] = metadata["langgraph_node"]
    assert sorted(node_by_id.values()) == [
        "researcher",
        "researcher",
        "supervisor",
        "supervisor",
        "writer",
    ]
    finals = {m.id: m for m in _messages(final_state) if isinstance(m, AIMessage)}
    assert set(finals) == set(chunks_by_id)
    for message_id, chunks in chunks_by_id.items():
        total = join(chunks)
        assert total.text == finals[message_id].text
        assert total.tool_calls == finals[message_id].tool_calls
        assert total.chunk_position == "last"
        assert total.usage_metadata is not None
        assert chunks[-1].usage_metadata is not None


def test_tokens_per_answer_fixes_writer_length(rt: ModuleType, sm: ModuleType) -> None:
    graph = rt.build_graph(tokens_per_answer=300)
    writer_chunks = [
        chunk
        for chunk, metadata in graph.stream(user(TASK), stream_mode="messages")
        if metadata["langgraph_node"] == "writer" and isinstance(chunk, AIMessageChunk)
    ]
    assert len(writer_chunks) == 300 + 1  # text chunks + final usage chunk
    assert len(sm.split_text(join(writer_chunks).text)) == 300


@pytest.mark.asyncio
async def test_benchmark_graph_streams_exact_chunk_counts(rt: ModuleType) -> None:
    tokens = 2000
    text_chunks: dict[str, int] = defaultdict(int)
    final_chunks: dict[str, int] = defaultdict(int)
    async for chunk, metadata in rt.build_benchmark_graph(tokens).astream(user("go"), stream_mode="messages"):
        assert isinstance(chunk, AIMessageChunk)
        if chunk.content:
            text_chunks[metadata["langgraph_node"]] += 1
        else:
            assert chunk.chunk_position == "last"
            assert chunk.usage_metadata is not None
            assert chunk.usage_metadata["output_tokens"] == tokens
            final_chunks[metadata["langgraph_node"]] += 1
    assert dict(text_chunks) == {"draft": tokens, "review": tokens}
    assert dict(final_chunks) == {"draft": 1, "review": 1}


def test_token_delay_env(rt: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(rt.TOKEN_DELAY_ENV, raising=False)
    assert rt._token_delay_from_env() == rt.DEFAULT_DEMO_TOKEN_DELAY
    monkeypatch.setenv(rt.TOKEN_DELAY_ENV, "0")
    assert rt._token_delay_from_env() == 0.0
    monkeypatch.setenv(rt.TOKEN_DELAY_ENV, "fast")
    with pytest.raises(ValueError, match=rt.TOKEN_DELAY_ENV):
        rt._token_delay_from_env()


def test_fetch_page_errors(rt: ModuleType) -> None:
    with pytest.raises(PermissionError, match="paywall"):
        rt.fetch_page.invoke({"url": "https://journal.example.com/paywall/x"})
    assert "Redis" in rt.web_search.invoke({"query": "Redis streams"})
