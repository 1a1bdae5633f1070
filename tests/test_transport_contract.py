"""One contract, every transport: memory, Redis pub/sub, Redis streams.

Each test builds "nodes" — separate :class:`KikiRuntime` objects in this process —
connected the way production nodes are: through a shared :class:`MemoryHub`, or
through a private ``redis-server`` under a key prefix of the test's own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import httpx
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiki_events.codec import encode
from kiki_events.config import Settings
from kiki_events.core.cursors import ThreadCursor
from kiki_events.errors import RunNotFoundError, TransportError
from kiki_events.events import StatusEvent, StreamEvent, TokenEvent
from kiki_events.redis.keys import Keys
from kiki_events.runtime import KikiRuntime
from kiki_events.runtime.build import create_transport
from kiki_events.server import bearer_tokens, create_app
from kiki_events.topics import topic_of
from kiki_events.transports import MemoryHub, ThreadOwner
from kiki_events.transports.wire import KIND_BATCH, KIND_CONTROL, Message, pack
from tests.redis_server import free_port, wait_subscribed
from tests.servers import Gate, aiter_frames, async_wait_for, gated_graph, live_server
from tests.tcp_proxy import CuttableProxy

TASK = {"messages": [{"role": "user", "content": "Compare Redis streams and pub/sub"}]}
STREAMS = pytest.param("streams", marks=pytest.mark.redis)
REDIS_TRANSPORTS = [pytest.param("pubsub", marks=pytest.mark.redis), STREAMS]
TRANSPORTS = ["memory", *REDIS_TRANSPORTS]
TIMEOUT = 20.0


class Cluster:
    """Nodes of one deployment (one hub, or one Redis and one prefix)."""

    def __init__(self, kind: str, research_team: ModuleType, redis_url: str | None, prefix: str) -> None:
        self.kind = kind
        self.research_team = research_team
        self.redis_url = redis_url
        self.prefix = prefix
        self.hub = MemoryHub()
        self.gate = Gate()
        self.nodes: list[KikiRuntime] = []
        self._redis: Any = None

    def settings(self, name: str, *, prefix: str | None = None, url: str | None = None, **eventbus: Any) -> Settings:
        bus: dict[str, Any] = {
            "subscribe": {"interest_linger": 0, "repair_timeout": "1s"},
            **eventbus,
        }
        redis = {"channel_prefix": prefix or self.prefix}
        if self.kind == "memory":
            bus.setdefault("provider", "memory")
        else:
            bus.setdefault("provider", "redis")
            redis.update(url=url or self.redis_url, mode=self.kind)
        bus["redis"] = {**redis, **bus.get("redis", {})}
        return Settings.model_validate({"node": name, "eventbus": bus, "runs": {"shutdown_grace": "1s"}})

    async def node(self, name: str, *, start: bool = True, **overrides: Any) -> KikiRuntime:
        graphs = {
            "team": self.research_team.build_graph(token_delay=0.0),
            "gated": gated_graph(self.research_team, self.gate, tokens=30),
            "long": gated_graph(self.research_team, self.gate, tokens=1500),
        }
        runtime = KikiRuntime(self.settings(name, **overrides), graphs=graphs, hub=self.hub)
        self.nodes.append(runtime)
        if start:
            await runtime.start()
            await self.connected(runtime)
        return runtime

    async def connected(self, runtime: KikiRuntime) -> None:
        assert runtime.bridge is not None
        assert await runtime.connected(TIMEOUT), f"{runtime.node} did not connect"

    async def redis(self) -> Any:
        if self._redis is None:
            from redis.asyncio import Redis

            self._redis = Redis.from_url(self.redis_url)
        return self._redis

    async def subscribed(self, channel: str) -> None:
        """Wait until a node's pub/sub connection listens on ``channel`` (a no-op for other transports)."""
        if self.kind != "pubsub":
            return  # the hub subscribes at once; a stream keeps what is sent before it is read
        await wait_subscribed(await self.redis(), channel, timeout=TIMEOUT)

    async def inject(self, runtime: KikiRuntime, data: bytes) -> None:
        """Put raw bytes where ``runtime`` reads control messages, as a hostile publisher would."""
        keys = Keys(self.prefix)
        if self.kind == "memory":
            self.hub.publish(keys.control_channel(runtime.node), data)
        elif self.kind == "pubsub":
            await (await self.redis()).publish(keys.control_channel(runtime.node), data)
        else:
            await (await self.redis()).xadd(keys.control_stream(runtime.node), {"d": data})

    async def close(self) -> None:
        self.gate.open()
        self.hub.set_available(True)
        for runtime in reversed(self.nodes):
            await runtime.close()
        if self._redis is not None:
            await self._redis.aclose()


@pytest_asyncio.fixture(params=TRANSPORTS)
async def cluster(request: pytest.FixtureRequest, research_team: ModuleType, key_prefix: str) -> AsyncIterator[Cluster]:
    url = None if request.param == "memory" else request.getfixturevalue("redis_url")
    nodes = Cluster(request.param, research_team, url, key_prefix)
    try:
        yield nodes
    finally:
        await nodes.close()


async def collect(runtime: KikiRuntime, run_id: str, *, after: int = 0) -> list[StreamEvent]:
    async def read() -> list[StreamEvent]:
        return [event async for event in runtime.follow(run_id, after=after)]

    return await asyncio.wait_for(read(), TIMEOUT)


def run_seqs(events: list[StreamEvent]) -> list[int]:
    return [e.seq for e in events if e.seq > 0]


async def finished(runtime: KikiRuntime, run_id: str) -> list[StreamEvent]:
    """The run's events as its own node kept them (after it ended)."""
    return await collect(runtime, run_id)


async def reader_cycled(sender: KikiRuntime, receiver: KikiRuntime) -> None:
    """Wait until ``receiver``'s reader has had everything ``sender`` published so far.

    Once ``sender``'s outbox drained, a control message to ``receiver`` travels behind
    all of it the way ``receiver`` reads everything (its one subscription connection,
    its one XREAD loop, the hub): when it arrives, any earlier frame ``receiver`` would
    have been given has arrived too. A positive barrier before checking that
    something did *not* arrive.
    """
    assert sender.bridge is not None and receiver.bridge is not None
    assert await sender.bridge.transport.flush(TIMEOUT)
    token = uuid.uuid4().hex
    arrived = asyncio.Event()

    def barrier(message: Any) -> None:
        if message.sender == sender.node and message.payload.get("token") == token:
            arrived.set()

    remove = receiver.bridge.add_control_handler("test-barrier", barrier)
    try:
        await sender.bridge.send_control("test-barrier", {"token": token}, node=receiver.node)
        await asyncio.wait_for(arrived.wait(), TIMEOUT)
    finally:
        remove()


# -- following a run -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_run_on_a_is_followed_on_b_every_event_in_order_once(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    handle = a.runs.start("gated", TASK)
    await asyncio.wait_for(asyncio.to_thread(cluster.gate.reached.wait), TIMEOUT)

    follower = asyncio.ensure_future(collect(b, handle.run_id))
    await async_wait_for(lambda: b.store.peek(handle.run_id) is not None, TIMEOUT, "B to adopt the run")
    cluster.gate.open()
    seen = await follower
    local = await finished(a, handle.run_id)

    assert run_seqs(seen) == list(range(1, len(local) + 1))
    assert seen == local
    assert seen[-1].type == "done"
    assert all(e.node == "node-a" for e in seen)
    assert b.store.peek(handle.run_id) is not None
    assert b.store.peek(handle.run_id).node == "node-a"  # type: ignore[union-attr]


async def frames_only(cluster: Cluster, run_id: str) -> list[bytes]:
    """The frames of a run's stream, after checking that it holds nothing else."""
    entries = await (await cluster.redis()).xrange(Keys(cluster.prefix).run_stream(run_id))
    assert all(set(fields) == {b"d"} and fields[b"d"].startswith(b"{") for _id, fields in entries), entries
    return [fields[b"d"] for _id, fields in entries]


@pytest.mark.asyncio
@pytest.mark.parametrize("cluster", [STREAMS], indirect=True)
async def test_a_foreign_entry_in_a_run_stream_stops_neither_the_run_nor_its_follower(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    handle = a.runs.start("long", TASK)
    await asyncio.wait_for(asyncio.to_thread(cluster.gate.reached.wait), TIMEOUT)
    follower = asyncio.ensure_future(collect(b, handle.run_id))
    await async_wait_for(lambda: (r := b.store.peek(handle.run_id)) is not None and r.log.last_seq > 0, TIMEOUT)
    # Some other client adds to the run's stream: its auto id is far above the run's <seq>-<n> ids.
    await (await cluster.redis()).xadd(Keys(cluster.prefix).run_stream(handle.run_id), {"d": b"garbage"})
    cluster.gate.open()
    seen = await follower
    local = await finished(a, handle.run_id)

    assert run_seqs(seen) == list(range(1, len(local) + 1))
    assert seen == local and seen[-1].type == "done"
    assert not missed(seen)
    assert a.bridge is not None and b.bridge is not None
    removed = a.bridge.transport.stats.dropped.get("foreign", 0)  # by the owner, before writing on
    dropped = b.bridge.transport.stats.dropped.get("malformed", 0)  # by the follower, had it read it first
    assert removed + dropped >= 1
    assert "refused" not in a.bridge.transport.stats.dropped
    await frames_only(cluster, handle.run_id)
    c = await cluster.node("node-c")
    assert await collect(c, handle.run_id) == local  # resumed later, from the stream


@pytest.mark.asyncio
@pytest.mark.parametrize("cluster", [STREAMS], indirect=True)
async def test_the_owner_removes_a_foreign_entry_that_blocks_its_run_counts_it_and_logs_it_once(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    a = await cluster.node("node-a")
    handle = a.runs.start("long", TASK)
    await asyncio.wait_for(asyncio.to_thread(cluster.gate.reached.wait), TIMEOUT)
    assert a.bridge is not None and await a.bridge.transport.flush(TIMEOUT)
    redis = await cluster.redis()
    stream = Keys(cluster.prefix).run_stream(handle.run_id)
    await redis.xadd(stream, {"d": b"garbage"})
    await redis.xadd(stream, {"x": b"not even a frame field"})
    cluster.gate.open()
    assert await asyncio.wait_for(handle.task, TIMEOUT) == "success"
    assert await a.bridge.transport.flush(TIMEOUT)
    local = await finished(a, handle.run_id)

    stats = a.bridge.transport.stats
    assert stats.dropped == {"foreign": 2}
    assert stats.events_out == len(local)
    lines = [r.getMessage() for r in caplog.records if "not frames of the run" in r.getMessage()]
    assert len(lines) == 1
    frames = await frames_only(cluster, handle.run_id)
    assert sum(len(frame.split(b"\n")) - 1 for frame in frames) == len(local)
    b = await cluster.node("node-b")
    assert await collect(b, handle.run_id) == local


@pytest.mark.asyncio
@pytest.mark.parametrize("cluster", [STREAMS], indirect=True)
async def test_run_entries_redis_keeps_refusing_are_counted_as_lost_and_logged_once(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    a = await cluster.node("node-a")
    handle = a.runs.start("long", TASK)
    await asyncio.wait_for(asyncio.to_thread(cluster.gate.reached.wait), TIMEOUT)
    assert a.bridge is not None and await a.bridge.transport.flush(TIMEOUT)
    # Looks like node A's own frame (so it is not removed) but sits far above the run's ids.
    forged = pack(KIND_BATCH, "node-a", [], sent_at=time.time(), run_id=handle.run_id)
    await (await cluster.redis()).xadd(Keys(cluster.prefix).run_stream(handle.run_id), {"d": forged})
    cluster.gate.open()
    assert await asyncio.wait_for(handle.task, TIMEOUT) == "success"
    assert await a.bridge.transport.flush(TIMEOUT)  # given up on, not retried forever
    local = await finished(a, handle.run_id)

    stats = a.bridge.transport.stats
    assert stats.dropped["refused"] > 0
    assert stats.events_out + stats.dropped["refused"] == len(local)
    assert a.bridge.health()["dropped"] == stats.dropped
    assert sum("Redis refused" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("cluster", [STREAMS], indirect=True)
async def test_a_reader_drops_counts_and_removes_a_foreign_entry_after_a_finished_run(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    handle = a.runs.start("team", TASK)
    assert await asyncio.wait_for(handle.task, TIMEOUT) == "success"
    assert a.bridge is not None and await a.bridge.transport.flush(TIMEOUT)
    local = await finished(a, handle.run_id)
    await (await cluster.redis()).xadd(Keys(cluster.prefix).run_stream(handle.run_id), {"d": b"garbage"})
    b = await cluster.node("node-b")

    assert await collect(b, handle.run_id) == local
    assert b.bridge is not None
    assert b.bridge.transport.stats.dropped == {"malformed": 1}
    await frames_only(cluster, handle.run_id)


@pytest.mark.asyncio
async def test_a_finished_run_is_replayed_on_b(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    handle = a.runs.start("team", TASK)
    await asyncio.wait_for(handle.task, TIMEOUT)
    local = await finished(a, handle.run_id)

    assert await collect(b, handle.run_id) == local


@pytest.mark.asyncio
async def test_nodes_never_redeliver_their_own_events(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    on_a: Counter[tuple[str, int]] = Counter()
    on_b: Counter[tuple[str, int]] = Counter()
    a.bus.add_sink(lambda e: on_a.update([(e.run_id, e.seq)]))
    b.bus.add_sink(lambda e: on_b.update([(e.run_id, e.seq)]))
    handle = a.runs.start("gated", TASK)
    follower = asyncio.ensure_future(collect(b, handle.run_id))
    await asyncio.wait_for(asyncio.to_thread(cluster.gate.reached.wait), TIMEOUT)
    cluster.gate.open()
    seen = await follower
    assert a.bridge is not None and b.bridge is not None
    await a.bridge.transport.flush()

    assert max(on_a.values()) == 1
    assert max(on_b.values()) == 1
    assert len(on_b) == len(seen)
    assert a.bridge.stats.delivered == 0  # A followed nothing: its own events never came back
    assert b.bridge.stats.delivered == len(seen)


# -- traffic only where wanted -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_node_receives_no_run_traffic_without_an_interest(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    assert a.bridge is not None and b.bridge is not None
    stats = b.bridge.transport.stats
    first = a.runs.start("team", TASK)
    await asyncio.wait_for(first.task, TIMEOUT)
    await reader_cycled(a, b)

    assert stats.events_in == 0  # (no other run: B's total is this run's count)
    assert first.run_id not in b.store

    second = a.runs.start("gated", TASK)
    await asyncio.wait_for(asyncio.to_thread(cluster.gate.reached.wait), TIMEOUT)
    subscription = b.bus.subscribe(run_id=second.run_id)
    await async_wait_for(lambda: len(subscription) > 0, TIMEOUT, "B to receive the run it subscribed to")
    subscription.close()
    await async_wait_for(lambda: b.bridge is not None and not b.bridge.health()["following"]["runs"], TIMEOUT)
    # The run is parked at the gate: what B got of it is its catch-up, counted once all of it is in.
    await reader_cycled(a, b)
    received = stats.events_in
    assert received > 0
    cluster.gate.open()
    await asyncio.wait_for(second.task, TIMEOUT)
    await reader_cycled(a, b)

    assert stats.events_in == received  # nothing more once nobody here wanted it


@pytest.mark.asyncio
async def test_lifecycle_events_are_broadcast_to_nodes_that_subscribe_to_them(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    quiet = await cluster.node("node-c", subscribe={"events": [], "interest_linger": 0})
    assert b.bridge is not None and quiet.bridge is not None
    topics = b.bus.subscribe(topics="agent:*")
    handle = a.runs.start("team", TASK)
    await asyncio.wait_for(handle.task, TIMEOUT)
    local = await finished(a, handle.run_id)
    wanted = set(Settings().eventbus.subscribe.events)
    expected = [(e.run_id, e.seq) for e in local if topic_of(e) in wanted]
    await async_wait_for(lambda: len(topics) >= len(expected), TIMEOUT, "the lifecycle broadcasts")
    await reader_cycled(a, b)
    await reader_cycled(a, quiet)

    got = await topics.get_batch(1000)
    assert [(e.run_id, e.seq) for e in got] == expected
    assert {e.type for e in got} == {"agent_lifecycle", "tool_call"}
    assert b.bridge.transport.stats.events_in == 0  # lifecycle only: no run traffic
    assert handle.run_id not in b.store  # and no partial copy of the run
    assert quiet.bridge.transport.stats.lifecycle_in == 0


@pytest.mark.asyncio
async def test_a_bus_subscription_made_before_the_run_exists_receives_it_when_it_starts(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    assert b.bridge is not None
    b.bridge.lookup_wait = 0.1
    run_id = "RUNfuture000000000000001"
    subscription = b.bus.subscribe(run_id=run_id)
    await async_wait_for(lambda: b.bridge is not None and b.bridge.health()["following"]["runs"] == 1, TIMEOUT)
    await cluster.subscribed(Keys(cluster.prefix).run_channel(run_id))
    events: list[StreamEvent] = [StatusEvent(run_id=run_id, seq=1, ts=1.0, status="started", node="node-a")]
    events += [
        TokenEvent(run_id=run_id, seq=i, ts=1.0, message_id="m", text=f"t{i}", node="node-a") for i in range(2, 40)
    ]
    for event in events:
        a.bus.publish(event)  # as a handler attached by the user would

    got: list[StreamEvent] = []
    while len(got) < len(events):
        got.extend(await asyncio.wait_for(subscription.get_batch(), TIMEOUT))
    assert got == events
    record = b.store.peek(run_id)
    assert record is not None and record.node == "node-a"


# -- control -------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_cancel_from_b_stops_the_run_on_a(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    handle = a.runs.start("gated", TASK)
    await asyncio.wait_for(asyncio.to_thread(cluster.gate.reached.wait), TIMEOUT)
    follower = asyncio.ensure_future(collect(b, handle.run_id))
    assert b.bridge is not None
    await async_wait_for(lambda: b.store.peek(handle.run_id) is not None, TIMEOUT)

    info = await b.bridge.cancel(handle.run_id)
    seen = await follower

    assert info.node == "node-a" and info.status in ("pending", "running")
    assert seen[-1].type == "done"
    assert seen[-1].status == "cancelled"  # type: ignore[union-attr]
    assert handle.record.status == "cancelled"
    after = await b.bridge.cancel(handle.run_id)  # an ended run stays ended
    assert after.status == "cancelled"


@pytest.mark.asyncio
async def test_custom_control_messages_reach_the_named_node_or_every_node(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    c = await cluster.node("node-c")
    assert a.bridge is not None and b.bridge is not None and c.bridge is not None
    got: dict[str, list[Any]] = {"node-b": [], "node-c": []}
    b.bridge.add_control_handler("ping", lambda m: got["node-b"].append((m.sender, dict(m.payload))))

    async def on_c(message: Any) -> None:
        got["node-c"].append((message.sender, dict(message.payload)))

    c.bridge.add_control_handler("ping", on_c)
    await a.bridge.send_control("ping", {"n": 1}, node="node-b")
    await a.bridge.send_control("ping", {"n": 2})
    await async_wait_for(lambda: len(got["node-b"]) == 2 and len(got["node-c"]) == 1, TIMEOUT)

    assert got == {"node-b": [("node-a", {"n": 1}), ("node-a", {"n": 2})], "node-c": [("node-a", {"n": 2})]}


@pytest.mark.asyncio
async def test_readers_of_a_run_whose_node_died_are_told_and_released(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kiki_events.bridge.liveness

    monkeypatch.setattr(kiki_events.bridge.liveness, "_HEARTBEAT_EVERY", 0.2)
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    assert a.bridge is not None
    handle = a.runs.start("gated", TASK)
    await asyncio.wait_for(asyncio.to_thread(cluster.gate.reached.wait), TIMEOUT)
    follower = asyncio.ensure_future(collect(b, handle.run_id))
    await async_wait_for(lambda: (r := b.store.peek(handle.run_id)) is not None and r.log.last_seq > 5, TIMEOUT)

    async def silent(ttl: float) -> None:  # node A "crashes": no more heartbeats
        return

    monkeypatch.setattr(a.bridge.transport, "heartbeat", silent)
    if cluster.kind == "memory":
        cluster.hub._heartbeats.clear()
    else:
        await (await cluster.redis()).delete(Keys(cluster.prefix).node("node-a"))
    seen = await follower

    assert seen[-1].type == "status" and seen[-1].seq == 0
    assert seen[-1].status == "missed"  # type: ignore[union-attr]
    assert "node-a" in (seen[-1].detail or "")  # type: ignore[union-attr]
    assert all(e.type != "done" for e in seen)
    record = b.store.peek(handle.run_id)
    assert record is not None and record.ended


@pytest.mark.asyncio
async def test_a_run_whose_last_frame_was_lost_is_completed_from_its_node(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kiki_events.bridge.liveness

    monkeypatch.setattr(kiki_events.bridge.liveness, "_HEARTBEAT_EVERY", 0.2)
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    assert b.bridge is not None
    bridge = b.bridge
    lost: list[int] = []
    deliver = bridge.on_frame

    def lossy(message: Message) -> None:  # the frame carrying the run's end goes missing, once, unnoticed
        if not lost and message.kind == KIND_BATCH and any(e.type == "done" for e in message.events):
            lost.extend(e.seq for e in message.events)
            return
        deliver(message)

    monkeypatch.setattr(bridge, "on_frame", lossy)
    handle = a.runs.start("gated", TASK)
    await asyncio.wait_for(asyncio.to_thread(cluster.gate.reached.wait), TIMEOUT)
    follower = asyncio.ensure_future(collect(b, handle.run_id))
    await async_wait_for(lambda: (r := b.store.peek(handle.run_id)) is not None and r.log.last_seq > 5, TIMEOUT)
    cluster.gate.open()
    seen = await follower
    local = await finished(a, handle.run_id)

    assert lost, "the run's last frame was never dropped"
    assert seen == local  # every event once, in order, the end included: fetched again from its node
    assert b.store.peek(handle.run_id) is not None and b.store.peek(handle.run_id).status == "success"  # type: ignore[union-attr]


# -- join and resume -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_resuming_on_b_after_a_position_seen_on_a_has_no_gap_and_no_duplicate(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    handle = a.runs.start("gated", TASK)
    await asyncio.wait_for(asyncio.to_thread(cluster.gate.reached.wait), TIMEOUT)
    seen_on_a: list[StreamEvent] = []
    async for event in a.follow(handle.run_id):
        seen_on_a.append(event)
        if len(seen_on_a) == 7:
            break  # the client on A goes away
    cut = seen_on_a[-1].seq
    follower = asyncio.ensure_future(collect(b, handle.run_id, after=cut))
    await async_wait_for(lambda: b.store.peek(handle.run_id) is not None, TIMEOUT)
    cluster.gate.open()
    seen_on_b = await follower
    everything = run_seqs(await finished(a, handle.run_id))

    assert run_seqs(seen_on_a) + run_seqs(seen_on_b) == everything
    assert seen_on_b[0].seq == cut + 1


@pytest.mark.asyncio
async def test_two_readers_on_b_share_one_subscription(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    handle = a.runs.start("gated", TASK)
    await asyncio.wait_for(asyncio.to_thread(cluster.gate.reached.wait), TIMEOUT)
    first = asyncio.ensure_future(collect(b, handle.run_id))
    second = asyncio.ensure_future(collect(b, handle.run_id, after=3))
    await async_wait_for(lambda: b.store.peek(handle.run_id) is not None, TIMEOUT)
    cluster.gate.open()
    one, two = await asyncio.gather(first, second)
    assert b.bridge is not None

    assert run_seqs(two) == run_seqs(one)[3:]
    assert b.bridge.transport.stats.events_in <= 2 * len(one)  # a replay at most, not one copy per reader


PROMPTLY = 4.0
"""Bound on following a finished run whose history is gone: less than the repair timers'
give-up time (3 × 2 s here), so only a catch-up that concludes at once ends in time."""


def missed(events: list[StreamEvent]) -> list[StatusEvent]:
    return [e for e in events if isinstance(e, StatusEvent) and e.seq == 0 and e.status == "missed"]


@pytest.mark.asyncio
@pytest.mark.parametrize("seen_before", [False, True], ids=["new-on-b", "known-on-b"])
async def test_a_finished_run_whose_history_is_gone_ends_at_once_on_b_with_a_missed_notice(
    cluster: Cluster, seen_before: bool
) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    assert a.bridge is not None and b.bridge is not None
    handle = a.runs.start("gated", TASK)
    await asyncio.wait_for(asyncio.to_thread(cluster.gate.reached.wait), TIMEOUT)
    kept = 0
    if seen_before:  # B followed part of it live, then its reader left before the end
        async for event in b.follow(handle.run_id):
            if event.seq == 3:
                break
        await async_wait_for(lambda: b.bridge is not None and not b.bridge.health()["following"]["runs"], TIMEOUT)
        kept = b.store.peek(handle.run_id).log.last_seq  # type: ignore[union-attr]
    cluster.gate.open()
    await asyncio.wait_for(handle.task, TIMEOUT)
    await a.bridge.transport.flush()
    last_seq = handle.record.log.last_seq
    # Its history goes away, its registry entry stays: node A restarts (it forgets its
    # runs), and in streams mode the run's stream is gone too (trimmed, expired).
    await a.close()
    await cluster.node("node-a")
    if cluster.kind == "streams":
        assert await (await cluster.redis()).delete(Keys(cluster.prefix).run_stream(handle.run_id)) == 1

    seen = await asyncio.wait_for(collect(b, handle.run_id), PROMPTLY)

    notices = missed(seen)
    assert run_seqs(seen) == list(range(1, kept + 1))
    assert seen[kept:] == notices and len(notices) == 1
    assert f"events {kept + 1}-{last_seq} of this run are no longer available" in (notices[0].detail or "")
    record = b.store.peek(handle.run_id)
    assert record is not None and record.ended
    assert record.status == "success"  # as the registry says it ended
    await async_wait_for(lambda: b.bridge is not None and not b.bridge.health()["following"]["runs"], TIMEOUT)


@pytest.mark.asyncio
@pytest.mark.parametrize("cluster", ["memory", REDIS_TRANSPORTS[0]], indirect=True)
async def test_a_finished_run_whose_node_never_answers_ends_after_a_few_requests(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kiki_events.bridge.repair

    monkeypatch.setattr(kiki_events.bridge.repair, "READY_TIMEOUT", 0.2)
    a = await cluster.node("node-a")
    handle = a.runs.start("team", TASK)
    await asyncio.wait_for(handle.task, TIMEOUT)
    await a.close()  # gone for good, its last heartbeat not expired yet: only the registry knows the run
    b = await cluster.node("node-b", subscribe={"interest_linger": 0, "repair_timeout": "0.2s"})
    assert b.bridge is not None
    asked: list[Any] = []
    b.bridge.transport.send_control = _recording(b.bridge.transport.send_control, asked)  # type: ignore[method-assign]

    seen = await asyncio.wait_for(collect(b, handle.run_id), TIMEOUT)

    notices = missed(seen)
    assert seen == notices and len(notices) == 1
    assert "no complete answer from node-a after 3 requests" in (notices[0].detail or "")
    assert [m.op for m, _ in asked] == ["replay"] * 3
    record = b.store.peek(handle.run_id)
    assert record is not None and record.status == "success"


def _recording(send: Any, into: list[Any]) -> Any:
    async def recorded(message: Any, node: str | None = None) -> None:
        into.append((message, node))
        await send(message, node)

    return recorded


@pytest.mark.asyncio
@pytest.mark.parametrize("cluster", ["streams"], indirect=True)
@pytest.mark.parametrize("lost", ["head", "tail"])
async def test_a_finished_run_whose_stream_lost_entries_delivers_the_rest_and_says_what_is_missing(
    cluster: Cluster, lost: str
) -> None:
    a = await cluster.node("node-a", publish={"batch_size": 8})
    handle = a.runs.start("team", TASK)
    await asyncio.wait_for(handle.task, TIMEOUT)
    assert a.bridge is not None
    await a.bridge.transport.flush()
    everything = run_seqs(await finished(a, handle.run_id))
    redis = await cluster.redis()
    stream = Keys(cluster.prefix).run_stream(handle.run_id)
    entries = await redis.xrange(stream)
    assert len(entries) > 4
    # Entry ids are ``<highest seq of the entry>-<n>``.
    gone = entries[:2] if lost == "head" else entries[-2:]
    first_gone = 1 if lost == "head" else int(entries[-3][0].split(b"-")[0]) + 1
    last_gone = int(gone[-1][0].split(b"-")[0])
    assert await redis.xdel(stream, *[entry_id for entry_id, _ in gone]) == 2
    b = await cluster.node("node-b")

    seen = await asyncio.wait_for(collect(b, handle.run_id), PROMPTLY)

    kept = [s for s in everything if not first_gone <= s <= last_gone]
    assert run_seqs(seen) == kept
    notices = missed(seen)
    assert len(notices) == 1
    assert f"{first_gone}-{last_gone}" in (notices[0].detail or "")
    if lost == "head":
        assert seen.index(notices[0]) < min(i for i, e in enumerate(seen) if e.seq > 0)
        assert notices[0].first_seq == last_gone + 1
        assert seen[-1].type == "done"
    else:
        assert seen[-1] == notices[0]
        record = b.store.peek(handle.run_id)
        assert record is not None and record.ended and record.status == "success"


@pytest.mark.asyncio
async def test_following_an_unknown_run_raises_run_not_found(cluster: Cluster) -> None:
    b = await cluster.node("node-b")
    assert b.bridge is not None
    b.bridge.lookup_wait = 0.2

    with pytest.raises(RunNotFoundError):
        await collect(b, "no-such-run-anywhere")


# -- threads -------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_thread_stream_on_b_sees_the_runs_a_starts_on_that_thread(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    assert b.bridge is not None
    first = a.runs.start("team", TASK, thread_id="thread-x")
    await asyncio.wait_for(first.task, TIMEOUT)
    await a.bridge.transport.flush()  # type: ignore[union-attr]

    thread = await b.bridge.open_thread("thread-x")
    lease = b.bridge.watch_thread("thread-x")
    cursor = ThreadCursor("thread-x", lambda: b.store.thread_logs(thread), thread.changed)
    try:
        items: list[Any] = []

        async def read_until(count: int) -> None:
            while sum(1 for i in items if getattr(i, "event", None) is not None and i.event.type == "done") < count:
                items.extend(await cursor.next())

        await asyncio.wait_for(read_until(1), TIMEOUT)
        second = a.runs.start("gated", TASK, thread_id="thread-x")
        await asyncio.wait_for(asyncio.to_thread(cluster.gate.reached.wait), TIMEOUT)
        cluster.gate.open()
        await asyncio.wait_for(read_until(2), TIMEOUT)
    finally:
        lease.release()

    events = [i.event for i in items if hasattr(i, "event")]
    assert [e.run_id for e in events if e.type == "done"] == [first.run_id, second.run_id]
    for handle in (first, second):
        assert [e for e in events if e.run_id == handle.run_id] == await finished(a, handle.run_id)


@pytest.mark.asyncio
async def test_a_thread_stream_on_b_holds_a_later_run_back_until_the_earlier_one_caught_up(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await cluster.node("node-a")
    # Catch-ups that take long are given up after a few repair periods: longer than this test.
    b = await cluster.node("node-b", subscribe={"interest_linger": 0, "repair_timeout": "10s"})
    assert a.bridge is not None and b.bridge is not None
    first = a.runs.start("team", TASK, thread_id="thread-o")
    await asyncio.wait_for(first.task, TIMEOUT)
    second = a.runs.start("gated", TASK, thread_id="thread-o")
    await asyncio.wait_for(asyncio.to_thread(cluster.gate.reached.wait), TIMEOUT)
    await a.bridge.transport.flush()
    # B's catch-up of the first run is slow (a big replay, a busy node): it starts only
    # once released, while the second run reaches B at once.
    release = asyncio.Event()
    watch = b.bridge.transport.watch

    async def slow_watch(kind: Any, key: str, *, after: int = 0) -> bool:
        if kind == "run" and key == first.run_id:
            await release.wait()
        return await watch(kind, key, after=after)

    monkeypatch.setattr(b.bridge.transport, "watch", slow_watch)
    thread = await b.bridge.open_thread("thread-o")
    lease = b.bridge.watch_thread("thread-o")
    cursor = ThreadCursor("thread-o", lambda: b.store.thread_logs(thread), thread.changed)
    try:
        cluster.gate.open()
        await async_wait_for(lambda: (r := b.store.peek(second.run_id)) is not None and r.ended, TIMEOUT, "run 2 on B")
        held = cursor.poll()
        release.set()
        items: list[Any] = []
        while sum(1 for i in items if getattr(i, "event", None) is not None and i.event.type == "done") < 2:
            items.extend(await asyncio.wait_for(cursor.next(), TIMEOUT))
    finally:
        lease.release()

    assert held == []  # the second run waits for the first
    events = [i.event for i in items if hasattr(i, "event")]
    assert events == await finished(a, first.run_id) + await finished(a, second.run_id)


# -- thread ownership ------------------------------------------------------------------------------------------

ALICE = {"Authorization": "Bearer alice-token-0123456789"}
BOB = {"Authorization": "Bearer bob-token-0123456789ab"}
TOKENS = {"alice-token-0123456789": "alice", "bob-token-0123456789ab": "bob"}


async def thread_stream_status(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> int:
    """The status a thread stream opens with (the stream itself is endless: closed at once)."""
    async with http.stream("GET", url, headers=headers) as response:
        return response.status_code


@pytest.mark.asyncio
async def test_another_principal_never_takes_a_thread_over_through_another_node(cluster: Cluster) -> None:
    a = await cluster.node("node-a", start=False)
    b = await cluster.node("node-b", start=False)
    auth = bearer_tokens(TOKENS)
    with live_server(create_app(runtime=a, auth=auth)) as on_a, live_server(create_app(runtime=b, auth=auth)) as on_b:
        for server, node in ((on_a, a), (on_b, b)):
            assert server.call(lambda node=node: node.connected(TIMEOUT), TIMEOUT + 1), f"{node.node} not connected"
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            body = {"graph": "gated", "message": "hello", "thread_id": "thread-t"}
            first = await http.post(f"{on_a.url}/runs", json=body, headers=ALICE)
            assert first.status_code == 202, first.text
            run_id = first.json()["run_id"]
            await asyncio.wait_for(asyncio.to_thread(cluster.gate.reached.wait), TIMEOUT)

            taken = await http.post(f"{on_b.url}/runs", json={**body, "graph": "team"}, headers=BOB)
            assert taken.status_code == 404, taken.text
            assert taken.json()["detail"] == "thread 'thread-t' not found"
            cluster.gate.open()

            for server in (on_a, on_b):
                thread_url = f"{server.url}/threads/thread-t/stream"
                assert await thread_stream_status(http, thread_url, BOB) == 404
                assert await thread_stream_status(http, thread_url, ALICE) == 200
                assert (await http.get(f"{server.url}/runs/{run_id}", headers=BOB)).status_code == 404
                assert (await http.post(f"{server.url}/runs/{run_id}/cancel", headers=BOB)).status_code == 404
            again = await http.post(f"{on_b.url}/runs", json={**body, "graph": "team"}, headers=ALICE)
            assert again.status_code == 202, again.text

            # Alice's thread on A carries both of her runs, the one started on B too.
            done: list[str] = []
            async with http.stream("GET", f"{on_a.url}/threads/thread-t/stream", headers=ALICE) as stream:
                assert stream.status_code == 200
                async for frame in aiter_frames(stream):
                    if frame.event == "done":
                        done.append((frame.id or "").rpartition(":")[0])
                    if len(done) == 2:
                        break
            assert done == [run_id, again.json()["run_id"]]


@pytest.mark.asyncio
async def test_a_thread_is_claimed_once_whoever_asks_first_on_whichever_node(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    assert a.bridge is not None and b.bridge is not None
    ta, tb = a.bridge.transport, b.bridge.transport

    assert await tb.thread_owner("thread-c") is None
    owners = await asyncio.gather(*(t.claim_thread("thread-c", who) for t, who in ((ta, "alice"), (tb, "bob")) * 5))
    assert len(set(owners)) == 1  # one winner, and everyone is told who it is
    assert owners[0].principal in ("alice", "bob")
    assert await ta.thread_owner("thread-c") == await tb.thread_owner("thread-c") == owners[0]

    anonymous = await ta.claim_thread("thread-anon", None)
    assert anonymous == ThreadOwner(None)
    assert await tb.claim_thread("thread-anon", "bob") == ThreadOwner(None)
    assert await tb.thread_owner("thread-anon") == ThreadOwner(None)

    # Through the runtimes: the registry's decision is checked before every start.
    handle = await a.start_run("team", TASK, thread_id="thread-r", principal="alice")
    with pytest.raises(RunNotFoundError):
        await b.start_run("team", TASK, thread_id="thread-r", principal="bob")
    with pytest.raises(RunNotFoundError):
        await b.bridge.open_thread("thread-r", "bob")
    with pytest.raises(RunNotFoundError):
        await b.bridge.run_info(handle.run_id, "bob")
    await asyncio.wait_for(handle.task, TIMEOUT)
    assert (await b.bridge.open_thread("thread-r", "alice")).principal == "alice"
    second = await b.start_run("team", TASK, thread_id="thread-r", principal="alice")
    await asyncio.wait_for(second.task, TIMEOUT)
    # A run of someone else on the thread (a node that did not claim it) is never shown.
    rogue = b.runs.start("team", TASK, thread_id="thread-rogue", principal="bob")
    await asyncio.wait_for(rogue.task, TIMEOUT)
    await b.bridge.transport.flush()
    assert (await a.bridge.transport.thread_owner("thread-rogue")) == ThreadOwner("bob")  # its registry entry set it
    with pytest.raises(RunNotFoundError):
        await a.start_run("team", TASK, thread_id="thread-rogue", principal="alice")


@pytest.mark.asyncio
async def test_a_new_thread_is_refused_while_the_registry_is_unreachable_a_generated_one_is_not(
    cluster: Cluster,
) -> None:
    if cluster.kind == "memory":
        node = await cluster.node("node-a")
        known = await node.start_run("team", TASK, thread_id="thread-known", principal="alice")
        await asyncio.wait_for(known.task, TIMEOUT)
        cluster.hub.set_available(False)
    else:
        node = await cluster.node("node-a", start=False, url=f"redis://127.0.0.1:{free_port()}/0")
        await node.start()
        known = None

    with pytest.raises(TransportError):
        await node.start_run("team", TASK, thread_id="thread-new", principal="alice")
    assert node.store.owners.get("thread-new") is None  # nothing decided blindly
    generated = await node.start_run("team", TASK, principal="alice")
    await asyncio.wait_for(generated.task, TIMEOUT)
    again = await node.start_run("team", TASK, thread_id=generated.thread_id, principal="alice")
    await asyncio.wait_for(again.task, TIMEOUT)
    with pytest.raises(RunNotFoundError):
        await node.start_run("team", TASK, thread_id=generated.thread_id, principal="bob")
    if known is not None:  # confirmed by the registry before the outage
        later = await node.start_run("team", TASK, thread_id="thread-known", principal="alice")
        await asyncio.wait_for(later.task, TIMEOUT)
        cluster.hub.set_available(True)
        await node.bridge.transport.flush()  # type: ignore[union-attr]
        # Its owner went to the registry with its runs once the hub was back.
        assert await node.bridge.transport.thread_owner(generated.thread_id) == ThreadOwner("alice")  # type: ignore[union-attr]


@pytest.mark.asyncio
@pytest.mark.parametrize("cluster", REDIS_TRANSPORTS, indirect=True)
async def test_a_threads_owner_lives_at_least_as_long_as_its_runs_in_redis(cluster: Cluster) -> None:
    a = await cluster.node("node-a", persistence={"run_ttl": "3h"})
    assert a.bridge is not None
    redis = await cluster.redis()
    keys = Keys(cluster.prefix)
    handle = await a.start_run("team", TASK, thread_id="thread-ttl", principal="alice")
    await asyncio.wait_for(handle.task, TIMEOUT)
    await a.bridge.transport.flush()

    assert await redis.get(keys.thread_owner("thread-ttl")) == b"alice"
    owner_ttl = await redis.ttl(keys.thread_owner("thread-ttl"))
    assert owner_ttl >= await redis.ttl(keys.run_info(handle.run_id)) > 0
    assert owner_ttl >= await redis.ttl(keys.thread_runs("thread-ttl"))
    assert owner_ttl > 6 * 86400  # extended while the run was running, never shortened


@pytest.mark.asyncio
@pytest.mark.parametrize("cluster", REDIS_TRANSPORTS, indirect=True)
async def test_what_a_run_leaves_in_redis_expires(cluster: Cluster) -> None:
    a = await cluster.node("node-a", persistence={"run_ttl": "1h"})
    assert a.bridge is not None
    handle = a.runs.start("team", TASK, thread_id="ttl-thread")
    await asyncio.wait_for(handle.task, TIMEOUT)
    await a.bridge.transport.flush()
    redis = await cluster.redis()
    keys = Keys(cluster.prefix)

    info = await redis.hgetall(keys.run_info(handle.run_id))
    assert info[b"status"] == b"success" and info[b"node"] == b"node-a"
    assert int(info[b"last_seq"]) == handle.record.log.last_seq
    assert 0 < await redis.ttl(keys.run_info(handle.run_id)) <= 3600
    assert 0 < await redis.ttl(keys.thread_runs("ttl-thread")) <= 3600
    assert 0 < await redis.ttl(keys.node("node-a")) <= 15
    if cluster.kind == "streams":
        assert 0 < await redis.ttl(keys.run_stream(handle.run_id)) <= 3600
    else:
        assert not await redis.exists(keys.run_stream(handle.run_id))


# -- bad input and isolation ---------------------------------------------------------------------------------


def frames_to_inject() -> dict[str, bytes]:
    token = encode(TokenEvent(run_id="r1", seq=1, ts=1.0, message_id="m", text="x"))
    return {
        "malformed": b"\xff\xfe not json at all",
        "oversized": b"x" * (70 * 1024),
        "unknown_version": json.dumps({"v": 99, "k": "b", "n": "evil", "t": 1.0, "r": "r1"}).encode(),
        "event_version": pack(KIND_BATCH, "evil", [token.replace(b'"v":1', b'"v":7')], sent_at=1.0, run_id="r1"),
        "wrong_run": pack(KIND_BATCH, "evil", [token], sent_at=1.0, run_id="r2"),
        "bad_control": pack(KIND_CONTROL, "evil", sent_at=1.0, o=5, p=[]),
    }


@pytest.mark.asyncio
async def test_malformed_oversized_and_unknown_version_frames_are_dropped_counted_and_survived(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b", publish={"max_message_bytes": 65536})
    assert b.bridge is not None
    for data in frames_to_inject().values():
        await cluster.inject(b, data)
    for data in frames_to_inject().values():
        await cluster.inject(b, data)
    stats = b.bridge.transport.stats
    await async_wait_for(lambda: sum(stats.dropped.values()) >= 12, TIMEOUT, "every frame to be refused")

    assert stats.dropped == {"malformed": 6, "oversized": 2, "unknown_version": 4}
    warnings = [r for r in caplog.records if r.name == "kiki_events.bridge" and "dropped a frame" in r.getMessage()]
    assert len(warnings) <= 3  # once per kind
    # The listener is alive: B still follows runs.
    handle = a.runs.start("team", TASK)
    assert (await collect(b, handle.run_id))[-1].type == "done"


@pytest.mark.asyncio
async def test_two_prefixes_on_one_redis_never_see_each_other(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    other = await cluster.node("node-b", prefix=cluster.prefix + "other:")
    neighbour = await cluster.node("node-c", prefix=cluster.prefix + "other:")  # other's deployment
    assert other.bridge is not None and a.bridge is not None
    other.bridge.lookup_wait = 0.3
    topics = other.bus.subscribe(topics="*")
    handle = a.runs.start("team", TASK, thread_id="shared-thread")
    await asyncio.wait_for(handle.task, TIMEOUT)
    assert await a.bridge.transport.flush(TIMEOUT)
    await reader_cycled(neighbour, other)  # sent after all of A's traffic: other's reader is past it

    with pytest.raises(RunNotFoundError):
        await collect(other, handle.run_id)
    with pytest.raises(RunNotFoundError):
        await other.bridge.open_thread("shared-thread")
    assert len(topics) == 0
    assert other.bridge.transport.stats.lifecycle_in == 0
    assert other.bridge.transport.stats.messages_in == 1  # the barrier from its own deployment


class Recorder:
    """A transport listener that keeps the run events it receives."""

    def __init__(self) -> None:
        self.events: list[StreamEvent] = []

    def on_frame(self, message: Any) -> None:
        self.events.extend(message.events)

    def on_control(self, message: Any) -> None: ...

    def on_connected(self, resumed: bool) -> None: ...


@pytest.mark.asyncio
async def test_connected_is_false_while_down_true_once_up_and_a_watch_made_then_gets_the_next_message(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    server: Any = None
    url = None
    if cluster.kind == "memory":
        cluster.hub.set_available(False)
    else:
        server = request.getfixturevalue("redis_server")  # a private Redis of this test, stopped for now
        server.stop()
        url = server.url
    b = await cluster.node("node-b", start=False, url=url)
    await b.start()
    listener = Recorder()
    transport = create_transport(cluster.settings("listener", url=url), node="listener", hub=cluster.hub)
    assert transport is not None
    await transport.start(listener)
    try:
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert not await b.connected(timeout=0.3)
        assert 0.3 <= loop.time() - began < 3.0  # within the timeout (and not long after it)
        assert not await transport.connected(timeout=0)
        waiting = [asyncio.ensure_future(b.connected(TIMEOUT)), asyncio.ensure_future(transport.connected(TIMEOUT))]
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiting)

        if server is None:
            cluster.hub.set_available(True)
        else:
            await asyncio.to_thread(server.start)
        assert await asyncio.wait_for(asyncio.gather(*waiting), TIMEOUT) == [True, True]
        assert b.bridge is not None and b.bridge.state == "connected"
        assert await transport.watch("run", "RUNconnected00000000001")
        a = await cluster.node("node-a", url=url)
        assert a.bridge is not None
        event = TokenEvent(run_id="RUNconnected00000000001", seq=1, ts=1.0, message_id="m", text="hi", node="node-a")
        assert a.bridge.transport.publish(event)
        await async_wait_for(lambda: listener.events, TIMEOUT, "the next message after the watch")

        assert listener.events == [event]
    finally:
        await transport.close()
    await b.close()
    assert not await b.connected(timeout=0)  # closed: never connected again


@pytest.mark.asyncio
@pytest.mark.parametrize("cluster", REDIS_TRANSPORTS, indirect=True)
async def test_an_outage_is_one_loss_and_one_reconnect_however_many_attempts_it_takes(
    cluster: Cluster, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kiki_events.bridge")
    server = request.getfixturevalue("redis_server")  # a private Redis of this test
    with CuttableProxy(server.port) as proxy:  # counts the reader's connection attempts
        url = f"redis://127.0.0.1:{proxy.port}/0"
        transport = create_transport(cluster.settings("listener", url=url), node="listener", hub=cluster.hub)
        assert transport is not None
        await transport.start(Recorder())
        try:
            assert await transport.connected(TIMEOUT)
            server.stop()
            proxy.cut()
            await async_wait_for(lambda: transport.state == "reconnecting", TIMEOUT, "the outage to be noticed")
            attempts = proxy.accepted
            await async_wait_for(lambda: proxy.accepted >= attempts + 6, TIMEOUT, "attempts to reconnect")
            assert transport.stats.reconnects == 0  # no attempt failed so far was a reconnection
            assert transport.state == "reconnecting"

            await asyncio.to_thread(server.start)
            assert await transport.connected(TIMEOUT)
            assert transport.stats.reconnects == 1
        finally:
            await transport.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "kiki_events.bridge"]
    assert sum("lost its" in line for line in lines) == 1, lines
    assert sum("reconnected" in line for line in lines) == 1, lines


@pytest.mark.asyncio
async def test_outbox_overflow_is_dropped_and_counted_never_raised_into_the_graph(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    a = await cluster.node("node-a", start=False, url=unreachable, publish={"outbox_size": 16, "timeout": "0.5s"})
    await a.start()
    assert a.bridge is not None
    if cluster.kind == "memory":
        cluster.hub.set_available(False)
    handle = a.runs.start("team", TASK)

    assert await asyncio.wait_for(handle.task, TIMEOUT) == "success"
    events = await finished(a, handle.run_id)  # A serves its own run meanwhile
    stats = a.bridge.transport.stats
    assert stats.dropped["outbox_full"] == len(events) - 16 - 1  # the done is always kept
    assert a.bridge.transport.outbox_depth == 17
    assert sum("outbox full" in r.getMessage() for r in caplog.records) == 1
    assert a.bridge.health()["state"] in ("connecting", "reconnecting")


@pytest.mark.asyncio
async def test_flush_is_false_at_its_timeout_while_down_true_once_drained_and_false_when_closed_meanwhile(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    server: Any = None
    url = None
    if cluster.kind != "memory":
        server = request.getfixturevalue("redis_server")  # a private Redis of this test
        url = server.url
    a = await cluster.node("node-a", url=url, publish={"timeout": "0.5s"})
    assert a.bridge is not None
    transport = a.bridge.transport

    async def outage(down: bool) -> None:
        if server is None:
            cluster.hub.set_available(not down)
        elif down:
            server.stop()
        else:
            await asyncio.to_thread(server.start)

    def token(seq: int) -> TokenEvent:
        return TokenEvent(run_id="RUNflush0000000000000001", seq=seq, ts=1.0, message_id="m", text="x", node="node-a")

    assert await transport.flush(0)  # nothing waiting
    await outage(True)
    assert transport.publish(token(1))
    assert not await transport.flush(0.3)
    assert transport.outbox_depth == 1
    # Flushes wait far longer than the test does: they must return when the outbox
    # drains (or the transport closes), not when their own timeout comes.
    waiting = asyncio.ensure_future(transport.flush(3 * TIMEOUT))
    await outage(False)
    assert await asyncio.wait_for(waiting, TIMEOUT)
    assert transport.outbox_depth == 0

    await outage(True)
    assert transport.publish(token(2))
    waiting = asyncio.ensure_future(transport.flush(3 * TIMEOUT))
    await asyncio.sleep(0)  # let it start waiting
    assert not waiting.done()
    await transport.close(timeout=0.1)
    assert await asyncio.wait_for(waiting, 2.0) is False  # at once, not at its timeout
    assert not await transport.flush(0)


@pytest.mark.asyncio
@pytest.mark.parametrize("cluster", ["memory"], indirect=True)  # a real Redis outage: tests/test_cluster.py
async def test_events_wait_in_the_outbox_during_an_outage_and_flush_in_order(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    handle = a.runs.start("gated", TASK)
    await asyncio.wait_for(asyncio.to_thread(cluster.gate.reached.wait), TIMEOUT)
    follower = asyncio.ensure_future(collect(b, handle.run_id))
    await async_wait_for(lambda: (r := b.store.peek(handle.run_id)) is not None and r.log.last_seq > 0, TIMEOUT)
    cluster.hub.set_available(False)
    cluster.gate.open()
    await asyncio.wait_for(handle.task, TIMEOUT)
    assert a.bridge is not None and a.bridge.transport.outbox_depth > 0
    cluster.hub.set_available(True)
    seen = await follower

    assert run_seqs(seen) == run_seqs(await finished(a, handle.run_id))
    notices = [e for e in seen if isinstance(e, StatusEvent) and e.seq == 0]
    assert [n.status for n in notices] == ["missed"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda header, body: json.dumps(header).encode() + b"\n" + body,
            st.dictionaries(
                st.sampled_from(["v", "k", "n", "t", "r", "o", "p", "f", "e", "g", "i"]),
                st.one_of(st.integers(-2, 3), st.text(max_size=8), st.none(), st.floats(), st.booleans()),
            ),
            st.binary(max_size=200),
        ),
    )
)
def test_fuzzed_frames_never_break_the_receiver(data: bytes) -> None:
    hub = MemoryHub()
    keys = Keys("fuzz:")

    async def scenario() -> None:
        settings_ = Settings.model_validate({"node": "fuzzed", "eventbus": {"redis": {"channel_prefix": "fuzz:"}}})
        async with KikiRuntime(settings_, hub=hub) as runtime:
            assert runtime.bridge is not None
            hub.publish(keys.control_channel("fuzzed"), data)
            hub.publish(keys.lifecycle_channel(), data)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert runtime.bridge.state == "connected"

    asyncio.run(scenario())


@pytest.mark.asyncio
async def test_lag_is_measured_from_the_frame_header(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    handle = a.runs.start("gated", TASK)
    await asyncio.wait_for(asyncio.to_thread(cluster.gate.reached.wait), TIMEOUT)
    follower = asyncio.ensure_future(collect(b, handle.run_id))
    await async_wait_for(lambda: b.store.peek(handle.run_id) is not None, TIMEOUT)
    started = time.time()
    cluster.gate.open()
    await follower
    registry = b.metrics_registry
    count = registry.get_sample_value("kiki_bridge_delivery_lag_seconds_count")
    total = registry.get_sample_value("kiki_bridge_delivery_lag_seconds_sum")

    assert count is not None and count > 0
    assert total is not None and 0 <= total / count < time.time() - started + 1
