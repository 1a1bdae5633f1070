"""Conversations that remember: ``runs.checkpointer`` and ``GET /threads/{thread_id}/state``.

Every backend is real: LangGraph's InMemorySaver, a SQLite file, and the local
PostgreSQL (a database of the test's own, created and dropped).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from langchain_core.messages import AIMessage, BaseMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.types import interrupt

from kiki_events.config import Settings
from kiki_events.errors import CheckpointerError, ConfigError, MissingDependencyError, RunNotFoundError
from kiki_events.runtime import KikiRuntime
from kiki_events.server import bearer_tokens, create_app
from tests.servers import live_server, read_stream


class Echo:
    """A one-node graph that records the messages each call received and answers with their count."""

    def __init__(self) -> None:
        self.received: list[list[str]] = []

    def node(self, state: MessagesState) -> dict[str, Any]:
        texts = [_text(m) for m in state["messages"]]
        self.received.append(texts)
        return {"messages": [AIMessage(content=f"heard {len(texts)}: {' | '.join(texts)}", name="echo")]}

    def graph(self, checkpointer: Any = None) -> Any:
        builder = StateGraph(MessagesState)
        builder.add_node("echo", self.node)
        builder.add_edge(START, "echo")
        return builder.compile(checkpointer=checkpointer)


def _text(message: BaseMessage) -> str:
    return message.text if isinstance(message.content, str | list) else str(message.content)


def _settings(**checkpointer: Any) -> Settings:
    return Settings.from_mapping({"runs": {"checkpointer": checkpointer}} if checkpointer else {})


def _say(client: httpx.Client, graph: str, thread_id: str, message: str, status: str = "success", **kw: Any) -> None:
    frames = read_stream(
        client, "POST", "/runs/stream", json={"graph": graph, "message": message, "thread_id": thread_id}, **kw
    )
    done = frames[-1]
    assert done.event == "done" and done.json["status"] == status, done.json


def _messages(state: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    return [(m["type"], m.get("name"), m["content"]) for m in state["values"]["messages"]]


# -- memory (the default) ---------------------------------------------------------------------------------


def test_memory_the_second_message_on_a_thread_sees_the_first() -> None:
    echo = Echo()
    graph = echo.graph()
    app = create_app(_settings(), graphs={"echo": graph})
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        _say(client, "echo", "chat-1", "hello")
        _say(client, "echo", "chat-1", "how are you")
        _say(client, "echo", "chat-2", "another thread")
        state = client.get("/threads/chat-1/state")
        other = client.get("/threads/chat-2/state").json()
        unknown = client.get("/threads/nobody/state")

    assert echo.received == [["hello"], ["hello", "heard 1: hello", "how are you"], ["another thread"]]
    assert state.status_code == 200, state.text
    body = state.json()
    assert (body["thread_id"], body["graph"], body["next"], body["interrupts"]) == ("chat-1", "echo", [], [])
    assert body["checkpoint_id"] and body["created_at"]
    assert _messages(body) == [
        ("human", None, "hello"),
        ("ai", "echo", "heard 1: hello"),
        ("human", None, "how are you"),
        ("ai", "echo", "heard 3: hello | heard 1: hello | how are you"),
    ]
    assert _messages(other) == [("human", None, "another thread"), ("ai", "echo", "heard 1: another thread")]
    assert unknown.status_code == 404
    assert unknown.json()["detail"] == "thread 'nobody' not found"
    assert graph.checkpointer is None  # the graph given is left as it is; a copy holds the checkpointer


def test_a_graph_with_its_own_checkpointer_keeps_it() -> None:
    own = InMemorySaver()
    echo = Echo()
    graph = echo.graph(checkpointer=own)
    app = create_app(_settings(), graphs={"echo": graph})
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        runtime: KikiRuntime = app.state.kiki_runtime
        served = runtime.graphs.get("echo")
        lent = runtime.graphs.checkpointer
        _say(client, "echo", "own-1", "first")
        _say(client, "echo", "own-1", "second")

    assert served is graph and served.checkpointer is own
    assert isinstance(lent, InMemorySaver) and lent is not own
    assert echo.received[-1] == ["first", "heard 1: first", "second"]
    assert [c.config["configurable"]["thread_id"] for c in own.list(None)][:1] == ["own-1"]
    assert list(lent.list(None)) == []


def test_pending_interrupts_are_in_the_state() -> None:
    def ask(state: MessagesState) -> dict[str, Any]:
        answer = interrupt({"question": "publish the report?"})
        return {"messages": [AIMessage(content=f"answer: {answer}")]}

    builder = StateGraph(MessagesState)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    app = create_app(_settings(), graphs={"ask": builder.compile()})
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        _say(client, "ask", "review-1", "write it", status="interrupted")
        body = client.get("/threads/review-1/state").json()

    assert body["next"] == ["ask"]
    assert [i["value"] for i in body["interrupts"]] == [{"question": "publish the report?"}]
    assert body["interrupts"][0]["id"]
    assert _messages(body) == [("human", None, "write it")]


# -- ownership ------------------------------------------------------------------------------------------------


def test_another_principal_gets_404_for_the_state_of_a_thread() -> None:
    app = create_app(
        _settings(), graphs={"echo": Echo().graph()}, auth=bearer_tokens({"token-a": "alice", "token-b": "bob"})
    )
    alice = {"Authorization": "Bearer token-a"}
    bob = {"Authorization": "Bearer token-b"}
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        _say(client, "echo", "alice-chat", "a secret", headers=alice)
        mine = client.get("/threads/alice-chat/state", headers=alice)
        theirs = client.get("/threads/alice-chat/state", headers=bob)
        unknown = client.get("/threads/no-such-chat/state", headers=bob)
        anonymous = client.get("/threads/alice-chat/state")

    assert mine.status_code == 200 and _messages(mine.json())[0] == ("human", None, "a secret")
    assert theirs.status_code == 404
    assert theirs.json()["detail"] == unknown.json()["detail"].replace("no-such-chat", "alice-chat")
    assert "a secret" not in theirs.text
    assert anonymous.status_code == 401


# -- sqlite --------------------------------------------------------------------------------------------------


def _team_app(research_team: ModuleType, settings: Settings) -> FastAPI:
    return create_app(settings, graphs={"team": research_team.build_graph(token_delay=0.0)})


def test_sqlite_a_restarted_server_continues_the_conversation(research_team: ModuleType, tmp_path: Path) -> None:
    settings = _settings(kind="sqlite", path=str(tmp_path / "threads.sqlite"))
    with live_server(_team_app(research_team, settings)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        _say(c, "team", "team-1", "Compare Redis streams and pub/sub")
        before = _messages(c.get("/threads/team-1/state").json())

    with live_server(_team_app(research_team, settings)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        _say(c, "team", "team-1", "Explain Kafka consumer groups")
        after = c.get("/threads/team-1/state").json()

    messages = _messages(after)
    assert messages[: len(before)] == before
    humans = [text for kind, _, text in messages if kind == "human"]
    assert humans == ["Compare Redis streams and pub/sub", "Explain Kafka consumer groups"]
    # The team answers each turn afresh: a second writer answer, on the new topic.
    writers = [text for _, name, text in messages if name == "writer"]
    assert len(writers) == 2
    assert "Kafka consumer groups" in writers[1] and "Kafka" not in writers[0]


@pytest.mark.asyncio
async def test_sqlite_two_runtimes_one_after_another_share_the_file(tmp_path: Path) -> None:
    settings = _settings(kind="sqlite", path=str(tmp_path / "db.sqlite"))
    echo = Echo()
    for text in ("one", "two"):
        async with KikiRuntime(settings, graphs={"echo": echo.graph()}) as runtime:
            handle = await runtime.start_run("echo", {"messages": [("user", text)]}, thread_id="t")
            assert await handle.task == "success"

    assert echo.received == [["one"], ["one", "heard 1: one", "two"]]


@pytest.mark.asyncio
async def test_sqlite_the_owner_of_a_thread_outlives_a_restart(tmp_path: Path) -> None:
    """After a restart nobody here knows the thread; its checkpoints still name its owner."""
    settings = _settings(kind="sqlite", path=str(tmp_path / "owners.sqlite"))
    echo = Echo()
    async with KikiRuntime(settings, graphs={"echo": echo.graph()}) as runtime:
        handle = await runtime.start_run("echo", {"messages": [("user", "mine")]}, thread_id="t", principal="alice")
        assert await handle.task == "success"

    async with KikiRuntime(settings, graphs={"echo": echo.graph()}) as runtime:
        assert runtime.store.owners.get("t") is None
        with pytest.raises(RunNotFoundError, match="thread 't' not found"):
            await runtime.start_run("echo", {"messages": [("user", "let me read")]}, thread_id="t", principal="bob")
        with pytest.raises(RunNotFoundError):
            await runtime.start_run("echo", {"messages": [("user", "anonymous")]}, thread_id="t")
        handle = await runtime.start_run("echo", {"messages": [("user", "again")]}, thread_id="t", principal="alice")
        assert await handle.task == "success"
        # A client's metadata cannot name the owner its checkpoints record.
        other = await runtime.start_run(
            "echo", {"messages": [("user", "x")]}, thread_id="u", principal="carol", metadata={"kiki_principal": "eve"}
        )
        assert await other.task == "success"

    async with KikiRuntime(settings, graphs={"echo": echo.graph()}) as runtime:
        with pytest.raises(RunNotFoundError):
            await runtime.start_run("echo", {"messages": [("user", "x")]}, thread_id="u", principal="eve")

    assert echo.received[:2] == [["mine"], ["mine", "heard 1: mine", "again"]]


@pytest.mark.asyncio
async def test_work_done_for_another_run_on_its_thread_keeps_out_of_the_thread_s_state() -> None:
    """A handoff's served run (``checkpointed=False``) neither reads nor writes the thread's checkpoints."""
    echo = Echo()
    async with KikiRuntime(_settings(), graphs={"echo": echo.graph()}) as runtime:
        own = await runtime.start_run("echo", {"messages": [("user", "first")]}, thread_id="t")
        assert await own.task == "success"
        served = runtime.runs.start(
            "echo", {"messages": [("user", "for the caller")]}, thread_id="t", checkpointed=False
        )
        assert await served.task == "success"
        again = await runtime.start_run("echo", {"messages": [("user", "second")]}, thread_id="t")
        assert await again.task == "success"

    assert echo.received == [["first"], ["for the caller"], ["first", "heard 1: first", "second"]]


# -- postgres ------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_postgres_keeps_a_conversation_across_runtimes(postgres_dsn: str) -> None:
    settings = _settings(kind="postgres", dsn=postgres_dsn)
    echo = Echo()
    for text in ("first", "second"):
        async with KikiRuntime(settings, graphs={"echo": echo.graph()}) as runtime:
            handle = await runtime.start_run("echo", {"messages": [("user", text)]}, thread_id="pg-thread")
            assert await handle.task == "success"
            state = await runtime.graphs.get("echo").aget_state({"configurable": {"thread_id": "pg-thread"}})

    assert echo.received == [["first"], ["first", "heard 1: first", "second"]]
    assert [_text(m) for m in state.values["messages"]][-1] == "heard 3: first | heard 1: first | second"


def _connections(dsn: str) -> int:
    """Connections open to ``dsn``'s database, other than the one asking."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.asyncio
async def test_postgres_runs_on_many_threads_at_once_share_a_pool_closed_at_stop(postgres_dsn: str) -> None:
    settings = _settings(kind="postgres", dsn=postgres_dsn, pool_size=4)
    echo = Echo()
    async with KikiRuntime(settings, graphs={"echo": echo.graph()}) as runtime:
        handles = [
            await runtime.start_run("echo", {"messages": [("user", f"hi {n}")]}, thread_id=f"pool-{n}")
            for n in range(12)
        ]
        assert [await handle.task for handle in handles] == ["success"] * 12
        open_while_serving = _connections(postgres_dsn)
        graph = runtime.graphs.get("echo")
        states = [await graph.aget_state({"configurable": {"thread_id": f"pool-{n}"}}) for n in range(12)]

    assert 1 <= open_while_serving <= 4
    assert [_text(state.values["messages"][-1]) for state in states] == [f"heard 1: hi {n}" for n in range(12)]
    assert _connections(postgres_dsn) == 0


@pytest.mark.asyncio
async def test_an_unreachable_postgres_fails_the_start_without_showing_the_password() -> None:
    runtime = KikiRuntime(
        _settings(kind="postgres", dsn="postgresql://kiki:hunter2@127.0.0.1:1/none?connect_timeout=2")
    )
    with pytest.raises(CheckpointerError, match="cannot open the PostgreSQL checkpointer") as raised:
        await runtime.start()
    assert "hunter2" not in str(raised.value)
    assert runtime.state == "new"


# -- settings ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checkpointer", "fragment"),
    [
        ({"kind": "sqlite"}, "runs.checkpointer.path: a checkpointer of kind sqlite needs path"),
        ({"kind": "postgres"}, "runs.checkpointer.dsn: a checkpointer of kind postgres needs dsn"),
        ({"kind": "memory", "path": "x.db"}, "runs.checkpointer.path: path is only read with kind: sqlite"),
        ({"kind": "redis"}, "runs.checkpointer.kind"),
        ({"kind": "memory", "file": "x"}, "runs.checkpointer.file: unknown key"),
        ({"kind": "postgres", "dsn": "postgresql://h/db", "pool_size": 0}, "runs.checkpointer.pool_size"),
    ],
)
def test_bad_checkpointer_settings_name_the_key(checkpointer: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_mapping({"runs": {"checkpointer": checkpointer}})
    assert fragment in str(raised.value)


def test_the_dsn_never_shows() -> None:
    settings = _settings(kind="postgres", dsn="postgresql://kiki:hunter2@db/kiki")
    assert "hunter2" not in repr(settings)
    assert settings.runs.checkpointer.dsn == "postgresql://kiki:hunter2@db/kiki"


@pytest.mark.asyncio
async def test_a_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "langgraph.checkpoint.sqlite.aio", None)  # import fails
    runtime = KikiRuntime(_settings(kind="sqlite", path=str(tmp_path / "x.sqlite")))
    with pytest.raises(MissingDependencyError, match=r"pip install 'kiki-events\[sqlite\]'"):
        await runtime.start()


@pytest.mark.asyncio
async def test_a_sqlite_file_in_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    runtime = KikiRuntime(_settings(kind="sqlite", path=str(tmp_path / "nowhere" / "x.sqlite")))
    with pytest.raises(ConfigError, match=r"runs\.checkpointer\.path: the directory of .* does not exist"):
        await runtime.start()
