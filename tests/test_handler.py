"""KikiCallbackHandler on real LangGraph graphs: naming, tools, failures, control flow."""

from __future__ import annotations

import asyncio
import contextlib
import json
import operator
from types import ModuleType
from typing import Annotated, Any

import pytest
from langchain_core.callbacks import adispatch_custom_event
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, BaseMessage, ToolCall
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Command, Send, interrupt
from typing_extensions import TypedDict

from kiki_events import ArgumentTypeError, EventBus, KikiCallbackHandler
from kiki_events.capture.astream_events import events_from_astream_events
from kiki_events.cli.tail import format_event
from kiki_events.codec import encode
from kiki_events.events import StreamEvent
from kiki_events.testing import CapturedEvents, capture_run
from tests.scenarios import tool_agent

pytestmark = pytest.mark.asyncio

TASK = {"messages": [{"role": "user", "content": "Compare Redis streams and pub/sub"}]}


def _user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


async def test_demo_run_names_agents_pairs_tools_and_reports_usage(research_team: ModuleType) -> None:
    events = await capture_run(research_team.build_graph(), TASK, {"configurable": {"thread_id": "t-1"}})

    events.check_invariants()
    assert events.done.status == "success"
    assert {e.thread_id for e in events} == {"t-1"}
    agents = events.agents()
    for agent in ("supervisor", "research", "research/researcher", "research/tools", "writer"):
        assert agent in agents
    assert not any(part.isdigit() for agent in agents for part in agent.split("/"))
    started = [e.agent for e in events.of_type("agent_lifecycle") if e.phase == "started"]  # type: ignore[union-attr]
    completed = [e.agent for e in events.of_type("agent_lifecycle") if e.phase == "completed"]  # type: ignore[union-attr]
    assert sorted(started) == sorted(completed)
    assert events.text("writer")
    assert events.text("supervisor")
    calls = events.tool_calls()
    assert {c["name"] for c in calls.values()} == {"web_search", "fetch_page"}
    for call in calls.values():
        assert json.loads(call["args_text"]) == call["args"]
        assert call["output"] and call["error"] is None
    usage = events.done.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


async def test_tool_error_is_paired_by_id_and_the_run_continues(research_team: ModuleType) -> None:
    events = await capture_run(research_team.build_graph(), _user("Please fail to fetch the Redis docs"))

    events.check_invariants()
    calls = events.tool_calls()
    failed = [c for c in calls.values() if c.get("error")]
    assert len(failed) == 1 and failed[0]["name"] == "fetch_page"
    assert all(c.get("output") for c in calls.values() if not c.get("error"))
    assert events.done.status == "success"


async def test_node_failure_gives_failed_lifecycle_error_and_done(research_team: ModuleType) -> None:
    events = await capture_run(research_team.build_graph(), _user("Compare queues and crash"))

    events.check_invariants()
    failed = [e for e in events.of_type("agent_lifecycle") if e.phase == "failed"]  # type: ignore[union-attr]
    assert [e.agent for e in failed] == ["writer"]
    error = events.of_type("error")
    assert len(error) == 1 and error[0].agent == "writer"
    assert error[0].error_type == "RuntimeError"  # type: ignore[union-attr]
    assert "hunter2" not in error[0].message  # type: ignore[union-attr]
    assert "hunter2" not in (failed[0].error or "")  # type: ignore[union-attr]
    assert events[-2] is error[0]
    # The type is said once: beside the message, not again inside it.
    assert error[0].message.startswith("writer could not publish the report")  # type: ignore[union-attr]
    assert f"{error[0].error_type}: {error[0].message}" == failed[0].error  # type: ignore[union-attr]
    assert " writer error RuntimeError: writer could not publish the report: " in format_event(error[0])
    assert events.done.status == "error"


class FanState(TypedDict):
    topics: list[str]
    answers: Annotated[list[str], operator.add]


def _echo_model(scripted: ModuleType, **options: Any) -> Any:
    return scripted.ScriptedChatModel(
        script=lambda messages: AIMessage(content=f"echo {messages[-1].content}"), **options
    )


async def test_parallel_send_branches_are_named_by_node_with_separate_messages(scripted: ModuleType) -> None:
    model = _echo_model(scripted)

    async def worker(state: dict[str, Any]) -> dict[str, Any]:
        reply = await model.ainvoke(state["topic"])
        return {"answers": [reply.text]}

    def fan_out(state: FanState) -> list[Send]:
        return [Send("worker", {"topic": t}) for t in state["topics"]]

    builder = StateGraph(FanState)
    builder.add_node("worker", worker)  # type: ignore[call-overload]
    builder.add_conditional_edges(START, fan_out, ["worker"])
    builder.add_edge("worker", END)
    events = await capture_run(builder.compile(), {"topics": ["alpha", "beta", "gamma"], "answers": []})

    events.check_invariants()
    lifecycle = [(e.agent, e.phase) for e in events.of_type("agent_lifecycle")]  # type: ignore[union-attr]
    assert lifecycle.count(("worker", "started")) == 3
    assert lifecycle.count(("worker", "completed")) == 3
    by_message: dict[str, str] = {}
    for token in events.of_type("token"):
        assert token.agent == "worker"
        by_message[token.message_id] = by_message.get(token.message_id, "") + token.text  # type: ignore[union-attr]
    assert sorted(by_message.values()) == ["echo alpha", "echo beta", "echo gamma"]


@tool
def lookup(key: str, limit: int = 3) -> str:
    """Look a key up."""
    return f"{key}:{limit}"


@pytest.mark.parametrize("one_chunk", [False, True])
async def test_tool_call_names_and_argument_deltas_stream(scripted: ModuleType, one_chunk: bool) -> None:
    call = ToolCall(name="lookup", args={"key": "redis streams", "limit": 7}, id="call-1")
    model = scripted.ScriptedChatModel(
        script=[AIMessage(content="Let me check.", tool_calls=[call]), AIMessage(content="Done.")],
        tool_args_in_one_chunk=one_chunk,
    )

    events = await capture_run(tool_agent(model, [lookup]), _user("hi"))

    events.check_invariants()
    deltas = [e for e in events.of_type("tool_call") if e.phase == "args"]  # type: ignore[union-attr]
    assert (len(deltas) == 1) is one_chunk
    assert events.tool_calls() == {
        "call-1": {
            "name": "lookup",
            "args_text": json.dumps({"key": "redis streams", "limit": 7}),
            "args": {"key": "redis streams", "limit": 7},
            "output": "redis streams:7",
            "error": None,
        }
    }
    kinds = [(e.type, getattr(e, "phase", None)) for e in events if e.type in ("tool_call", "tool_result")]
    assert kinds[0] == ("tool_call", "start") and kinds[-2:] == [("tool_call", "end"), ("tool_result", None)]


async def test_interrupt_then_resume(scripted: ModuleType) -> None:
    def ask(state: MessagesState) -> dict[str, Any]:
        answer = interrupt({"question": "Publish the report?"})
        return {"messages": [AIMessage(content=f"answer: {answer}")]}

    builder = StateGraph(MessagesState)
    builder.add_node("approve", ask)
    builder.add_edge(START, "approve")
    builder.add_edge("approve", END)
    graph = builder.compile(checkpointer=InMemorySaver())
    config: RunnableConfig = {"configurable": {"thread_id": "hitl"}}

    first = await capture_run(graph, _user("go"), config)
    first.check_invariants()
    interrupts = first.of_type("interrupt")
    assert len(interrupts) == 1
    assert interrupts[0].interrupts[0].value == {"question": "Publish the report?"}  # type: ignore[union-attr]
    assert first.done.status == "interrupted"

    second = await capture_run(graph, Command(resume="yes"), config)
    second.check_invariants()
    assert second.done.status == "success"
    assert second.runs() != first.runs()


async def test_cancellation_ends_with_cancelled_done_and_drops_state(scripted: ModuleType) -> None:
    model = _echo_model(scripted, token_delay=0.05)
    events = CapturedEvents()
    first_token = asyncio.Event()

    def sink(event: StreamEvent) -> None:
        events.append(event)
        if event.type == "token":
            first_token.set()

    handler = KikiCallbackHandler(sink)

    async def talk(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await model.ainvoke("a b c d e f g h i j k l m n o p")]}

    builder = StateGraph(MessagesState)
    builder.add_node("talker", talk)
    builder.add_edge(START, "talker")
    builder.add_edge("talker", END)
    task = asyncio.create_task(builder.compile().ainvoke(_user("hi"), {"callbacks": [handler]}))
    await asyncio.wait_for(first_token.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    events.check_invariants()
    assert events.done.status == "cancelled"
    assert handler.active_runs == 0 and not handler._owner
    handler.finish_run(events.runs()[0], "error")  # already ended: nothing more
    assert [e.type for e in events].count("done") == 1


async def test_finish_run_covers_a_run_that_never_started() -> None:
    events = CapturedEvents()
    handler = KikiCallbackHandler(events.append, graph_name="team", thread_id="t")
    handler.finish_run("run-that-never-started", "cancelled")
    handler.finish_run("run-that-never-started", "cancelled")
    events.check_invariants()
    assert [e.type for e in events] == ["status", "done"]
    assert events.done.status == "cancelled"


async def test_tokens_flow_on_sync_invoke_in_a_worker_thread(scripted: ModuleType) -> None:
    model = _echo_model(scripted)

    def talk(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("talker", talk)
    builder.add_edge(START, "talker")
    builder.add_edge("talker", END)
    graph = builder.compile()
    async with EventBus() as bus:
        events = CapturedEvents()
        bus.subscribe(events.append)
        handler = KikiCallbackHandler(bus)
        await asyncio.to_thread(graph.invoke, _user("one two three"), {"callbacks": [handler]})
        await bus.drain()
    events.check_invariants()
    assert events.text("talker") == "echo one two three"
    assert len(events.of_type("token")) == 4


async def test_nostream_models_send_no_tokens_but_count_usage(scripted: ModuleType) -> None:
    quiet = _echo_model(scripted).with_config(tags=["nostream"])
    loud = _echo_model(scripted)

    async def talk(state: MessagesState) -> dict[str, list[BaseMessage]]:
        hidden = await quiet.ainvoke("secret plan")
        shown = await loud.ainvoke("public")
        return {"messages": [hidden, shown]}

    builder = StateGraph(MessagesState)
    builder.add_node("talker", talk)
    builder.add_edge(START, "talker")
    builder.add_edge("talker", END)
    events = await capture_run(builder.compile(), _user("x"))

    events.check_invariants()
    assert events.text() == "echo public"
    assert events.done.usage.output_tokens > len(events.of_type("token"))


async def test_custom_events_carry_the_agent(scripted: ModuleType) -> None:
    async def step(state: MessagesState) -> dict[str, list[BaseMessage]]:
        await adispatch_custom_event("progress", {"percent": 50})
        return {"messages": []}

    builder = StateGraph(MessagesState)
    builder.add_node("stepper", step)
    builder.add_edge(START, "stepper")
    builder.add_edge("stepper", END)
    events = await capture_run(builder.compile(), _user("x"))

    custom = events.of_type("custom")
    assert [(e.agent, e.name, e.data) for e in custom] == [("stepper", "progress", {"percent": 50})]  # type: ignore[union-attr]


async def test_a_failing_or_full_sink_never_reaches_the_graph(research_team: ModuleType) -> None:
    def exploding(event: StreamEvent) -> None:
        raise RuntimeError("sink is broken")

    handler = KikiCallbackHandler(exploding)
    result = await research_team.build_graph().ainvoke(TASK, {"callbacks": [handler]})
    assert result["messages"][-1].text
    assert handler.errors > 0

    refusing = KikiCallbackHandler(lambda event: False)
    await research_team.build_graph().ainvoke(TASK, {"callbacks": [refusing]})
    assert refusing.dropped > 0 and refusing.errors == 0


async def test_payloads_are_truncated(scripted: ModuleType) -> None:
    async def step(state: MessagesState) -> dict[str, list[BaseMessage]]:
        await adispatch_custom_event("blob", {"data": "x" * 500})
        return {"messages": []}

    builder = StateGraph(MessagesState)
    builder.add_node("stepper", step)
    builder.add_edge(START, "stepper")
    builder.add_edge("stepper", END)
    events = await capture_run(builder.compile(), _user("x"), max_payload_chars=100)
    data = events.of_type("custom")[0].data  # type: ignore[union-attr]
    assert isinstance(data, str) and len(data) <= 101 and data.endswith("…")


def _comparable(events: list[StreamEvent]) -> list[dict[str, Any]]:
    volatile = {"ts", "run_id", "duration_s", "ttft_s"}
    return [e.model_dump(exclude=volatile, exclude_none=True) for e in events]


async def test_astream_events_adapter_matches_the_handler(research_team: ModuleType) -> None:
    graph = research_team.build_graph()
    config: RunnableConfig = {"configurable": {"thread_id": "same"}}
    direct = await capture_run(graph, TASK, config)
    adapted = [e async for e in events_from_astream_events(graph, TASK, config)]

    CapturedEvents(adapted).check_invariants()
    assert _comparable(adapted) == _comparable(direct)


async def test_astream_events_adapter_reports_failure(research_team: ModuleType) -> None:
    adapted = CapturedEvents([e async for e in events_from_astream_events(research_team.build_graph(), _user("crash"))])
    adapted.check_invariants()
    assert adapted.done.status == "error"
    assert [e.agent for e in adapted.of_type("agent_lifecycle") if e.phase == "failed"] == ["writer"]  # type: ignore[union-attr]


async def test_agent_path_names_nested_agents_without_task_ids() -> None:
    from kiki_events.capture import agent_path

    nested = {"langgraph_checkpoint_ns": "research:1f0a|researcher:2b3c", "langgraph_node": "researcher"}
    assert agent_path(nested) == "research/researcher"
    assert agent_path({"langgraph_node": "writer"}) == "writer"
    assert agent_path({"langgraph_checkpoint_ns": "", "langgraph_node": "writer"}) == "writer"
    assert agent_path({}) is None
    assert agent_path(None) is None


async def test_every_llm_call_reports_model_timings_and_usage_once(research_team: ModuleType) -> None:
    events = await capture_run(research_team.build_graph(), TASK)

    calls = events.of_type("llm")
    streamed = {e.message_id for e in events.of_type("token")}  # type: ignore[union-attr]
    assert calls and {c.message_id for c in calls} >= streamed  # type: ignore[union-attr]
    assert len({c.message_id for c in calls}) == len(calls)  # type: ignore[union-attr]
    for call in calls:
        assert call.status == "success" and call.model == "scripted-1" and call.provider == "kiki"  # type: ignore[union-attr]
        assert call.ttft_s is not None and 0 <= call.ttft_s <= call.duration_s  # type: ignore[union-attr]
        # The call's report comes after every token of its message.
        last_token = max((e.seq for e in events.of_type("token") if e.message_id == call.message_id), default=0)  # type: ignore[union-attr]
        assert call.seq > last_token
    done = events.done.usage
    assert done.input_tokens == sum(c.usage.input_tokens for c in calls) > 0  # type: ignore[union-attr]
    assert done.output_tokens == sum(c.usage.output_tokens for c in calls) > 0  # type: ignore[union-attr]
    assert done.total_tokens == sum(c.usage.total_tokens for c in calls)  # type: ignore[union-attr]
    line = format_event(calls[0])
    assert " llm m" in line and "scripted-1 success" in line and "ttft=" in line


class _FixedReply(BaseChatModel):
    """Answers every call with ``reply`` as it is, usage included (no streaming)."""

    reply: AIMessage

    @property
    def _llm_type(self) -> str:
        return "fixed"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(ls_provider="acme", ls_model_name="big-1", ls_model_type="chat")

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self.reply)])


async def test_llm_usage_details_and_failures_are_reported(scripted: ModuleType) -> None:
    reply = AIMessage(
        "fine",
        usage_metadata={
            "input_tokens": 40,
            "output_tokens": 12,
            "total_tokens": 52,
            "input_token_details": {"cache_read": 32},
            "output_token_details": {"reasoning": 7},
        },
    )
    good = _FixedReply(reply=reply)
    broken = scripted.ScriptedChatModel(script=lambda messages: 1 / 0, model_name="broken-1")

    async def talk(state: MessagesState) -> dict[str, list[BaseMessage]]:
        answer = await good.ainvoke("hi")
        with contextlib.suppress(ZeroDivisionError):
            await broken.ainvoke("hi")
        return {"messages": [answer]}

    builder = StateGraph(MessagesState)
    builder.add_node("talker", talk)
    builder.add_edge(START, "talker")
    builder.add_edge("talker", END)
    events = await capture_run(builder.compile(), _user("x"))

    events.check_invariants()
    ok, failed = events.of_type("llm")
    assert ok.model == "big-1" and ok.provider == "acme" and ok.status == "success" and ok.agent == "talker"  # type: ignore[union-attr]
    assert ok.ttft_s is None  # nothing streamed
    assert ok.usage.model_dump() == {  # type: ignore[union-attr]
        "input_tokens": 40,
        "output_tokens": 12,
        "total_tokens": 52,
        "reasoning_tokens": 7,
        "cached_tokens": 32,
    }
    assert failed.status == "error" and failed.error_type == "ZeroDivisionError" and failed.model == "broken-1"  # type: ignore[union-attr]
    assert failed.usage.total_tokens == 0 and failed.duration_s >= 0  # type: ignore[union-attr]
    assert events.done.usage == ok.usage  # type: ignore[union-attr]


async def test_tool_results_carry_their_duration_and_error_type(research_team: ModuleType) -> None:
    events = await capture_run(research_team.build_graph(), _user("Please fail to fetch the Redis docs"))

    results = events.of_type("tool_result")
    assert results and all(r.duration_s is not None and r.duration_s >= 0 for r in results)  # type: ignore[union-attr]
    failed = [r for r in results if r.error]  # type: ignore[union-attr]
    assert len(failed) == 1 and failed[0].error_type  # type: ignore[union-attr]
    assert all(r.error_type is None for r in results if not r.error)  # type: ignore[union-attr]


async def test_events_built_without_validation_equal_their_validated_rebuild(research_team: ModuleType) -> None:
    """Agent steps, LLM calls and their usage are built unchecked (``events.trusted``): same models exactly."""
    events = await capture_run(research_team.build_graph(), TASK, {"configurable": {"thread_id": "t-1"}})

    kinds = {e.type for e in events}
    assert {"agent_lifecycle", "llm"} <= kinds
    assert any(e.usage.total_tokens for e in events.of_type("llm"))  # type: ignore[union-attr]
    for event in events:
        # Validated from exactly the fields the handler's call set (model_validate would mark all set).
        rebuilt = type(event)(**{name: getattr(event, name) for name in event.model_fields_set})
        assert rebuilt == event
        assert list(rebuilt.__dict__) == list(event.__dict__), event.type
        assert rebuilt.model_fields_set == event.model_fields_set, event.type
        assert encode(rebuilt) == encode(event)
        assert repr(rebuilt) == repr(event)


@pytest.mark.parametrize("argument", ["node", "thread_id", "graph_name", "causation_id"])
async def test_the_envelope_arguments_are_checked_when_the_handler_is_made(argument: str) -> None:
    """Tokens and the agent and ``llm`` events are built unchecked: their envelope is checked once, here."""
    with pytest.raises(ArgumentTypeError, match=f"^{argument} must be a string or None; got int$"):
        KikiCallbackHandler([].append, **{argument: 12345})
