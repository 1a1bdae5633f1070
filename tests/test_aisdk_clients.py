"""``useChat``'s own machinery (``ai`` 6 and ``ai`` 7 under Node) against a real kiki_events server over HTTP.

``DefaultChatTransport`` parses every chunk against the SDK's chunk schema and
``readUIMessageStream`` (or the ``AbstractChat`` ``useChat`` runs) applies it to the
message; each scenario checks that the client accepted every chunk the server sent,
reported no error it should not, and ended on the right terminal chunk and state.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, BaseMessage
from langgraph.graph import START, MessagesState, StateGraph

from kiki_events.config import Settings
from kiki_events.server import bearer_tokens, create_app
from tests.aisdk_node import AIClient, Client, harness
from tests.servers import Gate, LiveServer, gated_graph, live_server, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

AUTH = {"Authorization": "Bearer token-a"}


@pytest.fixture(scope="session")
def clients() -> dict[int, Client]:
    return harness()


@pytest.fixture(params=[6, 7], ids=["ai6", "ai7"])
def client(request: pytest.FixtureRequest, clients: dict[int, Client]) -> Client:
    chosen: Client = clients[request.param]
    return chosen


def _remembering(scripted: ModuleType) -> Any:
    """One LLM node that answers with every message of the thread, streamed token by token."""
    model = scripted.ScriptedChatModel(
        script=lambda messages: AIMessage(content=" | ".join(str(m.content) for m in messages)), token_delay=0.0
    )

    async def answer(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("answer", answer)
    builder.add_edge(START, "answer")
    return builder.compile(name="remembering")


class Setup:
    """A live server with the demo graphs and the AI SDK client of one version pointed at it."""

    def __init__(self, server: LiveServer, node: AIClient, gate: Gate) -> None:
        self.server = server
        self.node = node
        self.gate = gate
        """Where the ``gated`` graph parks its runs until the test opens it."""
        self.http = httpx.Client(base_url=server.url, timeout=30, headers=AUTH)


@pytest.fixture
def setup(client: Client, research_team: ModuleType, scripted: ModuleType) -> Iterator[Setup]:
    gate = Gate()
    graphs = {
        "team": research_team.build_graph(token_delay=0.0),
        "gated": gated_graph(research_team, gate, tokens=20),
        "remembering": _remembering(scripted),
    }
    app = create_app(Settings(), graphs=graphs, auth=bearer_tokens({"token-a": "alice"}))
    with live_server(app) as server, AIClient(client, f"{server.url}/ai-sdk", "token-a") as node:
        made = Setup(server, node, gate)
        try:
            yield made
        finally:
            made.http.close()


def _user(text: str, index: int = 0) -> dict[str, Any]:
    return {"id": f"u{index}", "role": "user", "parts": [{"type": "text", "text": text}]}


def _send(setup: Setup, tag: str, graph: str, chat_id: str, text: str) -> dict[str, Any]:
    setup.node.send(tag, "send", graph=graph, chatId=chat_id, messages=[_user(text)])
    return setup.node.result(tag, timeout=120)


def _accepted_all(result: dict[str, Any], terminal: str) -> None:
    """The client parsed and applied every chunk the server sent, the stream ending as it should."""
    assert result["sent"] == len(result["accepted"]) > 2 and result["doneFrames"] >= 1, result
    assert result["accepted"][0] == "start" and result["accepted"][-1] == terminal, result["accepted"]


def _tools(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["toolCallId"]: p for p in message["parts"] if p["type"] == "dynamic-tool"}


def _text(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in message["parts"] if p["type"] == "text")


def _run(setup: Setup, run_id: str) -> dict[str, Any]:
    status: dict[str, Any] = setup.http.get(f"/runs/{run_id}").json()
    return status


def test_each_client_runs_on_the_node_it_needs(setup: Setup, client: Client) -> None:
    ai, node = setup.node.versions
    assert int(ai.split(".")[0]) == client.major and int(node.split(".")[0]) >= (22 if client.major >= 7 else 18)


def test_a_multi_agent_run(setup: Setup) -> None:
    result = _send(setup, "demo", "team", "chat-demo", "Compare Redis streams and pub/sub")

    _accepted_all(result, "finish")
    message = result["message"]
    assert result["errors"] == [] and message["role"] == "assistant"
    assert _run(setup, message["id"])["status"] == "success"
    assert "Redis streams" in _text(message)
    assert all(p["state"] == "done" for p in message["parts"] if p["type"] == "text")
    tools = _tools(message)
    assert {p["toolName"] for p in tools.values()} == {"web_search", "fetch_page"}
    assert all(p["state"] == "output-available" and p["input"] and p["output"] for p in tools.values()), tools
    agents = {p["data"]["agent"] for p in message["parts"] if p["type"] == "data-kiki-agent"}
    assert {"supervisor", "research", "writer"} <= agents


def test_a_failing_tool(setup: Setup) -> None:
    result = _send(setup, "fail", "team", "chat-fail", "Please fail to fetch the Redis docs")

    _accepted_all(result, "finish")
    assert result["errors"] == []
    states = {p["toolName"]: (p["state"], p.get("errorText", "")) for p in _tools(result["message"]).values()}
    assert states["fetch_page"][0] == "output-error" and states["fetch_page"][1].startswith("PermissionError: ")
    assert states["web_search"] == ("output-available", "")


def test_a_graph_that_raises(setup: Setup) -> None:
    result = _send(setup, "crash", "team", "chat-crash", "Compare queues and crash")

    _accepted_all(result, "finish")
    [error] = result["errors"]
    assert error.startswith("RuntimeError: ") and "hunter2" not in json.dumps(result)
    assert result["accepted"][-3:] == ["error", "finish-step", "finish"]
    assert _run(setup, result["message"]["id"])["status"] == "error"


def test_a_run_cancelled_while_the_client_reads(setup: Setup) -> None:
    setup.node.send("cancel", "send", chatId="chat-cancel", messages=[_user("Compare Redis streams")], graph="gated")
    run_id = setup.node.wait_chunk("cancel", "start")["messageId"]
    setup.node.wait_chunk("cancel", "text-delta")
    wait_for(setup.gate.reached.is_set, what="the run parked at the gate")
    assert setup.http.post(f"/runs/{run_id}/cancel").status_code in (200, 202)  # ended, or stopping
    result = setup.node.result("cancel")

    _accepted_all(result, "abort")
    assert result["errors"] == [] and "finish" not in result["accepted"]
    assert all(p["state"] == "done" for p in result["message"]["parts"] if p["type"] == "text")
    assert _run(setup, run_id)["status"] == "cancelled"


def test_a_tool_approval_answered_through_the_client(setup: Setup) -> None:
    task = "Compare Redis streams and pub/sub. Publish it with approval."
    setup.node.send("ask", "chat", graph="team", chatId="chat-approve", text=task)
    asked = setup.node.result("ask", timeout=120)

    assert asked["status"] == "ready" and asked["errors"] == [] and asked["accepted"][-1] == "finish"
    assert asked["sent"] == len(asked["accepted"])
    [publish] = [p for p in _tools(asked["messages"][-1]).values() if p["toolName"] == "publish"]
    assert publish["state"] == "approval-requested" and publish["input"] == {"title": "Redis streams and pub/sub"}
    state = setup.http.get("/threads/chat-approve/state").json()
    assert [i["id"] for i in state["interrupts"]] == [publish["approval"]["id"]], state

    setup.node.send("answer", "approve", graph="team", chatId="chat-approve", approved=True)
    answered = setup.node.result("answer", timeout=120)

    assert answered["status"] == "ready" and answered["errors"] == [], answered
    assert answered["sent"] == len(answered["accepted"]) and answered["accepted"][-1] == "finish"
    [user, reply] = answered["messages"]
    assert user["role"] == "user" and reply["role"] == "assistant"
    [published] = [p for p in _tools(reply).values() if p["toolName"] == "publish"]  # updated, not added again
    assert published["state"] == "output-available" and published["approval"]["approved"] is True
    assert published["output"].startswith("Published the report on")
    assert _text(reply).endswith(published["output"])
    final = setup.http.get("/threads/chat-approve/state").json()
    assert final["values"]["messages"][-1]["content"].startswith("Done. Published the report on")


def test_a_second_message_sees_the_first(setup: Setup) -> None:
    setup.node.send("first", "chat", graph="remembering", chatId="chat-memory", text="hello")
    first = setup.node.result("first")
    setup.node.send("second", "chat", graph="remembering", chatId="chat-memory", text="how are you")
    second = setup.node.result("second")

    assert first["errors"] == second["errors"] == [] and second["status"] == "ready"
    assert second["sent"] == len(second["accepted"]) and second["accepted"][-1] == "finish"
    texts = [_text(m) for m in second["messages"]]
    assert texts == ["hello", "hello", "how are you", "hello | hello | how are you"]


def test_a_stream_resumed_while_the_run_is_live(setup: Setup) -> None:
    setup.node.send("none", "reconnect", graph="gated", chatId="chat-live")
    nothing = setup.node.result("none")
    assert (nothing["reconnected"], nothing["sent"], nothing["errors"]) == (False, 0, [])

    setup.node.send("posted", "send", graph="gated", chatId="chat-live", messages=[_user("Compare Redis streams")])
    setup.node.wait_chunk("posted", "start")
    wait_for(setup.gate.reached.is_set, what="the run parked at the gate")
    setup.node.send("joined", "reconnect", graph="gated", chatId="chat-live")
    setup.node.wait_chunk("joined", "start")
    setup.gate.open()
    posted, joined = setup.node.result("posted"), setup.node.result("joined")
    setup.node.send("after", "reconnect", graph="gated", chatId="chat-live")
    after = setup.node.result("after")

    _accepted_all(posted, "finish")
    _accepted_all(joined, "finish")
    assert joined["reconnected"] is True and joined["errors"] == posted["errors"] == []
    assert joined["accepted"] == posted["accepted"] and joined["message"] == posted["message"]
    assert after["reconnected"] is False and after["message"] is None
