"""The AG-UI client library itself (``HttpAgent`` of @ag-ui/client 1.0 and of the last 0.0.x) against a real server.

``tests/js/agui/drive.mjs`` runs the client under Node: ``runAgent`` with subscribers
on ``POST /ag-ui/{graph}`` of a uvicorn server, which serves the demo research team
from its graph config. Every scenario runs with both client versions and checks that
the client took every event (no error thrown, nothing printed: the client warns when
it strips or drops what it does not know) and ended on the right terminal event.

The clients are pinned in ``tests/js/agui/package-lock.json`` and installed with
``npm ci`` into ``tests/js/agui/node_modules`` when missing; without Node, npm or the
registry the tests skip, unless ``KIKI_REQUIRE_NODE=1``, where that fails them.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, BaseMessage
from langgraph.graph import START, MessagesState, StateGraph

from kiki_events.config import Settings
from kiki_events.server import create_app
from tests.node_harness import JS, install
from tests.processes import dying_with_us
from tests.servers import Gate, LiveServer, gated_graph, live_server
from tests.test_format_agui_parts import progress_graph

ROOT = Path(__file__).resolve().parent.parent
HARNESS = JS / "agui"
TOKEN = "agui-client-token-a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLIENTS = ["1", "0"]
"""``1``: @ag-ui/client 1.0 (declares protocol 1.0); ``0``: the last 0.0.x (declares nothing)."""
TERMINAL = {"RUN_FINISHED", "RUN_ERROR"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def node() -> str:
    """The ``node`` executable, with the pinned clients installed (``npm ci``) if they are not yet."""
    return install("agui")[0]


def _drive(
    node: str, tmp_path: Path, scenario: dict[str, Any], on_signal: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Run the harness on ``scenario``; ``on_signal`` is called for each signal line; returns its steps."""
    path = tmp_path / f"scenario-{scenario['client']}.json"
    path.write_text(json.dumps(scenario))
    process = subprocess.Popen(
        dying_with_us([node, "drive.mjs", str(path)]),
        cwd=HARNESS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(180, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None and process.stderr is not None
        for line in process.stdout:
            message = json.loads(line)
            if "signal" in message:
                assert on_signal is not None, message
                on_signal(message["signal"])
            else:
                steps: list[dict[str, Any]] = message["steps"]
                process.wait(60)
                return steps
        stderr = process.stderr.read()
        raise AssertionError(f"the harness ended without a result ({process.wait(60)}): {stderr[-2000:]}")
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def _server(research_team: ModuleType, **graphs: Any) -> Iterator[LiveServer]:
    """The demo research team from the graph config (``team``, streaming at the demo's pace), the same
    team without delays (``quick``), and ``graphs``, behind a bearer token."""
    graphs = {"quick": research_team.build_graph(), **graphs}
    settings = Settings.model_validate(
        {
            "graphs": {"team": "./agents/research_team.py:graph"},
            "server": {"auth": {"bearer_tokens": {"alice": TOKEN}}},
        }
    )
    with live_server(create_app(settings, graphs=graphs, base_dir=ROOT)) as server:
        yield server


def _scenario(client: str, server: LiveServer, graph: str, thread: str, *steps: dict[str, Any]) -> dict[str, Any]:
    return {
        "client": client,
        "url": server.url,
        "headers": AUTH,
        "graph": graph,
        "threadId": f"{thread}-{client}",
        "steps": list(steps),
    }


def _say(text: str) -> dict[str, Any]:
    """A step: add a user message and run the agent."""
    return {"do": "run", "message": text}


def _types(step: dict[str, Any]) -> list[str]:
    return [e["type"] for e in step["events"]]


def _clean(step: dict[str, Any], terminal: str) -> dict[str, Any]:
    """The client took every event: nothing thrown or printed, RUN_STARTED first, one ``terminal`` last."""
    assert step["error"] is None, step["error"]
    assert step["printed"] == [], step["printed"]
    types = _types(step)
    assert types[0] == "RUN_STARTED" and types[-1] == terminal, types
    assert [t in TERMINAL for t in types].count(True) == 1, types
    last: dict[str, Any] = step["events"][-1]
    return last


def _of(step: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in step["events"] if e["type"] == kind]


def _state(server: LiveServer, thread: str) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{server.url}/threads/{thread}/state", headers=AUTH, timeout=30).json()
    return state


def _texts(messages: list[dict[str, Any]], role: str) -> list[str]:
    return [m["content"] for m in messages if m["role"] == role and isinstance(m.get("content"), str)]


def _run_status(server: LiveServer, run_id: str) -> str:
    status: str = httpx.get(f"{server.url}/runs/{run_id}", headers=AUTH, timeout=30).json()["status"]
    return status


def _outcome(client: str, finished: dict[str, Any], expected: str) -> None:
    """1.0 clients get the outcome; 0.0.x ones get a RUN_FINISHED without one (they know none)."""
    if client == "1":
        assert finished["outcome"]["type"] == expected, finished
    else:
        assert "outcome" not in finished, finished


@pytest.mark.parametrize("client", CLIENTS)
def test_a_demo_run_with_tool_calls_text_and_steps(
    node: str, tmp_path: Path, research_team: ModuleType, client: str
) -> None:
    with _server(research_team) as server:
        scenario = _scenario(client, server, "team", "demo", _say("Compare Redis streams and pub/sub"))
        [step] = _drive(node, tmp_path, scenario)
        state = _state(server, scenario["threadId"])

    finished = _clean(step, "RUN_FINISHED")
    _outcome(client, finished, "success")
    assert (finished["threadId"], step["events"][0]["runId"]) == (scenario["threadId"], finished["runId"])
    assert {e["stepName"] for e in _of(step, "STEP_STARTED")} >= {"supervisor", "research", "writer"}
    # The client's own conversation: the researcher's two tool calls with their results, and the answers.
    messages = step["messages"]
    calls = {c["id"]: c for m in messages if m["role"] == "assistant" for c in m.get("toolCalls", [])}
    assert {c["function"]["name"] for c in calls.values()} == {"web_search", "fetch_page"}
    assert all(json.loads(c["function"]["arguments"]) for c in calls.values())
    results = {m["toolCallId"]: m["content"] for m in messages if m["role"] == "tool"}
    assert results.keys() == calls.keys() and all(results.values())
    # The writer's answer as the client assembled it is the thread's last message on the server.
    assert _texts(messages, "assistant")[-1] == state["values"]["messages"][-1]["content"]


@pytest.mark.parametrize("client", CLIENTS)
def test_a_failing_tool_and_a_graph_that_raises(
    node: str, tmp_path: Path, research_team: ModuleType, client: str
) -> None:
    with _server(research_team) as server:
        failing = _scenario(client, server, "quick", "fail", _say("Please fail to fetch the Redis docs"))
        [failed] = _drive(node, tmp_path, failing)
        crashing = _scenario(client, server, "quick", "crash", _say("Compare queues and crash"))
        [crashed] = _drive(node, tmp_path, crashing)

    # A failing tool is a result with the error, and the run goes on to succeed.
    _outcome(client, _clean(failed, "RUN_FINISHED"), "success")
    errors = [m["content"] for m in failed["messages"] if m["role"] == "tool" and "PermissionError" in m["content"]]
    assert len(errors) == 1 and errors[0].startswith("PermissionError: "), errors
    # A graph that raises ends with one RUN_ERROR, redacted; runAgent itself does not throw.
    error = _clean(crashed, "RUN_ERROR")
    assert error["code"] == "RuntimeError" and error["message"].startswith("RuntimeError: "), error
    assert "hunter2" not in json.dumps(crashed)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_run_cancelled_through_the_api_while_the_client_reads(
    node: str, tmp_path: Path, research_team: ModuleType, client: str
) -> None:
    gate = Gate()
    with _server(research_team, gated=gated_graph(research_team, gate)) as server:
        steps = {"do": "run", "message": "Compare Redis streams and pub/sub", "cancelOnStep": "hold"}
        [step] = _drive(node, tmp_path, _scenario(client, server, "gated", "cancel", steps))
        status = _run_status(server, step["runId"])
        gate.open()

    assert status == "cancelled" and step["cancelStatus"][0] in (200, 202), (status, step["cancelStatus"])
    assert _of(step, "STEP_STARTED")[-1]["stepName"] == "hold"
    if client == "1":
        assert _clean(step, "RUN_FINISHED")["outcome"] == {"type": "cancelled"}
    else:  # 0.0.x knows no cancelled outcome
        assert _clean(step, "RUN_ERROR")["code"] == "cancelled"


@pytest.mark.parametrize("client", CLIENTS)
def test_a_tool_approval_answered_through_the_client(
    node: str, tmp_path: Path, research_team: ModuleType, client: str
) -> None:
    with _server(research_team) as server:
        scenario = _scenario(
            client,
            server,
            "quick",
            "approve",
            {"do": "run", "message": "Redis. Compare streams and pub/sub, with approval"},
            {"do": "run", "answer": {"approved": True}},
        )
        asked, answered = _drive(node, tmp_path, scenario)
        state = _state(server, scenario["threadId"])

    first = _clean(asked, "RUN_FINISHED")
    [publish] = [e for e in _of(asked, "TOOL_CALL_START") if e["toolCallName"] == "publish"]
    call_id = publish["toolCallId"]
    [carried] = [e["value"] for e in _of(asked, "CUSTOM") if e["name"] == "kiki.interrupt"]
    [interrupt_id] = [i["id"] for i in carried["interrupts"]]
    if client == "1":
        # The client keeps the interrupt as pending and answers it by id in its next run.
        [interrupt] = first["outcome"]["interrupts"]
        assert interrupt["id"] == interrupt_id and asked["pendingInterrupts"] == [interrupt]
        assert (interrupt["reason"], interrupt["toolCallId"]) == ("tool_call", call_id)
        assert interrupt["message"] == carried["interrupts"][0]["value"]["question"] == "Publish the report on Redis?"
        assert interrupt["responseSchema"]["required"] == ["approved"]
        assert answered["pendingInterrupts"] == []
    else:
        _outcome(client, first, "interrupt")
    assert answered["resume"] == [{"interruptId": interrupt_id, "status": "resolved", "payload": {"approved": True}}]
    _outcome(client, _clean(answered, "RUN_FINISHED"), "success")
    # The tool's result arrives in the second run, under the call the first one streamed.
    [result] = _of(answered, "TOOL_CALL_RESULT")
    assert result["toolCallId"] == call_id and result["content"].startswith("Published the report")
    tool_messages = {m["toolCallId"]: m["content"] for m in answered["messages"] if m["role"] == "tool"}
    assert tool_messages[call_id] == result["content"]
    assert _texts(answered["messages"], "assistant")[-1].startswith("Done. Published the report")
    assert state["interrupts"] == [] and state["values"]["messages"][-1]["content"].startswith("Done.")


def _echo_graph(scripted: ModuleType) -> Any:
    """One LLM node whose model answers with every message it is given, joined by `` | ``."""

    def script(messages: list[BaseMessage]) -> AIMessage:
        return AIMessage(content=" | ".join(str(m.content) for m in messages))

    model = scripted.ScriptedChatModel(script=script, token_delay=0.0)

    async def echo(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("echo", echo)
    builder.add_edge(START, "echo")
    return builder.compile()


@pytest.mark.parametrize("client", CLIENTS)
def test_a_second_message_on_the_thread_sees_the_first(
    node: str, tmp_path: Path, research_team: ModuleType, scripted: ModuleType, client: str
) -> None:
    with _server(research_team, echo=_echo_graph(scripted)) as server:
        scenario = _scenario(
            client,
            server,
            "echo",
            "memory",
            {"do": "run", "message": "my name is Kiki"},
            {"do": "run", "message": "what is my name?"},
        )
        first, second = _drive(node, tmp_path, scenario)

    for step in (first, second):
        _outcome(client, _clean(step, "RUN_FINISHED"), "success")
    # The client sent its whole conversation; the reply shows the thread remembered the first turn.
    assert _texts(second["messages"], "user") == ["my name is Kiki", "what is my name?"]
    assert _texts(second["messages"], "assistant") == [
        "my name is Kiki",
        "my name is Kiki | my name is Kiki | what is my name?",
    ]


@pytest.mark.parametrize("client", CLIENTS)
def test_a_client_re_attaches_to_a_running_run(
    node: str, tmp_path: Path, research_team: ModuleType, client: str
) -> None:
    gate = Gate()
    with _server(research_team, gated=gated_graph(research_team, gate, tokens=20)) as server:
        scenario = _scenario(
            client,
            server,
            "gated",
            "attach",
            {"do": "run", "message": "Compare Redis streams and pub/sub", "abortOnStep": "hold"},
            {"do": "connect", "signalOnStep": "hold"},
        )
        dropped, attached = _drive(node, tmp_path, scenario, on_signal=lambda _name: gate.open())
        status = _run_status(server, attached["runId"])

    # The first connection dropped while the run waited at the gate (the client ends such a run
    # itself, with a RUN_ERROR of its own making); the run went on.
    assert _of(dropped, "STEP_STARTED")[-1] == dropped["events"][-2] and dropped["error"] is None
    assert dropped["events"][-1] == {
        "type": "RUN_ERROR",
        "message": "This operation was aborted",
        "code": "abort",
        "rawEvent": {},
    }
    assert status == "success" and dropped["runId"] == attached["runId"]
    # The re-attached client read the whole run (replayed, then live past the gate) to its end.
    finished = _clean(attached, "RUN_FINISHED")
    assert finished["outcome"] == {"type": "success"}  # the run's stream speaks 1.0
    assert {e["stepName"] for e in _of(attached, "STEP_STARTED")} >= {"team", "hold", "review"}
    # The same ids as on the first connection, so a client can match what it already has.
    started = [e["messageId"] for e in _of(dropped, "TEXT_MESSAGE_START")]
    assert started and [e["messageId"] for e in _of(attached, "TEXT_MESSAGE_START")][: len(started)] == started
    last = _of(attached, "TEXT_MESSAGE_START")[-1]["messageId"]
    reply = "".join(e["delta"] for e in _of(attached, "TEXT_MESSAGE_CONTENT") if e["messageId"] == last)
    assert _texts(attached["messages"], "assistant")[-1] == reply and len(reply.split()) >= 20


@pytest.mark.parametrize("client", CLIENTS)
def test_a_tool_calls_progress_reaches_the_client(
    node: str, tmp_path: Path, research_team: ModuleType, scripted: ModuleType, client: str
) -> None:
    with _server(research_team, crawl=progress_graph(scripted)) as server:
        [step] = _drive(node, tmp_path, _scenario(client, server, "crawl", "progress", {"do": "run", "message": "go"}))

    _outcome(client, _clean(step, "RUN_FINISHED"), "success")
    latest = {
        call: {"toolCallId": call, "name": "page", "data": {"site": site, "page": 2}}
        for call, site in (("call-a", "a"), ("call-b", "b"))
    }
    if client == "1":
        # One activity message per call in the client's conversation, holding the call's latest progress.
        activities = [m for m in step["messages"] if m["role"] == "activity"]
        assert {m["id"]: (m["activityType"], m["content"]) for m in activities} == {
            f"{call}:progress:page": ("page", content) for call, content in latest.items()
        }
        assert len(_of(step, "ACTIVITY_SNAPSHOT")) == 4
    else:
        progress = [e["value"] for e in _of(step, "CUSTOM") if e["name"] == "kiki.tool_progress"]
        assert len(progress) == 4 and {p["toolCallId"]: p for p in progress} == latest
        assert not [m for m in step["messages"] if m["role"] == "activity"]
    assert [e["value"] for e in _of(step, "CUSTOM") if e["name"] == "plan"] == [{"steps": 2}]


def _frames(*events: dict[str, Any]) -> str:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events)


@pytest.mark.parametrize("client", CLIENTS)
def test_what_the_client_refuses_is_seen(node: str, tmp_path: Path, client: str) -> None:
    """The checks of the tests above are not vacuous: each stream here is refused, thrown or warned about."""
    started = {"type": "RUN_STARTED", "threadId": "t", "runId": "r"}
    finished = {"type": "RUN_FINISHED", "threadId": "t", "runId": "r"}
    bodies = {  # what → (the stream, the clients that refuse it)
        "content without its start": (
            _frames(started, {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m", "delta": "x"}, finished),
            {"1", "0"},
        ),
        "a message left open": (
            _frames(started, {"type": "TEXT_MESSAGE_START", "messageId": "m"}, finished),
            {"1", "0"},
        ),
        "a null field": (_frames(started, {"type": "STEP_STARTED", "stepName": None}, finished), {"1", "0"}),
        # 1.0 drops an unknown event type with a warning; a 0.0.x client fails the run.
        "an unknown event type": (_frames(started, {"type": "KIKI_PROGRESS"}, finished), {"1", "0"}),
        # 1.0 strips an unknown field with a warning; 0.0.x passes it on.
        "an unknown field": (_frames(started, {**finished, "kikiExtra": 1}), {"1"}),
    }
    steps = [{**_say("hi"), "body": body} for body, _ in bodies.values()]
    scenario = {"client": client, "url": "http://kiki.invalid", "graph": "g", "threadId": "t", "steps": steps}
    for (what, (_, refusing)), step in zip(bodies.items(), _drive(node, tmp_path, scenario), strict=True):
        refused = step["error"] is not None or bool(step["printed"]) or _types(step)[-1] != "RUN_FINISHED"
        assert refused is (client in refusing), (what, step)
