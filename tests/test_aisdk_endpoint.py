"""``POST /ai-sdk/{graph}`` and ``GET /ai-sdk/{graph}/{chat_id}/stream``: ``useChat`` requests on a real server."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.types import interrupt

from kiki_events.config import Settings
from kiki_events.server import bearer_tokens, create_app
from tests.servers import Gate, gated_graph, live_server, wait_for
from tests.test_agui_endpoint import Echo
from tests.test_format_aisdk import _validate, _verify_order, parse_body

AUTH = {"Authorization": "Bearer token-a"}
BOB = {"Authorization": "Bearer token-b"}


def _app(graphs: dict[str, Any]) -> Any:
    return create_app(Settings(), graphs=graphs, auth=bearer_tokens({"token-a": "alice", "token-b": "bob"}))


def _chat(chat_id: str, *texts: str, **extra: Any) -> dict[str, Any]:
    """A ``useChat`` body: the whole conversation, alternating user and assistant turns."""
    messages = [
        {"id": f"m{i}", "role": "user" if i % 2 == 0 else "assistant", "parts": [{"type": "text", "text": text}]}
        for i, text in enumerate(texts)
    ]
    return {"id": chat_id, "messages": messages, "trigger": "submit-message", **extra}


def _chunks(response: httpx.Response, known: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """The chunks of a UI message stream response, checked like the format's own tests check them
    (``known``: the tool calls the client holds)."""
    assert response.status_code == 200, response.read()
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert response.headers["content-type"].startswith("text/event-stream")
    body = b"".join(response.iter_raw())
    kept = b"".join(block + b"\n\n" for block in body.split(b"\n\n") if block and not block.startswith(b":"))
    out = parse_body(kept)
    _validate(out)
    _verify_order(out, known)
    return out


def _post(
    client: httpx.Client, graph: str, body: dict[str, Any], known: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    with client.stream("POST", f"/ai-sdk/{graph}", json=body, headers=AUTH) as response:
        return _chunks(response, known)


def _text(out: list[dict[str, Any]]) -> str:
    return "".join(c["delta"] for c in out if c["type"] == "text-delta")


def test_a_demo_run_posted_by_use_chat_streams_the_ui_message_stream(research_team: ModuleType) -> None:
    app = _app({"team": research_team.build_graph(token_delay=0.0)})
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        with client.stream(
            "POST", "/ai-sdk/team", json=_chat("chat-1", "Compare Redis streams and pub/sub"), headers=AUTH
        ) as response:
            run_id = response.headers["x-kiki-run-id"]
            out = _chunks(response)
        status = client.get(f"/runs/{run_id}", headers=AUTH).json()

    assert out[0] == {"type": "start", "messageId": run_id} and out[-1] == {"type": "finish"}
    assert _text(out) and [c for c in out if c["type"] == "tool-output-available"]
    assert status["thread_id"] == "chat-1" and status["status"] == "success"


def test_a_second_message_on_the_chat_sees_the_first() -> None:
    app = _app({"echo": Echo().graph()})
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        first = _post(client, "echo", _chat("chat-e", "hello"))
        # The client sends the whole conversation; only its last message is new.
        second = _post(client, "echo", _chat("chat-e", "hello", "hello", "how are you"))
        state = client.get("/threads/chat-e/state", headers=AUTH).json()

    texts = [m["content"] for m in state["values"]["messages"]]
    assert texts == ["hello", "hello", "how are you", "hello | hello | how are you"]
    assert first[-1] == second[-1] == {"type": "finish"} and first[0]["messageId"] != second[0]["messageId"]


def _asking_graph() -> Any:
    """Asks a person with ``interrupt()``, then says what they answered."""

    def ask(state: MessagesState) -> dict[str, Any]:
        answer = interrupt({"question": "Publish?"})
        return {"messages": [AIMessage(content=f"answer: {answer}", name="ask")]}

    builder = StateGraph(MessagesState)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    return builder.compile()


def _approval(approved: bool, **extra: Any) -> dict[str, Any]:
    """The assistant message ``useChat`` sends back once a person answered a tool approval request."""
    part = {
        "type": "dynamic-tool",
        "toolName": "publish",
        "toolCallId": "c1",
        "state": "approval-responded",
        "input": {},
        "approval": {"id": "a1", "approved": approved, **extra},
    }
    return {"id": "m1", "role": "assistant", "parts": [{"type": "text", "text": "Publish?"}, part]}


def test_an_approval_answer_or_a_resume_field_resumes_the_interrupted_chat() -> None:
    app = _app({"ask": _asking_graph()})
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        asked = _post(client, "ask", _chat("chat-r", "draft it"))
        approved = _post(client, "ask", {"id": "chat-r", "messages": [_approval(True, reason="fine")]})
        _post(client, "ask", _chat("chat-s", "draft it"))
        plain = _post(client, "ask", _chat("chat-s", "draft it", resume="yes"))
        twice = {"id": "chat-t", "messages": [_approval(True)]}
        twice["messages"][0]["parts"] *= 2  # two answers (one part twice), without their approval id
        del twice["messages"][0]["parts"][1]["approval"]["id"]
        several = client.post("/ai-sdk/ask", json=twice, headers=AUTH)
        answers = [
            client.get(f"/threads/{chat}/state", headers=AUTH).json()["values"]["messages"][-1]["content"]
            for chat in ("chat-r", "chat-s")
        ]

    (interrupt_,) = [c for c in asked if c["type"] == "data-kiki-interrupt"]
    assert [i["value"] for i in interrupt_["data"]["interrupts"]] == [{"question": "Publish?"}], interrupt_
    assert answers == ["answer: {'approved': True, 'reason': 'fine'}", "answer: yes"]
    assert approved[-1] == plain[-1] == {"type": "finish"}
    assert several.status_code == 422 and several.json()["detail"].startswith("messages.0.parts: 2 tool approvals")


def test_reconnect_is_204_when_nothing_runs_and_the_run_from_its_start_while_it_does(
    research_team: ModuleType,
) -> None:
    gate = Gate()
    app = _app({"gated": gated_graph(research_team, gate, tokens=5)})
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        never = client.get("/ai-sdk/gated/chat-g/stream", headers=AUTH)
        with client.stream("POST", "/ai-sdk/gated", json=_chat("chat-g", "Compare Redis streams"), headers=AUTH) as r:
            run_id = r.headers["x-kiki-run-id"]
            wait_for(gate.reached.is_set, what="the run parked at the gate")
            other = client.get("/ai-sdk/gated/chat-g/stream", headers=BOB)
            with client.stream("GET", "/ai-sdk/gated/chat-g/stream", headers=AUTH) as joined:
                gate.open()
                rejoined = _chunks(joined)
            posted = _chunks(r)
        after = client.get("/ai-sdk/gated/chat-g/stream", headers=AUTH)

    assert never.status_code == 204 and never.content == b""
    assert other.status_code == 404, other.text
    assert rejoined == posted and rejoined[0] == {"type": "start", "messageId": run_id}
    assert rejoined[-1] == {"type": "finish"}
    assert after.status_code == 204 and after.content == b""


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{", "the body is not valid JSON"),
        (b"[]", "the body must be a JSON object"),
        (json.dumps({"messages": [{"role": "user", "parts": []}]}).encode(), "id: Field required"),
        (json.dumps(_chat("bad id!", "hi")).encode(), "id: String should match pattern"),
        (json.dumps({"id": "c", "messages": []}).encode(), "messages: List should have at least 1 item"),
        (json.dumps({"id": "c", "messages": [{"role": "robot", "parts": []}]}).encode(), "messages.0.role"),
        (json.dumps(_chat("c", "hi", "there")).encode(), "messages.1.role: the last message is the assistant's"),
        (
            json.dumps({"id": "c", "messages": [{"role": "user", "parts": [{"type": "file"}]}]}).encode(),
            "messages.0.parts: the last user message has no text part",
        ),
    ],
)
def test_a_bad_body_is_a_422_naming_the_field(body: bytes, detail: str) -> None:
    app = _app({"echo": Echo().graph()})
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        answer = client.post("/ai-sdk/echo", content=body, headers={**AUTH, "content-type": "application/json"})
        unknown = client.post("/ai-sdk/nope", content=body, headers=AUTH)

    assert answer.status_code == 422 and answer.json()["detail"].startswith(detail), answer.text
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]


def test_the_endpoints_are_in_the_openapi_schema() -> None:
    app = _app({"echo": Echo().graph()})
    paths = app.openapi()["paths"]
    post = paths["/ai-sdk/{graph}"]["post"]
    reconnect = paths["/ai-sdk/{graph}/{chat_id}/stream"]["get"]
    assert "text/event-stream" in post["responses"]["200"]["content"]
    assert {"id", "messages"} <= set(post["requestBody"]["content"]["application/json"]["schema"]["required"])
    assert {"200", "204", "404"} <= set(reconnect["responses"])


def _approving_graph() -> Any:
    """Two branches in parallel, each asking for approval of its own tool call (``call-a``, ``call-b``)."""

    def asker(title: str) -> Any:
        def ask(state: MessagesState) -> dict[str, Any]:
            value = {"tool_call_id": f"call-{title}", "tool": "publish", "args": {"title": title}}
            return {"messages": [AIMessage(content=f"{title}: {interrupt(value)}", name=title)]}

        return ask

    builder = StateGraph(MessagesState)
    for title in ("a", "b"):
        builder.add_node(title, asker(title))
        builder.add_edge(START, title)
    return builder.compile()


def test_parallel_tool_approvals_are_answered_together_by_approval_id() -> None:
    app = _app({"pub": _approving_graph()})
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        asked = _post(client, "pub", _chat("chat-p", "publish both"))
        requests = {c["toolCallId"]: c["approvalId"] for c in asked if c["type"] == "tool-approval-request"}
        pending = client.get("/threads/chat-p/state", headers=AUTH).json()["interrupts"]
        # What addToolApprovalResponse leaves in the assistant message, each answer with its approval id.
        parts = [
            {
                "type": "dynamic-tool",
                "toolName": "publish",
                "toolCallId": call_id,
                "state": "approval-responded",
                "input": {"title": call_id[-1]},
                "approval": {"id": approval_id, "approved": call_id == "call-a"},
            }
            for call_id, approval_id in requests.items()
        ]
        answer = {"id": "chat-p", "messages": [*_chat("chat-p", "publish both")["messages"]]}
        answer["messages"].append({"id": "reply-1", "role": "assistant", "parts": parts})
        answered = _post(client, "pub", answer, known=frozenset(requests))
        state = client.get("/threads/chat-p/state", headers=AUTH).json()

    assert set(requests) == {"call-a", "call-b"} and set(requests.values()) == {i["id"] for i in pending}
    announced = {c["toolCallId"]: c["input"] for c in asked if c["type"] == "tool-input-available"}
    assert announced == {"call-a": {"title": "a"}, "call-b": {"title": "b"}}  # from the approvals' values
    assert answered[0] == {"type": "start", "messageId": "reply-1"}  # the answer continues the client's message
    replies = sorted(str(m["content"]) for m in state["values"]["messages"][1:])
    assert replies == ["a: {'approved': True}", "b: {'approved': False}"]
    assert state["interrupts"] == [] and answered[-1] == {"type": "finish"}
