"""Agents across nodes, against a real (private) Redis.

Several nodes live in this one process: each is a KikiRuntime with its own bus,
run store, Redis bridge and Handoff, sharing one Redis under a per-test key prefix.
A run on another node is followed through the bridge (``runtime.follow``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any, TypedDict

import pytest
import pytest_asyncio
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from redis.asyncio import Redis

from kiki_events import KikiCallbackHandler, StreamEvent
from kiki_events.config import HandoffSettings, Settings
from kiki_events.errors import HandoffFailedError, HandoffTimeoutError, NoAgentError
from kiki_events.events import (
    CustomEvent,
    DoneEvent,
    LLMCallEvent,
    StatusEvent,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
    Usage,
)
from kiki_events.handoff import GROUP, Handoff, dump_payload, load_payload, remote_agent_node
from kiki_events.handoff.service import client_name
from kiki_events.redis.keys import Keys
from kiki_events.redis.workqueue import WorkQueue
from kiki_events.runtime import KikiRuntime
from tests.redis_server import RedisServer
from tests.servers import async_wait_for

pytestmark = pytest.mark.redis

FAST = HandoffSettings(
    heartbeat=0.05, claim_idle=0.6, pickup_timeout=0.3, advertise_ttl=0.5, timeout=15, max_attempts=3
)


# -- graphs -----------------------------------------------------------------------------------
def writer_graph(scripted: ModuleType, text: str = "Hello from the writer on node B.") -> Any:
    model = scripted.ScriptedChatModel(script=lambda _messages: AIMessage(content=text))

    async def writer(state: MessagesState, config) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        reply = await model.ainvoke(state["messages"], config)
        return {"messages": [reply.model_copy(update={"name": "writer"})]}

    builder = StateGraph(MessagesState)
    builder.add_node("writer", writer)
    builder.add_edge(START, "writer")
    builder.add_edge("writer", END)
    return builder.compile(name="writer")


class CountState(TypedDict, total=False):
    n: int
    by: str


def counting_graph(node: str, log: list[tuple[str, int]], delay: float = 0.0) -> Any:
    async def work(state: CountState) -> dict[str, Any]:
        log.append((node, state["n"]))
        if delay:
            await asyncio.sleep(delay)
        return {"by": node}

    builder = StateGraph(CountState)
    builder.add_node("work", work)
    builder.add_edge(START, "work")
    builder.add_edge("work", END)
    return builder.compile(name="count")


def blocking_graph(started: asyncio.Event, release: asyncio.Event) -> Any:
    async def wait(state: MessagesState) -> dict[str, Any]:
        started.set()
        await release.wait()
        return {"messages": [AIMessage(content="released", name="slow")]}

    builder = StateGraph(MessagesState)
    builder.add_node("wait", wait)
    builder.add_edge(START, "wait")
    builder.add_edge("wait", END)
    return builder.compile(name="slow")


def crashing_graph(runs: list[int]) -> Any:
    async def crash(state: MessagesState) -> dict[str, Any]:
        runs.append(1)
        raise RuntimeError("cannot reach postgres://app:password=hunter2@db:5432/x")

    builder = StateGraph(MessagesState)
    builder.add_node("crash", crash)
    builder.add_edge(START, "crash")
    builder.add_edge("crash", END)
    return builder.compile(name="crash")


# -- nodes ------------------------------------------------------------------------------------
class Cluster:
    """Nodes sharing one Redis under one prefix."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.runtimes: dict[str, KikiRuntime] = {}
        self.handoffs: dict[str, Handoff] = {}
        self._stack = contextlib.AsyncExitStack()

    def settings(
        self,
        node: str,
        handoff: HandoffSettings,
        eventbus: dict[str, Any] | None = None,
        prices: dict[str, Any] | None = None,
    ) -> Settings:
        redis = {"url": self.redis_url, "channel_prefix": self.prefix}
        return Settings.model_validate(
            {
                "node": node,
                "eventbus": {"provider": "redis", "redis": redis, **(eventbus or {})},
                "handoff": handoff.model_dump(exclude_none=True),
                "prices": prices or {},
            }
        )

    async def node(
        self,
        name: str,
        graphs: dict[str, Any] | None = None,
        *,
        serve: tuple[str, ...] = (),
        eventbus: dict[str, Any] | None = None,
        prices: dict[str, Any] | None = None,
        **options: Any,
    ) -> Handoff:
        """A started runtime named ``name`` (``options``: its handoff settings); returns its Handoff."""
        settings = self.settings(name, FAST.model_copy(update={"serve": serve, **options}), eventbus, prices)
        runtime = KikiRuntime(settings, graphs=graphs or {})
        handoff = runtime.handoff
        assert handoff is not None
        await self._stack.enter_async_context(runtime)
        self.runtimes[name] = runtime
        self.handoffs[name] = handoff
        return handoff

    async def close(self) -> None:
        await self._stack.aclose()


@pytest_asyncio.fixture
async def cluster(redis_url: str, key_prefix: str) -> AsyncIterator[Cluster]:
    nodes = Cluster(redis_url, key_prefix)
    try:
        yield nodes
    finally:
        await nodes.close()
        redis = Redis.from_url(redis_url)
        keys = [k async for k in redis.scan_iter(match=f"{key_prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def settled(redis: Redis, stream: str) -> None:
    """Wait until every task of ``stream`` is acknowledged (the reply is written just before)."""
    deadline = time.monotonic() + 5
    while (await redis.xpending(stream, GROUP))["pending"] or await redis.xlen(stream):
        assert time.monotonic() < deadline, f"tasks of {stream} still pending"
        await asyncio.sleep(0.01)


def events_of(runtime: KikiRuntime, run_id: str) -> list[StreamEvent]:
    record = runtime.store.peek(run_id)
    assert record is not None, f"run {run_id} unknown on node {runtime.node}"
    frames, _ = record.log.read(0, 100_000)
    return [frame.event for frame in frames]


# -- delegate ---------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_delegate_runs_on_the_serving_node_and_returns_its_result(
    cluster: Cluster, scripted: ModuleType, redis: Redis
) -> None:
    a = await cluster.node("a")
    b = await cluster.node("b", {"writer": writer_graph(scripted)}, serve=("writer",))

    assert await a.serving_nodes("writer") == ["b"]
    result = await a.delegate(
        "writer", {"messages": [HumanMessage("write")]}, causation_id="parent-run:7", thread_id="t-42"
    )

    assert result.ok and result.status == "success"
    assert result.node == "b" and result.agent == "writer"
    assert result.text == "Hello from the writer on node B."
    assert isinstance(result.output["messages"][-1], AIMessage)
    assert result.output["messages"][-1].name == "writer"
    child = events_of(cluster.runtimes["b"], result.run_id or "")
    assert child[0].type == "status" and child[-1].type == "done"
    assert {e.causation_id for e in child} == {"parent-run:7"}
    assert {e.thread_id for e in child} == {"t-42"}
    assert "".join(e.text for e in child if isinstance(e, TokenEvent)) == result.text
    assert result.run_id not in cluster.runtimes["a"].store
    # Acknowledged and deleted: nothing pending, nothing left in the work stream.
    await settled(redis, cluster.keys.work_stream("writer"))
    assert b.stats["handled"] == 1


@pytest.mark.asyncio
async def test_a_string_input_becomes_one_user_message(cluster: Cluster, scripted: ModuleType) -> None:
    a = await cluster.node("a")
    await cluster.node("b", {"writer": writer_graph(scripted)}, serve=("writer",))

    result = await a.delegate("writer", "Compare Redis streams and pub/sub")

    first = result.output["messages"][0]
    assert isinstance(first, HumanMessage) and first.text == "Compare Redis streams and pub/sub"


@pytest.mark.asyncio
async def test_each_task_runs_exactly_once_across_three_consumers(cluster: Cluster, redis: Redis) -> None:
    log: list[tuple[str, int]] = []
    a = await cluster.node("a")
    for name in ("b1", "b2", "b3"):
        await cluster.node(name, {"count": counting_graph(name, log, delay=0.02)}, serve=("count",), concurrency=4)

    results = await asyncio.gather(*(a.delegate("count", {"n": n}) for n in range(60)))

    assert sorted(n for _, n in log) == list(range(60))  # each exactly once
    assert [r.output["by"] for r in results] == [r.node for r in results]
    assert len({node for node, _ in log}) >= 2, f"one node took everything: {log}"
    await settled(redis, cluster.keys.work_stream("count"))


@pytest.mark.asyncio
async def test_waiting_delegates_share_one_connection(cluster: Cluster, redis: Redis) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    # Pickup and advertisement generous enough that 50 tasks at once on a busy machine
    # are not taken for a missing agent: this test is about connections.
    a = await cluster.node("a", pickup_timeout=30)
    await cluster.node(
        "b", {"slow": blocking_graph(started, release)}, serve=("slow",), concurrency=64, advertise_ttl=30
    )
    runtime_b = cluster.runtimes["b"]

    waiting = [asyncio.ensure_future(a.delegate("slow", "wait")) for _ in range(50)]
    await async_wait_for(lambda: runtime_b.runs.active == 50, 30, "50 remote runs to be running")
    clients = [c for c in await redis.client_list() if c["name"] == client_name("a")]
    blocked = [c for c in clients if "b" in c["flags"]]
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*waiting), 30)

    # One reader for all 50 reply streams, not one blocked connection each.
    assert len(blocked) <= 1, f"{len(blocked)} connections of node a blocked: {blocked}"
    assert {c["cmd"] for c in blocked} <= {"xread"}
    assert all(r.ok and r.text == "released" for r in results)


@pytest.mark.asyncio
async def test_a_delegate_waits_through_a_redis_restart(redis_server: RedisServer, key_prefix: str) -> None:
    nodes = Cluster(redis_server.url, key_prefix)
    try:
        started, release = asyncio.Event(), asyncio.Event()
        # Long enough pickup checks that the outage is not taken for a missing agent.
        a = await nodes.node("a", pickup_timeout=30)
        await nodes.node("b", {"slow": blocking_graph(started, release)}, serve=("slow",), advertise_ttl=30)
        waiting = asyncio.ensure_future(a.delegate("slow", "wait", timeout=60))
        await asyncio.wait_for(started.wait(), 30)

        redis_server.stop()
        redis_server.start()  # the same data (append-only file), the same port
        release.set()
        result = await asyncio.wait_for(waiting, 30)

        assert result.ok and result.text == "released"
        again = await asyncio.wait_for(a.delegate("slow", "wait", timeout=30), 30)
        assert again.ok and again.text == "released"
    finally:
        await nodes.close()


# -- failures ---------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_no_agent_error_before_anything_is_sent(cluster: Cluster, redis: Redis) -> None:
    a = await cluster.node("a")

    with pytest.raises(NoAgentError, match="no node serves agent 'writer'"):
        await a.delegate("writer", "hello")

    assert await redis.exists(cluster.keys.work_stream("writer")) == 0


@pytest.mark.asyncio
async def test_no_agent_error_when_the_only_server_died_and_nobody_picks_the_task_up(
    cluster: Cluster, redis: Redis
) -> None:
    a = await cluster.node("a")
    # A node that advertised "writer" and then died: its advertisement expires soon.
    await redis.zadd(cluster.keys.agents("writer"), {"ghost": time.time() + 0.5})

    started = time.monotonic()
    with pytest.raises(NoAgentError, match="nobody picked the task up"):
        await a.delegate("writer", "hello", timeout=10)

    assert time.monotonic() - started < 3
    assert await redis.xlen(cluster.keys.work_stream("writer")) == 0  # the task was withdrawn


@pytest.mark.asyncio
async def test_timeout_raises_and_cancels_the_remote_run(cluster: Cluster) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    a = await cluster.node("a")
    b = await cluster.node("b", {"slow": blocking_graph(started, release)}, serve=("slow",))

    with pytest.raises(HandoffTimeoutError, match="'slow' gave no result within the timeout"):
        await a.delegate("slow", "wait", timeout=0.5)

    assert started.is_set()
    store = cluster.runtimes["b"].store
    await async_wait_for(lambda: b.context.runs.active == 0, 30, "the abandoned run to be cancelled")
    (record,) = [store.get(run_id) for run_id in list(store._runs)]
    assert record.status == "cancelled"


SLOW_BEAT = {"heartbeat": 4.0, "advertise_ttl": 60.0, "claim_idle": 120.0}
"""A serving node whose heartbeat would notice a given-up task only seconds later."""


async def _give_up(a: Handoff, how: str, running: asyncio.Event) -> None:
    """Delegate to ``slow`` and give up once its run is running."""
    if how == "timeout":
        with pytest.raises(HandoffTimeoutError):
            await a.delegate("slow", "wait", timeout=0.5)
    elif how == "cancelled":
        waiting = asyncio.ensure_future(a.delegate("slow", "wait", timeout=30))
        await asyncio.wait_for(running.wait(), 30)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    else:  # the stream's reader stops reading
        stream = a.stream("slow", "wait", timeout=30)
        async for event in stream:
            if event.type == "status":
                break
        await stream.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["timeout", "cancelled", "stream_closed"])
async def test_a_requester_that_gives_up_cancels_the_remote_run_at_once_through_the_bridge(
    cluster: Cluster, redis: Redis, how: str
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    a = await cluster.node("a")
    b = await cluster.node("b", {"slow": blocking_graph(started, release)}, serve=("slow",), **SLOW_BEAT)
    runtime_b = cluster.runtimes["b"]
    assert runtime_b.bridge is not None
    control_before = runtime_b.bridge.stats.control_in

    await _give_up(a, how, started)
    gave_up = time.monotonic()

    # Well before b's next heartbeat (4 s): the cancel came through b's control path.
    await async_wait_for(lambda: runtime_b.runs.active == 0, 2, "the abandoned run to be cancelled")
    assert time.monotonic() - gave_up < 2
    assert started.is_set() and not release.is_set()
    (run_id,) = list(runtime_b.store._runs)
    done = events_of(runtime_b, run_id)[-1]
    assert isinstance(done, DoneEvent) and done.status == "cancelled"
    assert runtime_b.bridge.stats.control_in > control_before
    await settled(redis, cluster.keys.work_stream("slow"))
    (reply_key,) = [key async for key in redis.scan_iter(match=f"{cluster.prefix}reply:*")]
    (_id, reply), *_ = await redis.xrevrange(reply_key, count=1)
    assert reply[b"kind"] == b"result" and reply[b"status"] == b"cancelled"
    assert b.stats["released"] == 0


@pytest.mark.asyncio
async def test_a_run_whose_requester_vanished_is_cancelled_when_its_deadline_passes(
    cluster: Cluster, redis: Redis
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    b = await cluster.node("b", {"slow": blocking_graph(started, release)}, serve=("slow",))
    runtime_b = cluster.runtimes["b"]
    request_id = b.new_request_id()
    queue = WorkQueue(redis, cluster.keys.work_stream("slow"), group=GROUP, consumer="x", dead_letter="-")
    task = {"v": "1", "request_id": request_id, "agent": "slow", "input": '{"messages":[]}', "cancel": "bridge"}
    # A requester that sent a task and died: nobody will cancel it.
    await queue.put({**task, "deadline": f"{time.time() + 0.2:.3f}"})

    await asyncio.wait_for(started.wait(), 30)
    await async_wait_for(lambda: runtime_b.runs.active == 0, 30, "the run to be cancelled at its deadline")

    (run_id,) = list(runtime_b.store._runs)
    assert runtime_b.store.get(run_id).status == "cancelled"
    await settled(redis, cluster.keys.work_stream("slow"))
    (_id, reply), *_ = await redis.xrevrange(cluster.keys.reply(request_id), count=1)
    assert reply[b"status"] == b"cancelled"


@pytest.mark.asyncio
async def test_a_run_that_fails_is_reported_redacted_and_not_retried(cluster: Cluster, redis: Redis) -> None:
    runs: list[int] = []
    a = await cluster.node("a")
    await cluster.node("b", {"crash": crashing_graph(runs)}, serve=("crash",))

    with pytest.raises(HandoffFailedError) as caught:
        await a.delegate("crash", "go")

    assert caught.value.status == "error"
    assert "hunter2" not in str(caught.value)
    assert "RuntimeError" in str(caught.value) or "postgres" in str(caught.value)
    assert caught.value.run_id is not None
    await asyncio.sleep(0.3)
    assert runs == [1]
    await settled(redis, cluster.keys.work_stream("crash"))


async def _take_as(redis: Redis, keys: Keys, agent: str, consumer: str) -> str:
    """A consumer that reads one task and dies without acknowledging it."""
    for _ in range(200):
        reply = await redis.xreadgroup(GROUP, consumer, {keys.work_stream(agent): ">"}, count=1, block=50)
        if reply:
            return str(reply[0][1][0][0].decode())
    raise AssertionError("no task arrived")


async def _ghost_serves(redis: Redis, keys: Keys, agent: str) -> None:
    """Advertise ``agent`` for a node that will take tasks and die."""
    queue = WorkQueue(redis, keys.work_stream(agent), group=GROUP, consumer="ghost", dead_letter="-")
    await queue.ensure_group()
    await redis.zadd(keys.agents(agent), {"ghost": time.time() + 60})


@pytest.mark.asyncio
async def test_a_task_of_a_dead_node_is_reclaimed_and_run_elsewhere(cluster: Cluster, redis: Redis) -> None:
    log: list[tuple[str, int]] = []
    a = await cluster.node("a")
    await _ghost_serves(redis, cluster.keys, "count")
    waiting = asyncio.ensure_future(a.delegate("count", {"n": 7}))
    await _take_as(redis, cluster.keys, "count", "ghost")  # ... and the ghost dies

    b = await cluster.node("b", {"count": counting_graph("b", log)}, serve=("count",))
    result = await asyncio.wait_for(waiting, 30)

    assert result.node == "b" and log == [("b", 7)]
    assert b.stats["reclaimed"] == 1
    await settled(redis, cluster.keys.work_stream("count"))


@pytest.mark.asyncio
async def test_without_handoff_concurrency_a_node_runs_as_many_tasks_as_subscriber_workers(
    cluster: Cluster, redis: Redis
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    a = await cluster.node("a")
    await _ghost_serves(redis, cluster.keys, "slow")  # so the tasks can be queued before b serves
    waiting = [asyncio.ensure_future(a.delegate("slow", "wait", timeout=30)) for _ in range(3)]
    stream = cluster.keys.work_stream("slow")
    deadline = time.monotonic() + 5
    while await redis.xlen(stream) < 3:
        assert time.monotonic() < deadline, "the tasks were not queued"
        await asyncio.sleep(0.01)

    b = await cluster.node("b", {"slow": blocking_graph(started, release)}, serve=("slow",), eventbus=TWO_WORKERS)
    runtime_b = cluster.runtimes["b"]
    await async_wait_for(lambda: runtime_b.runs.active == 2, 30, "two runs on b")

    assert b.settings.concurrency is None and runtime_b.settings.handoff_concurrency == 2
    assert (await redis.xpending(stream, GROUP))["pending"] == 2  # the third is left in the stream
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*waiting), 30)
    assert [r.node for r in results] == ["b", "b", "b"]


TWO_WORKERS = {"subscribe": {"workers": 2}}


@pytest.mark.asyncio
async def test_a_task_delivered_too_often_goes_to_the_dead_letter_stream(cluster: Cluster, redis: Redis) -> None:
    log: list[tuple[str, int]] = []
    a = await cluster.node("a")
    await _ghost_serves(redis, cluster.keys, "count")
    waiting = asyncio.ensure_future(a.delegate("count", {"n": 1}))
    entry = await _take_as(redis, cluster.keys, "count", "ghost")  # delivery 1: dies
    await redis.xclaim(cluster.keys.work_stream("count"), GROUP, "ghost-2", 0, [entry])  # delivery 2: dies too

    b = await cluster.node("b", {"count": counting_graph("b", log)}, serve=("count",), max_attempts=2)
    with pytest.raises(HandoffFailedError, match="gave up after 2 deliveries") as caught:
        await asyncio.wait_for(waiting, 30)

    assert caught.value.status == "dead_letter"
    assert log == []
    assert b.stats["dead_lettered"] == 1
    (_dead_id, dead), *_ = await redis.xrange(cluster.keys.dead_letter_stream("count"))
    assert dead[b"dead_entry"].decode() == entry
    assert dead[b"dead_deliveries"] == b"3"
    assert b"max_attempts" in dead[b"dead_reason"]
    assert load_payload(__import__("json").loads(dead[b"input"])) == {"n": 1}
    await settled(redis, cluster.keys.work_stream("count"))


@pytest.mark.asyncio
async def test_a_redelivered_task_that_already_completed_is_not_run_again(cluster: Cluster, redis: Redis) -> None:
    log: list[tuple[str, int]] = []
    a = await cluster.node("a")
    b = await cluster.node("b", {"count": counting_graph("b", log)}, serve=("count",))
    request_id = a.new_request_id()
    first = await a.delegate("count", {"n": 3}, request_id=request_id)

    # The node finished (done marker set) but died before acknowledging: the same
    # task is delivered again.
    queue = WorkQueue(redis, cluster.keys.work_stream("count"), group=GROUP, consumer="x", dead_letter="-")
    await queue.put({"v": "1", "request_id": request_id, "agent": "count", "input": '{"n":3}'})
    await async_wait_for(lambda: b.stats["duplicates"] == 1, 30, "the duplicate to be skipped")

    assert first.ok and log == [("b", 3)]
    await settled(redis, cluster.keys.work_stream("count"))
    marker = await redis.get(cluster.keys.done_marker(request_id))
    assert marker is not None and marker.startswith(b"done ")


@pytest.mark.asyncio
async def test_a_closing_node_hands_its_unfinished_task_to_another_node(cluster: Cluster) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    a = await cluster.node("a")
    b1 = await cluster.node("b1", {"slow": blocking_graph(started, release)}, serve=("slow",))
    waiting = asyncio.ensure_future(a.delegate("slow", "wait"))
    await asyncio.wait_for(started.wait(), 30)
    other_started = asyncio.Event()
    await cluster.node("b2", {"slow": blocking_graph(other_started, asyncio.Event())}, serve=("slow",))
    release_b2 = asyncio.Event()
    cluster.runtimes["b2"].graphs.register("slow", blocking_graph(other_started, release_b2))

    cluster.runtimes["b1"].settings = cluster.runtimes["b1"].settings.model_copy(
        update={"runs": cluster.runtimes["b1"].settings.runs.model_copy(update={"shutdown_grace": 0.0})}
    )
    await b1.stop_serving()
    await cluster.runtimes["b1"].runs.shutdown(0.0)  # cancels the run: not the requester's doing
    await asyncio.wait_for(other_started.wait(), 5)  # well before claim_idle would pass twice
    release_b2.set()
    result = await asyncio.wait_for(waiting, 30)

    assert result.node == "b2" and result.text == "released"
    assert b1.stats["released"] == 1


# -- streaming and relaying -------------------------------------------------------------------
@pytest.mark.asyncio
async def test_stream_yields_the_remote_run_events_and_the_result(cluster: Cluster, scripted: ModuleType) -> None:
    a = await cluster.node("a")
    await cluster.node("b", {"writer": writer_graph(scripted)}, serve=("writer",))

    stream = a.stream("writer", "write", causation_id="c-1")
    events = [event async for event in stream]

    assert stream.result is not None and stream.result.ok
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].type == "status" and isinstance(events[-1], DoneEvent)
    assert {e.run_id for e in events} == {stream.result.run_id} == {stream.run_id}
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == stream.result.text


def parent_graph(handoff: Handoff | None, **options: Any) -> Any:
    async def plan(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage(content="plan", name="supervisor")]}

    builder = StateGraph(MessagesState)
    builder.add_node("supervisor", plan)
    builder.add_node("writer", remote_agent_node("writer", handoff=handoff, **options))
    builder.add_edge(START, "supervisor")
    builder.add_edge("supervisor", "writer")
    builder.add_edge("writer", END)
    return builder.compile(name="team")


@pytest.mark.asyncio
async def test_a_remote_agent_node_relays_the_remote_run_into_the_parent_run(
    cluster: Cluster, scripted: ModuleType
) -> None:
    text = "Streams keep history; pub/sub does not. Pick by replay needs."
    a = await cluster.node("a", {"team": parent_graph(None)})
    await cluster.node("b", {"writer": writer_graph(scripted, text)}, serve=("writer",))
    runtime_a, runtime_b = cluster.runtimes["a"], cluster.runtimes["b"]

    handle = runtime_a.runs.start("team", {"messages": [HumanMessage("go")]}, thread_id="t-1", principal="alice")
    await asyncio.wait_for(handle.task, 30)

    parent = events_of(runtime_a, handle.run_id)
    assert [e.seq for e in parent] == list(range(1, len(parent) + 1))
    assert [e.type for e in parent].count("done") == 1 and isinstance(parent[-1], DoneEvent)
    assert parent[-1].status == "success"
    assert {e.run_id for e in parent} == {handle.run_id} and {e.thread_id for e in parent} == {"t-1"}
    relayed = [e for e in parent if isinstance(e, TokenEvent)]
    assert "".join(e.text for e in relayed) == text
    assert {e.agent for e in relayed} == {"writer/writer"}
    assert {e.node for e in relayed} == {"b"}
    sync = [e for e in parent if isinstance(e, CustomEvent) and e.name == "multiagent:sync"]
    assert [e.data["phase"] for e in sync] == ["requested", "completed"]
    (child_run,) = list(runtime_b.store._runs)
    child = events_of(runtime_b, child_run)
    # The chain: parent's request event → child run → relayed copies in the parent.
    assert {e.causation_id for e in child} == {sync[0].id}
    assert [e.causation_id for e in relayed] == [e.id for e in child if isinstance(e, TokenEvent)]
    assert sync[1].data["run_id"] == child_run and sync[1].data["node"] == "b"
    child_record = runtime_b.store.peek(child_run)
    assert child_record is not None and child_record.principal == "alice"  # the owner travels along
    assert a.stats["delegated"] == 1
    assert not any(isinstance(e, StatusEvent) and e.run_id != handle.run_id for e in parent)
    # The parent's usage includes what its delegate used (the parent calls no model itself).
    child_done = child[-1]
    assert isinstance(child_done, DoneEvent) and child_done.usage.total_tokens > 0
    assert parent[-1].usage == child_done.usage


@pytest.mark.asyncio
@pytest.mark.parametrize("writer_prices", ["same", "none"])
async def test_the_calling_runs_cost_covers_its_remote_agents_calls(
    cluster: Cluster, scripted: ModuleType, writer_prices: str
) -> None:
    prices = {"scripted-1": {"input": 3.0, "output": 15.0, "cached": 0.3}}
    await cluster.node("a", {"team": parent_graph(None)}, prices=prices)
    b_prices = prices if writer_prices == "same" else None
    await cluster.node("b", {"writer": writer_graph(scripted)}, serve=("writer",), prices=b_prices)
    runtime_a, runtime_b = cluster.runtimes["a"], cluster.runtimes["b"]

    handle = runtime_a.runs.start("team", {"messages": [HumanMessage("go")]})
    await asyncio.wait_for(handle.task, 30)

    parent = events_of(runtime_a, handle.run_id)
    (child_run,) = list(runtime_b.store._runs)
    child = events_of(runtime_b, child_run)
    done, child_done = parent[-1], child[-1]
    assert isinstance(done, DoneEvent) and isinstance(child_done, DoneEvent)
    assert (child_done.cost is None) == (b_prices is None)  # each node prices with its own table
    [call] = [e for e in child if isinstance(e, LLMCallEvent)]
    assert call.usage.total_tokens > 0
    price = prices["scripted-1"]
    expected = (call.usage.input_tokens * price["input"] + call.usage.output_tokens * price["output"]) / 1e6
    assert done.cost is not None and done.cost.total_usd == pytest.approx(expected, abs=1e-9) and expected > 0
    assert [(m.model, m.provider, m.calls, m.usage) for m in done.cost.models] == [
        ("scripted-1", "kiki", 1, call.usage)
    ]
    assert done.cost.unpriced_calls == 0 and done.usage == child_done.usage


@pytest.mark.asyncio
async def test_a_relayed_remote_run_is_shown_on_its_thread_only_inside_the_parent_run(
    cluster: Cluster, scripted: ModuleType
) -> None:
    await cluster.node("a", {"team": parent_graph(None), "solo": parent_graph(None, relay=False)})
    await cluster.node("b", {"writer": writer_graph(scripted)}, serve=("writer",))
    runtime_a, runtime_b = cluster.runtimes["a"], cluster.runtimes["b"]
    bridge = runtime_a.bridge
    assert bridge is not None

    handle = runtime_a.runs.start("team", {"messages": [HumanMessage("go")]}, thread_id="t-1")
    await asyncio.wait_for(handle.task, 30)
    (child_run,) = list(runtime_b.store._runs)

    child_record = runtime_b.store.peek(child_run)
    assert child_record is not None and child_record.relayed_into == handle.run_id
    assert child_record.thread_id == "t-1" and runtime_b.store.peek_thread("t-1") is None
    info = await bridge.lookup(child_run)
    assert info is not None and info.relayed_into == handle.run_id  # every node can tell
    adopted = runtime_a.store.peek(child_run)  # A followed it to relay it
    assert adopted is not None and adopted.relayed_into == handle.run_id
    thread = runtime_a.store.peek_thread("t-1")
    assert thread is not None and list(thread.runs) == [handle.run_id]

    # Not relayed: the remote run is the only place its work shows, so the thread lists it.
    solo = runtime_a.runs.start("solo", {"messages": [HumanMessage("go")]}, thread_id="t-2")
    await asyncio.wait_for(solo.task, 30)
    (solo_child,) = [r for r in runtime_b.store._runs if r != child_run]
    solo_record = runtime_b.store.peek(solo_child)
    assert solo_record is not None and solo_record.relayed_into is None
    solo_thread = runtime_b.store.peek_thread("t-2")
    assert solo_thread is not None and list(solo_thread.runs) == [solo_child]


@pytest.mark.asyncio
async def test_a_remote_agent_node_fails_the_parent_run_when_the_agent_fails(cluster: Cluster) -> None:
    await cluster.node("a", {"team": parent_graph(None)})
    await cluster.node("b", {"writer": crashing_graph([])}, serve=("writer",))
    runtime_a = cluster.runtimes["a"]

    handle = runtime_a.runs.start("team", {"messages": [HumanMessage("go")]})
    await asyncio.wait_for(handle.task, 30)

    parent = events_of(runtime_a, handle.run_id)
    assert isinstance(parent[-1], DoneEvent) and parent[-1].status == "error"
    error = next(e for e in parent if e.type == "error")
    assert error.error_type == "HandoffFailedError" and "hunter2" not in error.message
    sync = [e for e in parent if isinstance(e, CustomEvent)]
    assert sync[-1].data["phase"] == "failed"


@pytest.mark.asyncio
async def test_cancelling_a_run_cancels_the_remote_agent_it_waits_for(cluster: Cluster) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    await cluster.node("a", {"team": parent_graph(None)})
    await cluster.node("b", {"writer": blocking_graph(started, release)}, serve=("writer",), **SLOW_BEAT)
    runtime_a, runtime_b = cluster.runtimes["a"], cluster.runtimes["b"]

    handle = runtime_a.runs.start("team", {"messages": [HumanMessage("go")]})
    await asyncio.wait_for(started.wait(), 30)
    runtime_a.runs.cancel(handle.run_id)
    await asyncio.wait_for(asyncio.gather(handle.task, return_exceptions=True), 30)

    await async_wait_for(lambda: runtime_b.runs.active == 0, 30, "the remote writer to be cancelled")
    parent = events_of(runtime_a, handle.run_id)
    assert isinstance(parent[-1], DoneEvent) and parent[-1].status == "cancelled"
    (child_run,) = list(runtime_b.store._runs)
    child_done = events_of(runtime_b, child_run)[-1]
    assert isinstance(child_done, DoneEvent) and child_done.status == "cancelled"


@pytest.mark.asyncio
async def test_without_a_serving_node_the_remote_agent_node_fails_clearly(cluster: Cluster) -> None:
    await cluster.node("a", {"team": parent_graph(None)})
    runtime_a = cluster.runtimes["a"]

    handle = runtime_a.runs.start("team", {"messages": [HumanMessage("go")]})
    await asyncio.wait_for(handle.task, 30)

    parent = events_of(runtime_a, handle.run_id)
    error = next(e for e in parent if e.type == "error")
    assert error.error_type == "NoAgentError" and "no node serves agent 'writer'" in error.message


# -- the handler's relay ----------------------------------------------------------------------
def test_relay_restamps_renames_ids_and_skips_run_framing() -> None:
    import uuid

    out: list[StreamEvent] = []
    handler = KikiCallbackHandler(out.append, node="a")
    root = uuid.uuid4()
    handler.on_chain_start({"name": "team"}, {}, run_id=root, metadata={"thread_id": "t"})
    run_id = handler.run_id_of(root)
    assert run_id is not None
    child: dict[str, Any] = {
        "run_id": "CHILDRUN12345",
        "ts": 1.0,
        "thread_id": "other",
        "node": "b",
        "agent": "writer",
        "causation_id": "x",
    }
    given = [
        StatusEvent(seq=1, status="started", **child),
        TokenEvent(seq=2, message_id="m1", text="Hel", **child),
        TokenEvent(seq=3, message_id="m1", text="lo", **child),
        ToolCallEvent(seq=4, phase="start", tool_call_id="m1.0", name="search", message_id="m1", **child),
        ToolResultEvent(seq=5, tool_call_id="m1.0", output="ok", **child),
        TokenEvent(seq=6, message_id="m2", text="!", **child),
        DoneEvent(seq=7, status="success", **child),
    ]
    relayed = [handler.relay(run_id, event, agent_prefix="remote") for event in given]

    assert relayed[0] is None and relayed[-1] is None
    kept = [e for e in relayed if e is not None]
    assert [e.seq for e in kept] == [2, 3, 4, 5, 6]  # after the parent's own started (seq 1)
    assert {e.run_id for e in kept} == {run_id} and {e.thread_id for e in kept} == {"t"}
    assert [e.causation_id for e in kept] == [f"CHILDRUN12345:{n}" for n in (2, 3, 4, 5, 6)]
    assert {e.agent for e in kept} == {"remote/writer"} and {e.node for e in kept} == {"b"}
    tokens = [e for e in kept if isinstance(e, TokenEvent)]
    assert tokens[0].message_id == tokens[1].message_id != tokens[2].message_id
    call, result = kept[2], kept[3]
    assert isinstance(call, ToolCallEvent) and isinstance(result, ToolResultEvent)
    assert call.tool_call_id == result.tool_call_id != "m1.0"
    assert call.message_id == tokens[0].message_id
    assert out[1:] == kept
    handler.on_chain_end({}, run_id=root)
    assert handler.relay(run_id, given[1]) is None  # the parent run ended


def test_a_relayed_runs_usage_counts_once_in_the_relaying_run() -> None:
    import uuid

    out: list[StreamEvent] = []
    handler = KikiCallbackHandler(out.append, node="a")
    root = uuid.uuid4()
    handler.on_chain_start({"name": "team"}, {}, run_id=root)
    run_id = handler.run_id_of(root) or ""
    used = Usage(input_tokens=400, output_tokens=80, total_tokens=480)
    done = DoneEvent(run_id="CHILDRUN12345", seq=9, ts=1.0, node="b", status="success", usage=used)
    token = TokenEvent(run_id="CHILDRUN12345", seq=8, ts=1.0, node="b", message_id="m1", text="hi")

    assert handler.relay(run_id, token) is not None
    assert handler.relay(run_id, done) is None  # the relaying run reports its own end
    assert handler.relay(run_id, done) is None  # the same end seen again counts once
    handler.relay(run_id, done.model_copy(update={"run_id": "OTHERRUN1234"}))
    handler.on_chain_end({}, run_id=root)

    assert isinstance(out[-1], DoneEvent) and out[-1].run_id == run_id
    assert out[-1].usage == Usage(input_tokens=800, output_tokens=160, total_tokens=960)


def test_emit_custom_adds_an_event_to_a_live_run_only() -> None:
    import uuid

    out: list[StreamEvent] = []
    handler = KikiCallbackHandler(out.append)
    root = uuid.uuid4()
    handler.on_chain_start({"name": "team"}, {}, run_id=root)
    run_id = handler.run_id_of(root) or ""

    event = handler.emit_custom(run_id, "multiagent:sync", {"phase": "requested"}, agent="writer")

    assert isinstance(event, CustomEvent) and event.seq == 2 and out[-1] is event
    assert handler.emit_custom("nope", "x", None) is None


# -- payloads ---------------------------------------------------------------------------------
def test_payloads_keep_messages_and_plain_data() -> None:
    from langchain_core.messages import ToolMessage

    state = {
        "messages": [
            HumanMessage("hi"),
            AIMessage(content="", tool_calls=[{"name": "s", "args": {"q": 1}, "id": "c1"}], name="r"),
            ToolMessage(content="boom", tool_call_id="c1", status="error", name="s"),
        ],
        "n": 3,
        "nested": {"t": (1, 2)},
    }

    loaded = load_payload(__import__("json").loads(__import__("json").dumps(dump_payload(state))))

    assert loaded["messages"] == state["messages"]
    assert loaded["messages"][2].status == "error"
    assert loaded["n"] == 3 and loaded["nested"] == {"t": [1, 2]}


def test_a_graph_not_run_by_a_runtime_with_a_handoff_is_told_to_pass_one() -> None:
    from kiki_events.errors import HandoffError

    handler = KikiCallbackHandler(lambda _event: None, node="x")

    with pytest.raises(HandoffError, match=r"node 'x' has no running Handoff.*pass handoff= explicitly"):
        Handoff.of({"callbacks": [handler], "configurable": {"thread_id": "t"}})
    with pytest.raises(HandoffError, match="this graph has no running Handoff"):
        Handoff.of(None)
