"""Runs the format and handler tests share: built from real graphs, captured with the real handler.

``frames_of`` turns a run's events into the frames a stream reads (through a real
:class:`RunLog`), so a format's encoder sees what the server gives it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolCall
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from langgraph.types import interrupt

from kiki_events import KikiCallbackHandler
from kiki_events.core.runlog import Frame, RunLog
from kiki_events.events import StreamEvent
from kiki_events.testing import CapturedEvents, capture_run

__all__ = ["cancelled_run", "frames_of", "interrupted_run", "lookup", "one_chunk_run", "tool_agent", "user"]


def user(text: str) -> dict[str, Any]:
    """A graph input of one user message."""
    return {"messages": [{"role": "user", "content": text}]}


def frames_of(events: Iterable[StreamEvent]) -> list[Frame]:
    """The frames a stream of these events reads, from a real run log."""
    events = list(events)
    log = RunLog(events[0].run_id, len(events) + 1)
    for event in events:
        log.append(event)
    frames, _ = log.read(0, len(events))
    return frames


@tool
def lookup(key: str, limit: int = 3) -> str:
    """Look a key up."""
    return f"found {key}"


def tool_agent(model: Any, tools: Iterable[Any] = (lookup,), checkpointer: Any = None) -> Any:
    """``agent`` calls ``model``; while it asks for tools, ``tools`` answers and the agent goes on."""

    async def agent(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    def route(state: MessagesState) -> str:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else END

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode(list(tools)))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", route, ["tools", END])
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=checkpointer)


async def one_chunk_run(scripted: ModuleType) -> CapturedEvents:
    """Two tool calls whose names and arguments come in one chunk each, then an answer."""
    calls = [ToolCall(name="lookup", args={"key": key}, id=f"call-{key}") for key in ("a", "b")]
    model = scripted.ScriptedChatModel(
        script=[AIMessage(content="Checking.", tool_calls=calls), AIMessage(content="Done.")],
        tool_args_in_one_chunk=True,
    )
    return await capture_run(tool_agent(model), user("hi"))


async def interrupted_run() -> CapturedEvents:
    """A run that stops at an interrupt asking "Publish the report?" (thread ``hitl``)."""

    def ask(state: MessagesState) -> dict[str, Any]:
        answer = interrupt("Publish the report?")
        return {"messages": [AIMessage(content=f"answer: {answer}")]}

    builder = StateGraph(MessagesState)
    builder.add_node("approve", ask)
    builder.add_edge(START, "approve")
    builder.add_edge("approve", END)
    config: RunnableConfig = {"configurable": {"thread_id": "hitl"}}
    return await capture_run(builder.compile(checkpointer=InMemorySaver()), user("go"), config)


async def cancelled_run(scripted: ModuleType) -> CapturedEvents:
    """A run cancelled while its one message streams (after its first token)."""
    model = scripted.ScriptedChatModel(
        script=lambda _m: AIMessage(content="a b c d e f g h i j k l m n o p"), token_delay=0.05
    )
    events = CapturedEvents()
    first_token = asyncio.Event()

    def sink(event: StreamEvent) -> None:
        events.append(event)
        if event.type == "token":
            first_token.set()

    async def talk(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await model.ainvoke("go")]}

    builder = StateGraph(MessagesState)
    builder.add_node("talker", talk)
    builder.add_edge(START, "talker")
    builder.add_edge("talker", END)
    task = asyncio.create_task(builder.compile().ainvoke(user("hi"), {"callbacks": [KikiCallbackHandler(sink)]}))
    await asyncio.wait_for(first_token.wait(), 30)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the run ended before it was cancelled")
    return events
