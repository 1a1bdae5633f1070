"""``POST /ag-ui/{graph}``: an AG-UI client's ``RunAgentInput`` in, AG-UI events out, on a real server."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import httpx
import pytest
from ag_ui import core as agui
from fastapi import HTTPException
from langchain_core.messages import AIMessage
from langgraph.graph import START, MessagesState, StateGraph
from pydantic import TypeAdapter

from kiki_events.config import Settings
from kiki_events.server import bearer_tokens, create_app
from kiki_events.server.routes import agui as agui_route
from tests.servers import iter_frames, live_server
from tests.test_resume import _approval_graph, _two_reviewers_graph

EVENT = TypeAdapter(agui.Event)
ONLY_V1 = {
    "REASONING_START",
    "REASONING_MESSAGE_START",
    "REASONING_MESSAGE_CONTENT",
    "REASONING_MESSAGE_END",
    "REASONING_END",
}
OPENERS = {"TEXT_MESSAGE_START": "TEXT_MESSAGE_END", "TOOL_CALL_START": "TOOL_CALL_END"}
AUTH = {"Authorization": "Bearer token-a"}


def _input(thread: str, run: str, *texts: str, version: str | None = "1.0", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "threadId": thread,
        "runId": run,
        "state": {},
        "messages": [{"id": f"u{i}", "role": "user", "content": text} for i, text in enumerate(texts)],
        "tools": [],
        "context": [],
        "forwardedProps": {},
        **extra,
    }
    if version is not None:
        body["protocolVersion"] = version
    agui.RunAgentInput.model_validate(body)  # what we send is what an AG-UI client sends
    return body


def _run(
    client: httpx.Client, graph: str, body: dict[str, Any], headers: dict[str, str] = AUTH
) -> list[dict[str, Any]]:
    """POST the input and read the stream: every frame is ``data: <json>``, validated by the protocol's models."""
    with client.stream("POST", f"/ag-ui/{graph}", json=body, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = [f for f in iter_frames(response, events_only=False) if f.data is not None]
    events = []
    for frame in frames:
        assert frame.event is None and frame.id is None, frame.raw
        event = json.loads(frame.data or "")
        EVENT.validate_python(event)
        events.append(event)
    _check_order(events)
    return events


def _check_order(events: list[dict[str, Any]]) -> None:
    assert events[0]["type"] == "RUN_STARTED" and events[-1]["type"] in ("RUN_FINISHED", "RUN_ERROR")
    assert [e["type"] for e in events].count(events[-1]["type"]) == 1
    open_: set[tuple[str, str]] = set()
    for event in events:
        kind = event["type"]
        key = event.get("messageId") or event.get("toolCallId") or event.get("stepName") or ""
        if kind in OPENERS or kind == "STEP_STARTED":
            open_.add((kind, key))
        for opener, closer in [*OPENERS.items(), ("STEP_STARTED", "STEP_FINISHED")]:
            if kind == closer:
                open_.remove((opener, key))
    assert not open_, open_


def _app(graphs: dict[str, Any]) -> Any:
    return create_app(Settings(), graphs=graphs, auth=bearer_tokens({"token-a": "alice", "token-b": "bob"}))


class Echo:
    """Answers with every message it received, so a second turn shows what the thread remembers."""

    def node(self, state: MessagesState) -> dict[str, Any]:
        texts = [str(m.content) for m in state["messages"]]
        return {"messages": [AIMessage(content=" | ".join(texts), name="echo")]}

    def graph(self) -> Any:
        builder = StateGraph(MessagesState)
        builder.add_node("echo", self.node)
        builder.add_edge(START, "echo")
        return builder.compile()


def _of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def test_a_demo_run_streams_as_ag_ui_events_with_the_clients_ids(research_team: ModuleType) -> None:
    app = _app({"team": research_team.build_graph(token_delay=0.0)})
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        events = _run(client, "team", _input("agui-1", "client-run-1", "Compare Redis streams and pub/sub"))

    started, finished = events[0], events[-1]
    assert (started["threadId"], started["runId"], started["protocolVersion"]) == ("agui-1", "client-run-1", "1.0")
    assert finished["type"] == "RUN_FINISHED" and finished["outcome"] == {"type": "success"}, finished
    assert (finished["threadId"], finished["runId"]) == ("agui-1", "client-run-1")
    assert _of(events, "TEXT_MESSAGE_CONTENT") and _of(events, "TOOL_CALL_RESULT") and _of(events, "STEP_STARTED")
    (done,) = [e for e in events if e["type"] == "CUSTOM" and e["name"] == "kiki.done"]
    assert done["value"]["status"] == "success" and done["value"]["run_id"] != "client-run-1"


def test_a_second_message_on_the_thread_sees_the_first_and_0_0_x_gets_no_1_0_events() -> None:
    app = _app({"echo": Echo().graph()})
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        first = _run(client, "echo", _input("chat-a", "r1", "hello", version=None))
        # The client sends the whole conversation; only its last user message is new.
        second = _run(client, "echo", _input("chat-a", "r2", "hello", "how are you", version=None))
        state = client.get("/threads/chat-a/state", headers=AUTH).json()

    texts = [m["content"] for m in state["values"]["messages"]]
    assert texts == ["hello", "hello", "how are you", "hello | hello | how are you"]
    for events in (first, second):
        assert not {e["type"] for e in events} & ONLY_V1
        assert all("protocolVersion" not in e and "outcome" not in e for e in events)
        assert events[-1]["type"] == "RUN_FINISHED"
    assert second[0]["runId"] == "r2"


def test_resume_answers_an_interrupt_of_a_run_started_elsewhere_on_the_thread() -> None:
    app = _app({"approval": _approval_graph()})
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        # The approval graph reads ``topic``: start it through /runs/stream, then answer over AG-UI.
        with client.stream(
            "POST",
            "/runs/stream",
            json={"graph": "approval", "input": {"topic": "redis"}, "thread_id": "pub-a"},
            headers=AUTH,
        ) as response:
            assert response.status_code == 200
            assert list(iter_frames(response))[-1].json["status"] == "interrupted"
        asked = client.get("/threads/pub-a/state", headers=AUTH).json()["interrupts"]
        (interrupt_id,) = [i["id"] for i in asked]
        resume = [{"interruptId": interrupt_id, "status": "resolved", "payload": "yes"}]
        second = _run(client, "approval", _input("pub-a", "r2", resume=resume))
        after = client.get("/threads/pub-a/state", headers=AUTH).json()

    assert second[-1]["outcome"] == {"type": "success"}, second[-1]
    assert after["values"]["answers"] == ["draft on redis", "approved: yes"] and after["interrupts"] == []


def test_the_first_post_finishes_with_an_interrupt_outcome_the_second_answers() -> None:
    def ask(state: MessagesState) -> dict[str, Any]:
        from langgraph.types import interrupt

        answer = interrupt({"question": f"publish {state['messages'][-1].content}?"})
        return {"messages": [AIMessage(content=f"approved: {answer}")]}

    builder = StateGraph(MessagesState)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    app = _app({"ask": builder.compile()})
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        first = _run(client, "ask", _input("ask-1", "r1", "the draft"))
        outcome = first[-1]["outcome"]
        (asked,) = outcome["interrupts"]
        resume = [{"interruptId": asked["id"], "status": "resolved", "payload": "yes"}]
        second = _run(client, "ask", _input("ask-1", "r2", "the draft", resume=resume))
        state = client.get("/threads/ask-1/state", headers=AUTH).json()
        cancelled = client.post(
            "/ag-ui/ask", json=_input("ask-1", "r3", resume=[{**resume[0], "status": "cancelled"}]), headers=AUTH
        )

    # The value's question is the message; without choices any answer goes, so no schema is sent.
    assert asked == {"id": asked["id"], "reason": "input_required", "message": "publish the draft?"}
    assert outcome["type"] == "interrupt"
    assert second[-1]["outcome"] == {"type": "success"}
    assert [m["content"] for m in state["values"]["messages"]] == ["the draft", "approved: yes"]
    assert cancelled.status_code == 422 and cancelled.json()["detail"].startswith("resume.0.status:")


def test_another_principal_bad_bodies_and_unknown_graphs_are_refused() -> None:
    app = _app({"echo": Echo().graph()})
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        _run(client, "echo", _input("mine", "r1", "hello"))
        bob = client.post("/ag-ui/echo", json=_input("mine", "r2", "hi"), headers={"Authorization": "Bearer token-b"})
        nobody = client.post("/ag-ui/echo", json=_input("mine", "r3", "hi"))
        unknown = client.post("/ag-ui/nope", json=_input("t", "r4", "hi"), headers=AUTH)
        no_run_id = client.post("/ag-ui/echo", json={"threadId": "t", "messages": []}, headers=AUTH)
        bad_role = client.post(
            "/ag-ui/echo", json={"threadId": "t", "runId": "r", "messages": [{"id": "1", "role": "boss"}]}, headers=AUTH
        )
        no_user = client.post("/ag-ui/echo", json={"threadId": "t", "runId": "r", "messages": []}, headers=AUTH)
        not_json = client.post("/ag-ui/echo", content=b"{", headers=AUTH)
        big = client.post("/ag-ui/echo", content=b"x" * 2_000_000, headers=AUTH)

    assert (bob.status_code, bob.json()["detail"]) == (404, "thread 'mine' not found")
    assert nobody.status_code == 401
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
    assert (no_run_id.status_code, no_run_id.json()["detail"]) == (422, "runId: Field required")
    assert bad_role.status_code == 422 and bad_role.json()["detail"].startswith("messages.0"), bad_role.json()
    assert no_user.status_code == 422 and no_user.json()["detail"].startswith("messages:"), no_user.json()
    assert (not_json.status_code, not_json.json()["detail"]) == (422, "the body is not valid JSON")
    assert big.status_code == 413


def test_several_interrupts_are_answered_by_id_in_one_post() -> None:
    app = _app({"reviewers": _two_reviewers_graph()})
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        with client.stream(
            "POST",
            "/runs/stream",
            json={"graph": "reviewers", "input": {"answers": []}, "thread_id": "rev-a"},
            headers=AUTH,
        ) as response:
            interrupt = [f for f in iter_frames(response) if f.event == "interrupt"][-1].json
        asked = {i["value"]["reviewer"]: i["id"] for i in interrupt["interrupts"]}
        resume = [
            {"interruptId": asked["legal"], "status": "resolved", "payload": "fine by legal"},
            {"interruptId": asked["style"], "status": "resolved", "payload": "needs commas"},
        ]
        events = _run(client, "reviewers", _input("rev-a", "r2", resume=resume))
        state = client.get("/threads/rev-a/state", headers=AUTH).json()

    assert events[-1]["outcome"] == {"type": "success"}, events[-1]
    assert sorted(state["values"]["answers"]) == ["legal: fine by legal", "style: needs commas"]


def test_without_the_ag_ui_package_the_servers_own_model_reads_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agui_route, "_OFFICIAL", None)
    # Fields the server does not read, and message shapes it does not need, are accepted and ignored.
    body = {
        "threadId": "t-1",
        "runId": "r",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }
    parsed = agui_route.parse_agent_input(json.dumps({**body, "tools": [{"any": 1}], "newField": True}).encode())
    request = agui_route.run_request("echo", parsed)
    assert (request.message, request.thread_id, request.metadata) == ("hi", "t-1", {"kiki_agui_run_id": "r"})
    with pytest.raises(HTTPException) as bad_thread:
        agui_route.parse_agent_input(json.dumps({**body, "threadId": "a b"}).encode())
    assert bad_thread.value.status_code == 422 and str(bad_thread.value.detail).startswith("threadId:")
    with pytest.raises(HTTPException) as bad_resume:
        agui_route.parse_agent_input(json.dumps({**body, "resume": [{"interruptId": "i", "status": "maybe"}]}).encode())
    assert str(bad_resume.value.detail).startswith("resume.0.status:")
