"""Research team: a deterministic multi-agent LangGraph demo.

Load it like a ``langgraph.json`` entry: ``./agents/research_team.py:graph``.
It runs offline: every model is a :class:`ScriptedChatModel` (from the sibling
file ``scripted_model.py``) that streams its replies token by token.

Shape of the graph (named ``research_team``)::

    START -> supervisor --> research --> supervisor --> writer -> END
                            (subgraph)                   |  ^
                                                         v  |
                                                       publish  (only with "approval")

* ``supervisor`` (LLM node) says what happens next and routes: first to
  ``research``, then to ``writer``, then (if ever called again) to END.
* ``research`` is a subgraph with nodes ``researcher`` (LLM with tools bound)
  and ``tools`` (a ``ToolNode``). The researcher first calls ``web_search`` and
  ``fetch_page`` in one turn, then summarises the results and the subgraph ends.
* ``writer`` (LLM node) streams a multi-paragraph answer built from the task
  and the findings.

The first sentence of the user's message is the topic, e.g.
``"Compare Redis streams and pub/sub"``. Whole words in the message (any case)
switch on special behaviours:

* ``fail``  - the researcher fetches a paywalled URL, so ``fetch_page`` raises
  ``PermissionError``; the tools node reports it as a ``ToolMessage`` with
  ``status="error"`` and the run continues.
* ``crash`` - the writer node raises ``RuntimeError`` after streaming its
  answer; the error message contains the fake credential ``password=hunter2``
  (for testing redaction).
* ``approval`` - the writer asks before publishing: after its answer it calls the
  ``publish`` tool, whose run stops on an interrupt (a tool approval, see
  ``docs/events.md``) with the value ``{"question": "Publish the report on
  <topic>?", "tool_call_id": ..., "tool": "publish", "args": {"title": <topic>}}``.
  Resume the thread with ``{"approved": true}`` (or ``false``, with an optional
  ``"reason"``); the tool publishes or not, and the writer says which.

Environment:

* ``KIKI_DEMO_TOKEN_DELAY`` - seconds between streamed chunks for the
  module-level ``graph`` (default ``0.02``, so the demo reads like a real LLM).

For tests and benchmarks use the factories instead of ``graph``:

* ``build_graph(token_delay=0.0, tokens_per_answer=2000)`` - the same team, with
  the writer's answer cut or padded to exactly 2000 streamed text chunks.
* ``build_benchmark_graph(tokens=2000)`` - two LLM nodes in a row, ``draft``
  then ``review``, each streaming exactly ``tokens`` text chunks, no tools:
  "2 LLM nodes x 2,000 tokens".

Every model call also streams one final empty chunk with the token usage, so
in ``stream_mode="messages"`` an answer of N text chunks arrives as N + 1
message chunks.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import InjectedToolCallId, StructuredTool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Checkpointer, interrupt
from typing_extensions import TypedDict

__all__ = [
    "APPROVAL_KEYWORD",
    "CRASH_KEYWORD",
    "FAIL_KEYWORD",
    "TOKEN_DELAY_ENV",
    "BenchmarkState",
    "ResearchState",
    "TeamState",
    "build_benchmark_graph",
    "build_graph",
    "build_writer_graph",
    "fetch_page",
    "graph",
    "publish",
    "web_search",
]


def _load_sibling(stem: str) -> ModuleType:
    """Import ``<stem>.py`` from this file's directory, by file path.

    This directory is not a package (a package named ``agents`` would collide
    with other libraries), and graphs are loaded by path, so a plain import
    would depend on ``sys.path``. The module name includes a hash of the path
    so that two checkouts never share a module.
    """
    path = Path(__file__).resolve().with_name(f"{stem}.py")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"_kiki_agents_{stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        msg = f"cannot load {path}"
        raise ImportError(msg)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic resolves annotations through it
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


if TYPE_CHECKING:
    from scripted_model import ScriptedChatModel, fit_to_tokens, lorem_tokens
else:
    _scripted_model = _load_sibling("scripted_model")
    ScriptedChatModel = _scripted_model.ScriptedChatModel
    fit_to_tokens = _scripted_model.fit_to_tokens
    lorem_tokens = _scripted_model.lorem_tokens


TOKEN_DELAY_ENV = "KIKI_DEMO_TOKEN_DELAY"
DEFAULT_DEMO_TOKEN_DELAY = 0.02

FAIL_KEYWORD = "fail"
CRASH_KEYWORD = "crash"
APPROVAL_KEYWORD = "approval"

# fmt: off
_LEADING_VERBS = frozenset(
    (
        "analyse", "analyze", "compare", "describe", "evaluate", "explain", "explore", "investigate",
        "research", "review", "summarise", "summarize",
    )
)
# fmt: on


# -- state ---------------------------------------------------------------------


class TeamState(TypedDict, total=False):
    """State of the root graph."""

    messages: Annotated[list[AnyMessage], add_messages]
    next: str
    """The supervisor's routing decision: ``research``, ``writer`` or END."""


class ResearchState(TypedDict):
    """State of the ``research`` subgraph."""

    messages: Annotated[list[AnyMessage], add_messages]


class BenchmarkState(TypedDict):
    """State of the benchmark graph."""

    messages: Annotated[list[AnyMessage], add_messages]


# -- tools -----------------------------------------------------------------------


def _search(query: str) -> str:
    """Search the web and return the top three results for a query.

    Args:
        query: What to search for, in a few words.
    """
    slug = _slug(query)
    score = zlib.crc32(query.encode())
    results = [
        (
            f"{query} - reference guide",
            f"https://docs.example.com/{slug}",
            f"Core concepts of {query}: delivery guarantees, ordering and limits.",
        ),
        (
            f"{query} in production: lessons learned",
            f"https://engineering.example.org/blog/{slug}",
            f"A team ran {query} at {10 + score % 90}k messages per second; "
            "retention and consumer lag drove most of the operational work.",
        ),
        (
            f"Benchmarking {query}",
            f"https://bench.example.net/{slug}",
            f"p99 latency stayed under {2 + score % 18} ms until the consumers fell behind.",
        ),
    ]
    return "\n".join(
        f"{rank}. {title} ({url})\n   {snippet}" for rank, (title, url, snippet) in enumerate(results, start=1)
    )


def _fetch(url: str) -> str:
    """Download a web page and return its main text.

    Args:
        url: Absolute http(s) URL of the page.
    """
    if not url.startswith(("http://", "https://")):
        msg = f"not an absolute http(s) URL: {url!r}"
        raise ValueError(msg)
    if "paywall" in url:
        msg = f"403 Forbidden: {url} is behind a paywall"
        raise PermissionError(msg)
    topic = url.rstrip("/").rsplit("/", 1)[-1].replace("-", " ")
    return (
        f"{topic.capitalize()}\n\n"
        f"The page explains {topic} step by step. It recommends measuring "
        "delivery guarantees, replay needs and fan-out before choosing, and "
        "warns that retention settings dominate memory use."
    )


async def _search_async(query: str) -> str:
    return _search(query)


async def _fetch_async(url: str) -> str:
    return _fetch(url)


# Each tool has a sync body and a native coroutine: async runs then execute
# parallel tool calls on the event loop in call order (no worker threads), so a
# run's event sequence is reproducible, while ``invoke`` still works.
web_search = StructuredTool.from_function(
    func=_search, coroutine=_search_async, name="web_search", parse_docstring=True
)
fetch_page = StructuredTool.from_function(func=_fetch, coroutine=_fetch_async, name="fetch_page", parse_docstring=True)


def _approved(answer: Any) -> tuple[bool, str | None]:
    """Whether a tool approval ``answer`` approves, and the reason given."""
    if isinstance(answer, bool):
        return answer, None
    if isinstance(answer, Mapping) and isinstance(answer.get("approved"), bool):
        reason = answer.get("reason")
        return answer["approved"], reason if isinstance(reason, str) and reason else None
    msg = f'answer the approval with {{"approved": true}} or {{"approved": false, "reason": "..."}}; got {answer!r}'
    raise ValueError(msg)


def _publish(title: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> str:
    """Publish the report, once a person approves it.

    Args:
        title: The report's title.
    """
    answer = interrupt(
        {
            "question": f"Publish the report on {title}?",
            "tool_call_id": tool_call_id,
            "tool": "publish",
            "args": {"title": title},
        }
    )
    approved, reason = _approved(answer)
    if approved:
        return f"Published the report on {title} at https://reports.example.com/{_slug(title)}."
    return f"Not published: {reason or 'the reviewer declined'}."


async def _publish_async(title: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> str:
    return _publish(title, tool_call_id)


publish = StructuredTool.from_function(func=_publish, coroutine=_publish_async, name="publish", parse_docstring=True)


def _tool_error_message(error: Exception) -> str:
    """Text of the ``ToolMessage`` that reports a failed tool call."""
    return f"Error: {type(error).__name__}: {error}"


# -- what the scripted models say ------------------------------------------------


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE) is not None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "topic"


def _turn(messages: list[BaseMessage]) -> list[BaseMessage]:
    """The current turn of the conversation: from the last human message on.

    With a checkpointer a thread keeps its history, so the next message on the
    thread starts a new turn: the team researches and answers it afresh.
    """
    for index in range(len(messages) - 1, -1, -1):
        if isinstance(messages[index], HumanMessage):
            return messages[index:]
    return messages


def _task(messages: list[BaseMessage]) -> str:
    """The user's request: the last human message."""
    turn = _turn(messages)
    return turn[0].text.strip() if turn and isinstance(turn[0], HumanMessage) else ""


def _topic(task: str) -> str:
    """Topic of the task: its first sentence without a leading verb."""
    sentence = re.split(r"[.?!\n]", task.strip(), maxsplit=1)[0].strip()
    words = sentence.split()
    if len(words) > 1 and words[0].lower() in _LEADING_VERBS:
        words = words[1:]
    return " ".join(words) or "the question"


def _by(messages: list[BaseMessage], name: str) -> list[AIMessage]:
    return [m for m in messages if isinstance(m, AIMessage) and m.name == name]


def _next_step(messages: list[BaseMessage]) -> str:
    """The supervisor's routing rule (for the current turn)."""
    messages = _turn(messages)
    if not any(not m.tool_calls for m in _by(messages, "researcher")):
        return "research"
    if not _by(messages, "writer"):
        return "writer"
    return END


def _supervisor_script(messages: list[BaseMessage]) -> AIMessage:
    topic = _topic(_task(messages))
    step = _next_step(messages)
    if step == "research":
        text = f"I'll ask the researcher to look into {topic}."
    elif step == "writer":
        text = "The research is in. I'll ask the writer to turn it into an answer."
    else:
        text = "The answer is ready."
    return AIMessage(content=text)


def _latest_tool_results(messages: list[BaseMessage]) -> list[ToolMessage]:
    """Tool messages after the last AI message (empty if that came last)."""
    results: list[ToolMessage] = []
    for message in reversed(messages):
        if isinstance(message, AIMessage):
            break
        if isinstance(message, ToolMessage):
            results.append(message)
    return results[::-1]


def _researcher_script(messages: list[BaseMessage]) -> AIMessage:
    task = _task(messages)
    topic = _topic(task)
    results = _latest_tool_results(messages)
    if not results:
        host = "journal.example.com/paywall" if _has_word(task, FAIL_KEYWORD) else "docs.example.com"
        return AIMessage(
            content=f"Let me search for sources on {topic}.",
            tool_calls=[
                {"name": "web_search", "args": {"query": topic}, "id": None},
                {
                    "name": "fetch_page",
                    "args": {"url": f"https://{host}/{_slug(topic)}"},
                    "id": None,
                },
            ],
        )
    lines = [f"Findings on {topic}:"]
    for result in results:
        first_line = result.text.strip().splitlines()[0] if result.text.strip() else ""
        if result.status == "error":
            lines.append(f"- {result.name} failed ({first_line}); I used the search results.")
        else:
            lines.append(f"- {result.name}: {first_line}")
    return AIMessage(content="\n".join(lines))


def _writer_script(messages: list[BaseMessage]) -> AIMessage:
    last = messages[-1] if messages else None
    if isinstance(last, ToolMessage) and last.name == "publish":
        if last.status == "error" or last.text.startswith("Not published"):
            return AIMessage(content=f"I did not publish the report. {last.text}")
        return AIMessage(content=f"Done. {last.text}")
    reply = _answer(messages)
    if _has_word(_task(messages), APPROVAL_KEYWORD):
        title = _topic(_task(messages))
        return AIMessage(content=reply.text, tool_calls=[{"name": "publish", "args": {"title": title}, "id": None}])
    return reply


def _answer(messages: list[BaseMessage]) -> AIMessage:
    """The writer's answer to the task, from the turn's research."""
    task = _task(messages)
    topic = _topic(task)
    results = [m for m in _turn(messages) if isinstance(m, ToolMessage)]
    failed = [m for m in results if m.status == "error"]
    snippets = [
        line.strip()
        for m in results
        if m.name == "web_search" and m.status != "error"
        for line in m.text.splitlines()
        if line.startswith("   ")
    ]
    paragraphs = [
        f"Here is what the team found on {topic}. The short version: the right "
        "choice depends on whether consumers must be able to replay history, how "
        "many of them read the same data, and how much operational work you can "
        "afford.",
        "What the sources say. " + " ".join(snippets)
        if snippets
        else "The search returned nothing usable, so this answer is general.",
        f"How to decide. Start from the delivery guarantee you need for {topic}, "
        "then check fan-out and retention. Prefer the simpler option when messages "
        "may be lost without harm, and the durable one when every message counts. "
        "Measure consumer lag early: it is the first number to move when load grows.",
    ]
    if failed:
        paragraphs.append(
            f"Caveat: {len(failed)} source(s) could not be retrieved, so parts of "
            "this answer rest on search snippets only."
        )
    paragraphs.append(f"Sources: {len(results) - len(failed)} of {len(results)} tool calls succeeded.")
    return AIMessage(content="\n\n".join(paragraphs))


# -- nodes -----------------------------------------------------------------------

_Finish = Callable[[Mapping[str, Any], AIMessage], dict[str, Any]]


class _LLMNode(Runnable[Any, dict[str, Any]]):
    """A graph node that calls a chat model on the conversation so far.

    It runs natively in both sync and async graphs (``invoke`` calls the model's
    ``invoke``, ``ainvoke`` its ``ainvoke``) and adds no trace level of its own:
    the node's run is the model run's parent. A plain sync function would run
    in a worker thread under ``ainvoke``/``astream``, an ``async def`` one
    could not run under ``invoke``, and a ``RunnableLambda`` with both would
    add a second run named like the node.
    """

    def __init__(
        self,
        name: str,
        model: Runnable[LanguageModelInput, AIMessage],
        system_prompt: str,
        finish: _Finish,
    ) -> None:
        self.name = name
        self.model = model
        self.system_prompt = system_prompt
        self.finish = finish

    def _prompt(self, state: Mapping[str, Any]) -> list[BaseMessage]:
        return [SystemMessage(content=self.system_prompt), *state["messages"]]

    def invoke(
        self,
        input: Any,
        config: RunnableConfig | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        reply = self.model.invoke(self._prompt(input), config)
        return self.finish(input, reply)

    async def ainvoke(
        self,
        input: Any,
        config: RunnableConfig | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        reply = await self.model.ainvoke(self._prompt(input), config)
        return self.finish(input, reply)


def _reply_as(name: str) -> _Finish:
    """Finish step that appends the reply to ``messages`` under ``name``."""

    def finish(state: Mapping[str, Any], reply: AIMessage) -> dict[str, Any]:
        return {"messages": [reply.model_copy(update={"name": name})]}

    return finish


def _finish_supervisor(state: Mapping[str, Any], reply: AIMessage) -> dict[str, Any]:
    return {
        "messages": [reply.model_copy(update={"name": "supervisor"})],
        "next": _next_step(state["messages"]),
    }


def _finish_writer(state: Mapping[str, Any], reply: AIMessage) -> dict[str, Any]:
    if _has_word(_task(state["messages"]), CRASH_KEYWORD):
        msg = (
            "writer could not publish the report: connection refused by "
            "postgres://writer:password=hunter2@reports.internal:5432/reports"
        )
        raise RuntimeError(msg)
    return _reply_as("writer")(state, reply)


def _route_supervisor(state: TeamState) -> str:
    return state.get("next", END)


def _route_writer(state: TeamState) -> str:
    """To ``publish`` while the writer asks to publish, else the end."""
    last = state["messages"][-1]
    return "publish" if isinstance(last, AIMessage) and last.tool_calls else END


# -- graphs ----------------------------------------------------------------------


def _writer_node(token_delay: float, tokens_per_answer: int | None) -> _LLMNode:
    def writer_script(messages: list[BaseMessage]) -> AIMessage:
        reply = _writer_script(messages)
        if tokens_per_answer is not None:
            reply = AIMessage(content=fit_to_tokens(reply.text, tokens_per_answer), tool_calls=reply.tool_calls)
        return reply

    return _LLMNode(
        "writer",
        ScriptedChatModel(script=writer_script, token_delay=token_delay),
        "You are a writer. Answer the user's request from the research findings.",
        _finish_writer,
    )


def build_writer_graph(
    *, token_delay: float = 0.0, tokens_per_answer: int | None = None
) -> CompiledStateGraph[TeamState, None, TeamState, TeamState]:
    """The writer alone: ``START -> writer -> END`` on the team's conversation.

    A node serves it as the agent ``writer`` for teams on other nodes (see
    ``research_team_split.py``).
    """
    graph = StateGraph(TeamState)
    graph.add_node("writer", _writer_node(token_delay, tokens_per_answer))
    graph.add_edge(START, "writer")
    graph.add_edge("writer", END)
    return graph.compile(name="writer")


def build_graph(
    *,
    token_delay: float = 0.0,
    tokens_per_answer: int | None = None,
    checkpointer: Checkpointer = None,
    writer: Any = None,
) -> CompiledStateGraph[TeamState, None, TeamState, TeamState]:
    """Build the research team graph.

    Args:
        token_delay: Seconds between streamed chunks of every model.
        tokens_per_answer: If set, the writer's answer is cut or padded to
            exactly this many streamed text chunks (for benchmarks).
        checkpointer: Passed to ``compile``.
        writer: Replaces the writer node (e.g. a node that delegates to a
            writer agent on another node).
    """
    tools = [web_search, fetch_page]
    researcher_model = ScriptedChatModel(script=_researcher_script, token_delay=token_delay).bind_tools(tools)

    research = StateGraph(ResearchState)
    research.add_node(
        "researcher",
        _LLMNode(
            "researcher",
            researcher_model,
            "You are a researcher. Use the tools to find sources, then summarise them.",
            _reply_as("researcher"),
        ),
    )
    research.add_node("tools", ToolNode(tools, handle_tool_errors=_tool_error_message))
    research.add_edge(START, "researcher")
    research.add_conditional_edges("researcher", tools_condition, ["tools", END])
    research.add_edge("tools", "researcher")

    team = StateGraph(TeamState)
    team.add_node(
        "supervisor",
        _LLMNode(
            "supervisor",
            ScriptedChatModel(script=_supervisor_script, token_delay=token_delay),
            "You lead a research team. Delegate to the researcher, then the writer.",
            _finish_supervisor,
        ),
    )
    team.add_node("research", research.compile(name="research"))
    team.add_node("writer", writer if writer is not None else _writer_node(token_delay, tokens_per_answer))
    team.add_node("publish", ToolNode([publish], handle_tool_errors=_tool_error_message))
    team.add_edge(START, "supervisor")
    team.add_conditional_edges("supervisor", _route_supervisor, ["research", "writer", END])
    team.add_edge("research", "supervisor")
    team.add_conditional_edges("writer", _route_writer, ["publish", END])
    team.add_edge("publish", "writer")
    return team.compile(checkpointer=checkpointer, name="research_team")


def build_benchmark_graph(
    tokens: int = 2000,
    *,
    token_delay: float = 0.0,
    checkpointer: Checkpointer = None,
) -> CompiledStateGraph[BenchmarkState, None, BenchmarkState, BenchmarkState]:
    """Build ``START -> draft -> review -> END``: two LLM nodes, no tools.

    Each node's model streams exactly ``tokens`` text chunks per call.
    """
    graph = StateGraph(BenchmarkState)
    previous: str = START
    for seed, name in enumerate(("draft", "review"), start=1):
        text = lorem_tokens(tokens, seed=seed)
        model = ScriptedChatModel(
            script=lambda _messages, text=text: AIMessage(content=text),
            token_delay=token_delay,
        )
        graph.add_node(
            name,
            _LLMNode(name, model, f"You {name} the text.", _reply_as(name)),
        )
        graph.add_edge(previous, name)
        previous = name
    graph.add_edge(previous, END)
    return graph.compile(checkpointer=checkpointer, name="benchmark")


def _token_delay_from_env() -> float:
    raw = os.environ.get(TOKEN_DELAY_ENV, "").strip()
    if not raw:
        return DEFAULT_DEMO_TOKEN_DELAY
    try:
        delay = float(raw)
    except ValueError:
        msg = f"{TOKEN_DELAY_ENV} must be a number of seconds, got {raw!r}"
        raise ValueError(msg) from None
    if delay < 0:
        msg = f"{TOKEN_DELAY_ENV} must not be negative, got {raw!r}"
        raise ValueError(msg)
    return delay


graph = build_graph(token_delay=_token_delay_from_env())
