"""Statistics over the stored runs: exact figures after demo runs (a priced and an unpriced model),
grouped by every key, over a time range, per principal, in SQLite and PostgreSQL, over HTTP on a
real server and through ``kiki-events stats``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import pytest_asyncio
from langchain_core.messages import AIMessage, BaseMessage
from langgraph.graph import END, START, MessagesState, StateGraph

from kiki_events.config import Settings
from kiki_events.errors import InvalidArgumentError
from kiki_events.events import StreamEvent
from kiki_events.history import ANYONE, STATS_KEYS, EventStore, PostgresStore, SqliteStore, Stats, StatsGroup, StoredRun
from kiki_events.runtime import KikiRuntime
from kiki_events.server import bearer_tokens, create_app
from kiki_events.sinks.history import HistorySink
from tests.processes import dying_with_us
from tests.servers import LiveServer, live_server
from tests.test_history import every_type, meta_of, write_all

ROOT = Path(__file__).resolve().parent.parent
TASK = {"messages": [{"role": "user", "content": "Research event stores"}]}
PRICES = {"scripted-1": {"input": 2.0, "output": 8.0, "cached": 0.5}}
TOKENS = {"alice-token": "alice", "bob-token": "bob"}
Stored = dict[str, tuple[StoredRun, list[StreamEvent]]]


def solo_graph(scripted: ModuleType) -> Any:
    """One call of a model the price table does not know."""
    model = scripted.ScriptedChatModel(model_name="scripted-free", script=lambda m: AIMessage("unpriced words here"))

    async def answer(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("answer", answer)
    builder.add_edge(START, "answer")
    builder.add_edge("answer", END)
    return builder.compile()


def settings_for(backend: str, where: str) -> dict[str, Any]:
    store = {"enabled": True, "flush_interval": "2ms", "backend": backend}
    store.update({"path": where} if backend == "sqlite" else {"dsn": where})
    return {"node": "n1", "store": store, "prices": PRICES}


@pytest.fixture(params=["sqlite", "postgres"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "sqlite":
        return settings_for("sqlite", str(tmp_path / "history.sqlite"))
    return settings_for("postgres", request.getfixturevalue("postgres_dsn"))


@pytest.fixture
def served(config: dict[str, Any], research_team: ModuleType, scripted: ModuleType) -> Iterator[LiveServer]:
    graphs = {"team": research_team.build_graph(token_delay=0.0), "solo": solo_graph(scripted)}
    runtime = KikiRuntime(Settings.from_mapping(config), graphs=graphs)
    with live_server(create_app(runtime=runtime, auth=bearer_tokens(TOKENS))) as server:
        server.runtime = runtime  # type: ignore[attr-defined]
        yield server


def history(server: LiveServer) -> EventStore:
    store = server.runtime.history  # type: ignore[attr-defined]
    assert store is not None
    return store  # type: ignore[no-any-return]


def run_all(server: LiveServer) -> Stored:
    """alice: two team runs on two threads and one solo run; bob: one team run. Stored, with their events."""
    runtime: KikiRuntime = server.runtime  # type: ignore[attr-defined]
    plan = [("team", "t-a1", "alice"), ("solo", "t-a2", "alice"), ("team", "t-a3", "alice"), ("team", "t-b", "bob")]
    ids = []
    for graph, thread, principal in plan:

        async def one(graph: str = graph, thread: str = thread, principal: str = principal) -> str:
            handle = await runtime.start_run(graph, TASK, thread_id=thread, principal=principal)
            assert await handle.task == "success"
            return handle.run_id

        ids.append(server.call(one))
    sink = next(s for s in runtime.sinks.sinks if isinstance(s, HistorySink))
    assert server.call(lambda: sink.writer.flush(10))
    store = history(server)
    stored: Stored = {}
    for run_id in ids:
        run = server.call(lambda run_id=run_id: store.run(run_id, ANYONE))
        page = server.call(lambda run_id=run_id: store.events(ANYONE, run_id=run_id, limit=10_000))
        stored[run_id] = (run, page.events)
    return stored


def nearest_rank(values: list[float], p: int) -> float | None:
    ordered = sorted(values)
    return ordered[math.ceil(len(ordered) * p / 100) - 1] if ordered else None


def expect(runs: list[tuple[StoredRun, list[StreamEvent]]], call: Callable[[Any], bool], tool: Any) -> dict[str, Any]:
    """The figures of ``runs``, worked out here from their events: calls kept by ``call``, tool results by ``tool``."""
    calls = [e for _, events in runs for e in events if e.type == "llm" and call(e)]
    results = [e for _, events in runs for e in events if e.type == "tool_result" and tool is not None and tool(e)]
    durations = [r.duration_s for r, _ in runs if r.duration_s is not None]
    ttfts = [e.ttft_s for e in calls if e.ttft_s is not None]  # type: ignore[attr-defined]
    priced = [e for e in calls if e.cost_usd is not None]  # type: ignore[attr-defined]
    usage = {k: sum(getattr(e.usage, k) for e in calls) for k in ("input_tokens", "output_tokens", "total_tokens")}  # type: ignore[attr-defined]
    usage.update({k: sum(getattr(e.usage, k) for e in calls) for k in ("reasoning_tokens", "cached_tokens")})  # type: ignore[attr-defined]
    return {
        "runs": len(runs),
        "success": sum(r.status == "success" for r, _ in runs),
        "durations": (len(durations), sum(durations), max(durations, default=None), nearest_rank(durations, 95)),
        "llm_calls": len(calls),
        "tokens": usage,
        "ttft": (len(ttfts), max(ttfts, default=None), nearest_rank(ttfts, 50), nearest_rank(ttfts, 95)),
        "tools": None if tool is None else (len(results), sum(e.error is not None for e in results)),  # type: ignore[attr-defined]
        "usd": sum(e.cost_usd for e in priced),  # type: ignore[attr-defined]
        "unpriced": (len(calls) - len(priced), sum(e.usage.total_tokens for e in calls if e.cost_usd is None)),  # type: ignore[attr-defined]
    }


def check(group: StatsGroup, want: dict[str, Any]) -> None:
    assert group.runs == want["runs"] and group.statuses.success == want["success"]
    d = group.duration_s
    assert (d.count, d.max, d.p95) == (want["durations"][0], want["durations"][2], want["durations"][3])
    assert d.total == pytest.approx(want["durations"][1])
    assert group.llm_calls == want["llm_calls"]
    assert group.tokens.model_dump() == want["tokens"]
    t = group.ttft_s
    assert (t.count, t.max, t.p50, t.p95) == want["ttft"]
    tools = None if group.tool_calls is None else (group.tool_calls, group.tool_errors)
    assert tools == want["tools"]
    assert group.cost.usd == pytest.approx(want["usd"], abs=1e-9)
    assert (group.cost.unpriced_calls, group.cost.unpriced_tokens) == want["unpriced"]
    assert group.cost.priced_calls == want["llm_calls"] - want["unpriced"][0]


def everything(_: Any) -> bool:
    return True


def test_stats_by_every_key_time_range_and_owner_are_exact(served: LiveServer) -> None:
    stored = run_all(served)
    store = history(served)
    mine = [item for item in stored.values() if item[0].principal == "alice"]

    def stats(principal: Any = "alice", **options: Any) -> Stats:
        return served.call(lambda: store.stats(principal, **options))

    total = stats()
    check(total.total, expect(mine, everything, everything))
    assert total.total.cost.usd > 0 and total.total.cost.unpriced_calls == 1  # the solo run's model has no price
    assert total.groups == [] and total.by is None
    # Bob's run is never in alice's figures; ANYONE sees all four; the anonymous principal none.
    check(stats("bob").total, expect([i for i in stored.values() if i[0].principal == "bob"], everything, everything))
    assert stats(ANYONE).total.runs == 4 and stats(None).total.runs == 0

    by_run = stats(by="run")
    assert [g.key for g in by_run.groups] == sorted(r.run_id for r, _ in mine)
    for group in by_run.groups:
        check(group, expect([stored[str(group.key)]], everything, everything))
    for key, attr in (("thread", "thread_id"), ("graph", "graph")):
        grouped = stats(by=key)
        values = sorted({getattr(r, attr) for r, _ in mine})
        assert [g.key for g in grouped.groups] == values
        for group in grouped.groups:
            check(group, expect([i for i in mine if getattr(i[0], attr) == group.key], everything, everything))

    by_model = stats(by="model")
    assert [g.key for g in by_model.groups] == ["scripted-1", "scripted-free"]
    for group in by_model.groups:
        users = [i for i in mine if any(e.type == "llm" and e.model == group.key for e in i[1])]  # type: ignore[attr-defined]
        check(group, expect(users, lambda e, m=group.key: e.model == m, None))
    assert by_model.groups[1].cost.usd == 0 and by_model.groups[1].cost.priced_calls == 0

    by_agent = stats(by="agent")
    agents = sorted({a for r, _ in mine for a in r.agents})
    assert [g.key for g in by_agent.groups if g.key is not None] == agents
    for group in by_agent.groups:
        runs = [i for i in mine if group.key in i[0].agents]
        check(group, expect(runs, lambda e, a=group.key: e.agent == a, lambda e, a=group.key: e.agent == a))
    assert sum(g.llm_calls for g in by_agent.groups) == total.total.llm_calls

    # Time range: [since, until) on the runs' start; filters; a limit that cuts the groups.
    starts = sorted(r.started_at for r, _ in mine)
    later = stats(by="run", since=starts[1])
    assert [g.key for g in later.groups] == sorted(r.run_id for r, _ in mine if r.started_at >= starts[1])
    assert stats(until=starts[1]).total.runs == 1 and stats(since=starts[2], until=starts[2]).total.runs == 0
    check(stats(graph="solo").total, expect([i for i in mine if i[0].graph == "solo"], everything, everything))
    assert stats(status=["error", "cancelled"]).total.runs == 0
    assert stats(agent="research").total.runs == sum("research" in r.agents for r, _ in mine)
    cut = stats(by="run", limit=2)
    assert cut.truncated and [g.key for g in cut.groups] == [g.key for g in by_run.groups[:2]]
    assert cut.total == total.total


def test_get_stats_over_http_and_the_cli(served: LiveServer, config: dict[str, Any], tmp_path: Path) -> None:
    stored = run_all(served)
    store = history(served)
    alice = {"Authorization": "Bearer alice-token"}
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for by in STATS_KEYS:
            got = client.get("/stats", params={"by": by}, headers=alice)
            assert got.status_code == 200, got.text
            want = served.call(lambda by=by: store.stats("alice", by=by))
            assert Stats.model_validate(got.json()) == want
        bob = client.get("/stats", params={"by": "run"}, headers={"Authorization": "Bearer bob-token"}).json()
        assert [g["key"] for g in bob["groups"]] == [r.run_id for r, _ in stored.values() if r.principal == "bob"]
        since = min(r.started_at for r, _ in stored.values()) + 1e-6
        params = {"since": since, "graph": "team", "status": "success,error"}
        ranged = client.get("/stats", params=params, headers=alice)
        assert ranged.json()["total"]["runs"] == 1
        repeated = [("since", since), ("graph", "team"), ("status", "success"), ("status", "error")]
        assert client.get("/stats", params=repeated, headers=alice).json() == ranged.json()  # as GET /runs takes it
        # Times as the other history endpoints take them: a duration ago, ISO 8601.
        week = client.get("/stats", params={"since": "7d", "until": "2999-01-01T00:00:00Z"}, headers=alice)
        assert week.json()["total"] == client.get("/stats", headers=alice).json()["total"]
        for params, fragment in (
            ({"by": "color"}, "by"),
            ({"status": "fine"}, "status"),
            ({"since": "nan"}, "since"),
            ({"limit": 0}, "limit"),
        ):
            bad = client.get("/stats", params=params, headers=alice)
            assert bad.status_code == 422 and fragment in bad.text, (params, bad.text)
        assert client.get("/stats", headers={"Authorization": "Bearer nope"}).status_code == 401
        everyone = served.call(lambda: store.stats(ANYONE, by="model"))
    served.stop()

    path = tmp_path / "stats.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    command = [sys.executable, "-m", "kiki_events.cli", "stats", "--config", str(path), "--by", "model"]
    out = subprocess.run(dying_with_us([*command, "--json"]), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert Stats.model_validate_json(out.stdout) == everyone
    table = subprocess.run(dying_with_us(command), capture_output=True, text=True, timeout=60, cwd=ROOT)
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["model", "runs", "statuses"]
    assert [line.split()[0] for line in lines[1:]] == ["scripted-1", "scripted-free", "total"]
    assert lines[-1].split()[1] == "4" and "1 calls" in lines[2]
    owner = subprocess.run(
        dying_with_us([*command[:-2], "--owner", "bob", "--json"]), capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert json.loads(owner.stdout)["total"]["runs"] == 1
    bad = subprocess.run(dying_with_us([*command, "--status", "fine"]), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "'fine' is not one of" in bad.stderr


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def empty(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    store: EventStore
    if request.param == "sqlite":
        store = SqliteStore(tmp_path / "events.sqlite")
    else:
        store = PostgresStore(request.getfixturevalue("postgres_dsn"))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_bad_arguments_are_refused_naming_them_and_nothing_selected_is_all_zeros(empty: EventStore) -> None:
    for options, message in (
        ({"by": "color"}, "by must be one of run, thread, agent, graph, model, got 'color'"),
        ({"status": "fine"}, "status must be among"),
        ({"status": []}, "status must be among"),
        ({"limit": 0}, "limit must be an integer from 1 to 10000"),
        ({"limit": True}, "limit must be an integer"),
    ):
        with pytest.raises(InvalidArgumentError, match=message):
            await empty.stats(ANYONE, **options)
    nothing = await empty.stats(ANYONE, by="model")
    assert nothing == Stats(by="model") and nothing.total == StatsGroup()
    assert nothing.total.duration_s.mean is None and nothing.total.ttft_s.p95 is None


@pytest.mark.asyncio
async def test_a_delegate_relayed_into_another_run_is_counted_there_only(empty: EventStore) -> None:
    from kiki_events.history import RunMeta

    owners = {"caller": "alice", "delegate": "alice"}
    await write_all(empty, every_type("caller"), lookup=meta_of(owners))
    relayed = lambda run_id: RunMeta(principal="alice", node="n1", relayed_into="caller")  # noqa: E731
    await write_all(empty, every_type("delegate", thread="t1"), lookup=relayed)
    found = await empty.stats("alice", by="run")
    assert [g.key for g in found.groups] == ["caller"] and found.total.llm_calls == 1
    assert found.total.cost.usd == pytest.approx(0.0125) and found.total.tool_errors == 1
