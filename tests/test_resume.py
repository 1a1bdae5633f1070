"""Human in the loop over HTTP: a run stops at ``interrupt()``; ``resume`` answers it and the run continues."""

from __future__ import annotations

import operator
from types import ModuleType
from typing import Annotated, Any

import httpx
import pytest
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send, interrupt
from typing_extensions import TypedDict

from kiki_events.config import Settings
from kiki_events.server import bearer_tokens, create_app
from tests.servers import live_server, read_stream


class Draft(TypedDict, total=False):
    topic: str
    answers: Annotated[list[str], operator.add]


def _approval_graph() -> Any:
    """``write`` drafts, ``approve`` asks a person, ``publish`` records what they said."""

    def write(state: Draft) -> dict[str, Any]:
        return {"answers": [f"draft on {state['topic']}"]}

    def approve(state: Draft) -> dict[str, Any]:
        answer = interrupt({"question": f"Publish the draft on {state['topic']}?", "choices": ["yes", "no"]})
        return {"answers": [f"approved: {answer}"]}

    builder = StateGraph(Draft)
    builder.add_node("write", write)
    builder.add_node("approve", approve)
    builder.add_edge(START, "write")
    builder.add_edge("write", "approve")
    builder.add_edge("approve", END)
    return builder.compile()


def _two_reviewers_graph() -> Any:
    """Two reviewers in parallel, each interrupting with its own question."""

    def fan_out(state: Draft) -> list[Send]:
        return [Send("review", {"topic": name}) for name in ("legal", "style")]

    def review(state: Draft) -> dict[str, Any]:
        return {"answers": [f"{state['topic']}: {interrupt({'reviewer': state['topic']})}"]}

    builder = StateGraph(Draft)
    builder.add_node("review", review)
    builder.add_conditional_edges(START, fan_out, ["review"])
    builder.add_edge("review", END)
    return builder.compile()


def _stream(client: httpx.Client, body: dict[str, Any], token: str = "token-a") -> list[Any]:
    return read_stream(client, "POST", "/runs/stream", json=body, headers={"Authorization": f"Bearer {token}"})


def _app() -> Any:
    graphs = {"approval": _approval_graph(), "reviewers": _two_reviewers_graph()}
    return create_app(Settings(), graphs=graphs, auth=bearer_tokens({"token-a": "alice", "token-b": "bob"}))


def test_a_person_answers_an_interrupt_and_the_run_continues_where_it_stopped() -> None:
    app = _app()
    auth = {"Authorization": "Bearer token-a"}
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        first = _stream(client, {"graph": "approval", "input": {"topic": "redis"}, "thread_id": "pub-1"})
        pending = client.get("/threads/pub-1/state", headers=auth).json()
        refused = client.post(
            "/runs",
            json={"graph": "approval", "resume": "yes", "thread_id": "pub-1"},
            headers={"Authorization": "Bearer token-b"},
        )
        second = _stream(client, {"graph": "approval", "resume": "yes, publish it", "thread_id": "pub-1"})
        after = client.get("/threads/pub-1/state", headers=auth).json()

    assert [f.event for f in first][-2:] == ["interrupt", "done"] and first[-1].json["status"] == "interrupted"
    (asked,) = first[-2].json["interrupts"]
    assert asked["value"] == {"question": "Publish the draft on redis?", "choices": ["yes", "no"]}
    assert pending["next"] == ["approve"] and [i["id"] for i in pending["interrupts"]] == [asked["id"]]
    assert pending["values"]["answers"] == ["draft on redis"]
    assert (refused.status_code, refused.json()["detail"]) == (404, "thread 'pub-1' not found")  # not bob's to answer
    assert second[-1].event == "done" and second[-1].json["status"] == "success", second[-1].json
    # The run continued from the interrupt: ``write`` did not run again.
    assert after["values"]["answers"] == ["draft on redis", "approved: yes, publish it"]
    assert after["next"] == [] and after["interrupts"] == []


def test_several_pending_interrupts_are_answered_by_id() -> None:
    app = _app()
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        first = _stream(client, {"graph": "reviewers", "input": {"answers": []}, "thread_id": "rev-1"})
        asked = {i["value"]["reviewer"]: i["id"] for i in first[-2].json["interrupts"]}
        answers = {asked["legal"]: "fine by legal", asked["style"]: "needs commas"}
        second = _stream(client, {"graph": "reviewers", "resume": answers, "thread_id": "rev-1"})
        state = client.get("/threads/rev-1/state", headers={"Authorization": "Bearer token-a"}).json()

    assert first[-1].json["status"] == "interrupted" and set(asked) == {"legal", "style"}
    assert second[-1].json["status"] == "success", second[-1].json
    assert sorted(state["values"]["answers"]) == ["legal: fine by legal", "style: needs commas"]


def _demo_app(research_team: ModuleType) -> Any:
    return create_app(Settings(), graphs={"team": research_team.build_graph(token_delay=0.0)})


@pytest.mark.parametrize(
    ("answer", "closing"),
    [
        ({"approved": True}, "Done. Published the report on Redis streams"),
        ({"approved": False, "reason": "not yet"}, "I did not publish the report. Not published: not yet."),
        ("sure", "I did not publish the report. Error: ValueError: answer the approval with"),
    ],
)
def test_the_demo_writer_asks_before_publishing_and_does_what_it_is_told(
    research_team: ModuleType, answer: Any, closing: str
) -> None:
    task = {"messages": [{"role": "user", "content": "Redis streams, with approval"}]}
    with live_server(_demo_app(research_team)) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        first = read_stream(client, "POST", "/runs/stream", json={"graph": "team", "input": task, "thread_id": "d-1"})
        second = read_stream(
            client, "POST", "/runs/stream", json={"graph": "team", "resume": answer, "thread_id": "d-1"}
        )
        state = client.get("/threads/d-1/state").json()

    assert (first[-2].event, first[-1].json["status"]) == ("interrupt", "interrupted")
    (asked,) = first[-2].json["interrupts"]
    calls = [f.json for f in first if f.event == "tool_call" and f.json["phase"] == "end"]
    assert calls[-1]["name"] == "publish"
    assert asked["value"] == {
        "question": "Publish the report on Redis streams, with approval?",
        "tool_call_id": calls[-1]["tool_call_id"],
        "tool": "publish",
        "args": {"title": "Redis streams, with approval"},
    }
    # Paused, not failed: the publish call has no result before the answer.
    assert [f.json["name"] for f in first if f.event == "tool_result"] == ["web_search", "fetch_page"]
    assert second[-1].json["status"] == "success", second[-1].json
    (result,) = [f.json for f in second if f.event == "tool_result"]
    assert result["tool_call_id"] == asked["value"]["tool_call_id"]
    assert state["values"]["messages"][-1]["content"].startswith(closing)
    assert state["interrupts"] == []
