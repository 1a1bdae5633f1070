"""The parts of the cross-node bridge on their own: frames, outbox, notices, interest, settings, secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from types import ModuleType

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiki_events.codec import encode
from kiki_events.config import Settings
from kiki_events.core.bus import EventBus
from kiki_events.core.cursors import RunCursor
from kiki_events.core.runlog import Frame, RunLog
from kiki_events.core.store import RunStore
from kiki_events.errors import ConfigError, WireError
from kiki_events.events import DoneEvent, StatusEvent, TokenEvent
from kiki_events.transports import RunInfo
from kiki_events.transports.outbox import Outbox, chunks
from kiki_events.transports.stats import TransportStats
from kiki_events.transports.wire import KIND_BATCH, KIND_LIFECYCLE, Message, pack, unpack
from tests.redis_server import free_port
from tests.servers import live_server, read_stream, wait_for


def token(seq: int, run_id: str = "r1") -> TokenEvent:
    return TokenEvent(run_id=run_id, seq=seq, ts=1.0, message_id="m", text=f"t{seq}", node="a")


def notice(run_id: str = "r1") -> StatusEvent:
    return StatusEvent(run_id=run_id, seq=0, ts=1.0, status="missed", detail="lost in transit")


# -- frames ------------------------------------------------------------------------------------------


def test_a_frame_round_trips_its_header_and_events() -> None:
    events = [token(1), token(2)]
    data = pack(KIND_BATCH, "node-a", [encode(e) for e in events], sent_at=12.5, run_id="r1", f=3)
    message = unpack(data, max_bytes=10_000)

    assert (message.kind, message.sender, message.sent_at, message.run_id) == ("b", "node-a", 12.5, "r1")
    assert message.events == events
    assert message.header["f"] == 3


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"x" * 2000, "oversized"),
        (b"not json", "malformed"),
        (b"[1, 2]", "malformed"),
        (json.dumps({"v": 2, "k": "b", "n": "x", "t": 1.0, "r": "r1"}).encode(), "unknown_version"),
        (json.dumps({"v": True, "k": "b", "n": "x", "t": 1.0, "r": "r1"}).encode(), "unknown_version"),
        (json.dumps({"v": 1, "k": "z", "n": "x", "t": 1.0}).encode(), "malformed"),
        (json.dumps({"v": 1, "k": "b", "n": "", "t": 1.0, "r": "r1"}).encode(), "malformed"),
        (json.dumps({"v": 1, "k": "b", "n": "x", "t": "soon", "r": "r1"}).encode(), "malformed"),
        (json.dumps({"v": 1, "k": "b", "n": "x", "t": 1.0}).encode(), "malformed"),
        (pack(KIND_BATCH, "x", [encode(token(1, "other"))], sent_at=1.0, run_id="r1"), "malformed"),
        (pack(KIND_BATCH, "x", [encode(notice())], sent_at=1.0, run_id="r1"), "malformed"),
        (pack(KIND_LIFECYCLE, "x", [encode(token(1))], sent_at=1.0), "malformed"),
        (pack(KIND_BATCH, "x", [b'{"type":"token"}'], sent_at=1.0, run_id="r1"), "malformed"),
        (
            pack(KIND_BATCH, "x", [encode(token(1)).replace(b'"v":1', b'"v":3')], sent_at=1.0, run_id="r1"),
            "unknown_version",
        ),
    ],
)
def test_bad_frames_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(WireError) as refused:
        unpack(data, max_bytes=1000)

    assert refused.value.reason == reason


@pytest.mark.parametrize(
    "header",
    [
        {"v": 1, "k": ["b"], "n": "x", "t": 1.0, "r": "r1"},  # an unhashable kind was a TypeError
        {"v": 1, "k": {"b": 1}, "n": "x", "t": 1.0, "r": "r1"},
        {"v": 1, "k": "b", "n": "x", "t": 10**400, "r": "r1"},  # isfinite() of a huge int was an OverflowError
        {"v": 1, "k": "b", "n": "x", "t": -(10**309), "r": "r1"},
    ],
)
def test_odd_header_values_are_malformed_frames(header: dict[str, object]) -> None:
    with pytest.raises(WireError) as refused:
        unpack(json.dumps(header).encode(), max_bytes=10_000)
    assert refused.value.reason == "malformed"


_json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**320)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)
_header = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 1.0, True, 2]) | _json_value,
        "k": st.sampled_from(["b", "p", "l", "t", "c"]) | _json_value,
        "n": st.sampled_from(["node-a", ""]) | _json_value,
        "t": st.sampled_from([1.5, 0]) | _json_value,
        "r": st.sampled_from(["r1", ""]) | _json_value,
        "f": _json_value,
    },
)
_line = st.one_of(
    st.sampled_from(
        [encode(token(1)), encode(token(2, "r2")), encode(notice()), encode(token(1)).replace(b":1,", b":3,")]
    ),
    _json_value.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40),
)
_frames = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda head, lines: b"\n".join([json.dumps(head).encode(), *lines]),
        _header,
        st.lists(_line, max_size=3),
    ),
)


def _unpack_or_error(data: bytes) -> Message | WireError:
    """``unpack(data)``; any exception other than WireError fails the test."""
    try:
        return unpack(data, max_bytes=4096)
    except WireError as exc:
        return exc


@given(_frames)
@settings(max_examples=400, deadline=None)
def test_arbitrary_frames_unpack_or_raise_wire_error(data: bytes) -> None:
    message = _unpack_or_error(data)
    if isinstance(message, WireError):
        assert message.reason in ("oversized", "unknown_version", "malformed")
        assert str(message), "a WireError must say what is wrong"
        return
    assert message.kind in ("b", "p", "l", "t", "c")
    assert isinstance(message.sender, str) and message.sender
    assert math.isfinite(message.sent_at)
    for event in message.events:
        assert event.seq >= 1
        if message.kind in ("b", "p"):
            assert event.run_id == message.run_id


# -- outbox --------------------------------------------------------------------------------------------


def test_the_outbox_groups_per_run_keeps_order_and_bounds_what_waits() -> None:
    outbox = Outbox(3)
    assert outbox.add("r1", 1, b"1")
    assert outbox.add("r2", 1, b"a", lifecycle=True)
    assert outbox.add("r1", 2, b"2")
    assert not outbox.add("r1", 3, b"3")  # full
    assert outbox.add("r1", 4, b"done", keep=True)  # a run's done is always kept
    batch = outbox.take()
    assert batch is not None

    assert {run: p.events for run, p in batch.runs.items()} == {"r1": [b"1", b"2", b"done"], "r2": [b"a"]}
    assert batch.lifecycle == [b"a"]
    assert len(outbox) == 4  # in flight until sent
    assert not outbox.add("r1", 5, b"5")
    outbox.sent(batch)
    assert len(outbox) == 0
    assert outbox.take() is None


def test_a_batch_that_failed_goes_back_in_front_of_newer_events() -> None:
    outbox = Outbox(10)
    outbox.add("r1", 1, b"1")
    outbox.register(RunInfo("r1", "a"), announce=True)
    failed = outbox.take()
    assert failed is not None
    outbox.add("r1", 2, b"2")
    outbox.add("r2", 1, b"x")
    outbox.register(RunInfo("r1", "a", status="success"))
    outbox.restore(failed)
    again = outbox.take()
    assert again is not None

    assert list(again.runs) == ["r1", "r2"]
    assert again.runs["r1"].events == [b"1", b"2"]
    assert again.runs["r1"].seqs == [1, 2]
    assert again.registry["r1"] == (RunInfo("r1", "a", status="success"), True)
    assert again.count == 3


def test_chunks_respect_both_the_event_and_the_byte_limit() -> None:
    events = [b"x" * 10] * 7

    assert list(chunks(events, 3, 1000)) == [(0, 3), (3, 6), (6, 7)]
    assert list(chunks(events, 100, 25)) == [(0, 2), (2, 4), (4, 6), (6, 7)]
    assert list(chunks([b"x" * 50, b"y"], 10, 20)) == [(0, 1), (1, 2)]
    assert list(chunks([], 10, 20)) == []


def test_delivery_lag_goes_to_the_connected_observer_and_is_never_negative() -> None:
    stats = TransportStats()
    stats.observe_lag(0.5)  # nobody listening: nothing kept, nothing raised
    seen: list[float] = []
    stats.on_lag = seen.append
    for seconds in (0.0005, 0.002, -1.0):
        stats.observe_lag(seconds)

    assert seen == [0.0005, 0.002, 0.0]


def test_run_info_survives_a_redis_hash() -> None:
    info = RunInfo("r1", "node-a", "success", "t1", "team", "alice", 10.5, 12.0, 99)
    fields = {k.encode(): v.encode() for k, v in info.to_fields().items()}
    delegate = RunInfo("r2", "node-b", "running", "t1", "writer", "alice", 11.0, relayed_into="r1", trace_id="ab" * 16)
    delegate_fields = {k.encode(): v.encode() for k, v in delegate.to_fields().items()}

    assert RunInfo.from_fields("r1", fields) == info
    assert RunInfo.from_fields("r2", delegate_fields) == delegate
    assert "relayed_into" not in info.to_fields()
    assert "trace_id" not in info.to_fields()
    assert delegate.public()["trace_id"] == "ab" * 16
    assert RunInfo.from_fields("r1", {b"status": b"running"}) is None
    assert RunInfo.from_fields("r1", {b"node": b"a", b"created_at": b"soon"}) is None
    assert "alice" not in json.dumps(info.public())


@pytest.mark.parametrize(
    "fields",
    [
        {"last_seq": "١٢"},  # Arabic-Indic digits: int() reads them as 12
        {"last_seq": "1_000"},
        {"last_seq": " 5"},
        {"last_seq": "-3"},
        {"last_seq": "9" * 5000},
        {"created_at": "nan"},
        {"created_at": "inf"},
        {"created_at": "٣.٥"},
        {"ended_at": "1e999"},
    ],
)
def test_run_info_numbers_from_redis_are_ascii_and_finite(fields: dict[str, str]) -> None:
    # A hash another node (or anyone with access to Redis) wrote is foreign input: odd numbers make it unreadable.
    raw = {"node": "a", "status": "success", "created_at": "1.5", **fields}
    assert RunInfo.from_fields("r1", {k.encode(): v.encode() for k, v in raw.items()}) is None


@given(
    created_at=st.floats(allow_nan=False, allow_infinity=False),
    ended_at=st.none() | st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    last_seq=st.integers(min_value=0, max_value=2**59),
)
@settings(max_examples=100, deadline=None)
def test_run_info_numbers_round_trip_through_a_redis_hash(
    created_at: float, ended_at: float | None, last_seq: int
) -> None:
    info = RunInfo("r1", "node-a", "success", created_at=created_at, ended_at=ended_at, last_seq=last_seq)
    fields = {k.encode(): v.encode() for k, v in info.to_fields().items()}
    assert RunInfo.from_fields("r1", fields) == info


# -- notices reach every reader of a run, in place ------------------------------------------------------


def _items(cursor: RunCursor) -> list[object]:
    return [item.seq if isinstance(item, Frame) else item.status for item in cursor.poll()]


def test_a_run_wide_notice_is_read_in_place_by_every_cursor() -> None:
    log = RunLog("r1", 100)
    for seq in (1, 2, 3):
        log.append(token(seq))
    early = RunCursor(log)
    assert _items(early) == [1, 2, 3]
    late = RunCursor(log, 1)
    log.add_notice(notice())
    log.append(token(4))
    joined_after = RunCursor(log, 4)

    assert _items(early) == ["missed", 4]
    assert _items(late) == [2, 3, "missed", 4]
    assert _items(RunCursor(log)) == [1, 2, 3, "missed", 4]
    assert _items(joined_after) == []
    assert _items(early) == []


def test_the_run_store_routes_notices_to_known_runs_only() -> None:
    store = RunStore()
    store.sink(token(1))
    store.sink(notice("r1"))
    store.sink(notice("unknown"))

    record = store.peek("r1")
    assert record is not None and len(record.log.notices) == 1
    assert store.peek("unknown") is None


def test_adopted_runs_join_their_thread_in_start_order() -> None:
    store = RunStore()
    store.adopt("late", thread_id="t", node="b", created_at=30.0)
    store.adopt("early", thread_id="t", node="b", created_at=10.0)
    store.adopt("middle", thread_id="t", node="b", created_at=20.0, principal="ignored: the thread's owner stays")
    thread = store.peek_thread("t")

    assert thread is not None and list(thread.runs) == ["early", "middle", "late"]
    assert store.adopt("late", node="c") is store.peek("late")
    assert store.forget("late") and not store.forget("late")


# -- bus interest ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_bus_reports_the_first_and_last_subscription_of_a_run_or_thread() -> None:
    changes: list[tuple[str, str, bool]] = []
    async with EventBus() as bus:
        remove = bus.add_interest_listener(lambda kind, key, present: changes.append((kind, key, present)))
        one = bus.subscribe(run_id="r1")
        two = bus.subscribe(run_id="r1")
        thread = bus.subscribe(thread_id="t1")
        bus.subscribe(topics="agent:*").close()
        one.close()
        two.close()
        thread.close()
        remove()
        bus.subscribe(run_id="r2")

    assert changes == [("run", "r1", True), ("thread", "t1", True), ("run", "r1", False), ("thread", "t1", False)]


@pytest.mark.asyncio
async def test_broadcasts_reach_topic_and_catch_all_subscriptions_but_no_sink() -> None:
    from kiki_events.events import AgentLifecycleEvent

    sunk: list[object] = []
    async with EventBus() as bus:
        bus.add_sink(sunk.append)
        topic = bus.subscribe(topics="agent:started")
        everything = bus.subscribe()
        by_run = bus.subscribe(run_id="r1")
        bus.broadcast(AgentLifecycleEvent(run_id="r1", seq=2, ts=1.0, phase="started", agent="x"))
        bus.deliver([token(3)], topics=False)

        assert (len(topic), len(everything), len(by_run)) == (1, 2, 1)
        assert sunk == [token(3)]


# -- settings --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("eventbus", "message"),
    [
        ({"publish": {"flush_interval": "2s"}}, "flush_interval"),
        ({"publish": {"batch_size": 0}}, "batch_size"),
        ({"publish": {"outbox_size": 0}}, "outbox_size"),
        ({"publish": {"max_message_bytes": 100}}, "max_message_bytes"),
        ({"persistence": {"run_ttl": "10ms"}}, "run_ttl"),
        ({"subscribe": {"interest_linger": "-1s"}}, "interest_linger"),
        ({"provider": "kafka"}, "not supported yet"),
    ],
)
def test_bad_bridge_settings_are_refused_before_anything_starts(eventbus: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_mapping({"eventbus": eventbus})


@pytest.mark.parametrize("addr", ["redis:²", "redis:６３７９", "redis:65536", "redis:123456", "redis:", ":6379"])
def test_a_redis_addr_needs_an_ascii_port_in_range(addr: str) -> None:
    from kiki_events.redis.client import connection_url

    with pytest.raises(ConfigError, match=r"eventbus\.redis\.addr"):
        connection_url(Settings.from_mapping({"eventbus": {"redis": {"addr": addr}}}).eventbus.redis)


def test_the_redis_reference_configs_load() -> None:
    from kiki_events.config import load_settings
    from tests.conftest import ROOT

    pubsub = load_settings(ROOT / "config" / "redis.yaml", environ={"REDIS_URL": "rediss://u:pw@h:6380/1"})
    streams = load_settings(ROOT / "config" / "streams.yaml", environ={})

    assert (pubsub.eventbus.provider, pubsub.eventbus.redis.mode) == ("redis", "pubsub")
    assert pubsub.eventbus.redis.url == "rediss://u:pw@h:6380/1"
    assert (streams.eventbus.redis.mode, streams.eventbus.redis.url) == ("streams", None)
    assert streams.eventbus.persistence.enabled


# -- no secret in logs or /healthz ----------------------------------------------------------------------------


def test_the_redis_password_never_appears_in_healthz_metrics_or_logs(
    research_team: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    from kiki_events.server import create_app

    secret = "s3cr3t-redis-pw"
    port = free_port()  # nothing listens: the bridge keeps reconnecting
    settings = Settings.from_mapping(
        {
            "node": "lonely",
            "eventbus": {
                "provider": "redis",
                "redis": {"url": f"redis://kiki:{secret}@127.0.0.1:{port}/0", "password": secret},
                "publish": {"timeout": "0.5s"},
            },
        }
    )
    caplog.set_level(logging.DEBUG, logger="kiki_events")
    app = create_app(settings, graphs={"team": research_team.build_graph(token_delay=0.0)})
    with live_server(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        frames = read_stream(client, "POST", "/runs/stream", json={"graph": "team", "message": "hi"})
        wait_for(lambda: client.get("/healthz").json()["bridge"]["outbox"] > 0, what="events waiting in the outbox")
        health = client.get("/healthz")
        metrics = client.get("/metrics").text

    assert frames[-1].event == "done"  # the node serves its own run without Redis
    bridge = health.json()["bridge"]
    assert bridge["state"] in ("connecting", "reconnecting")
    assert bridge["url"] == f"redis://kiki@127.0.0.1:{port}/0"
    assert secret not in health.text
    assert secret not in metrics
    assert 'kiki_bridge_up{transport="redis-pubsub"} 0.0' in metrics
    assert all(secret not in record.getMessage() for record in caplog.records)
    assert any("cannot publish" in record.getMessage() for record in caplog.records)


@pytest.mark.asyncio
async def test_a_runtime_without_a_transport_has_no_bridge_and_nothing_changes() -> None:
    from kiki_events.runtime import KikiRuntime

    async with KikiRuntime(Settings()) as runtime:
        assert runtime.bridge is None
        run = DoneEvent(run_id="r9", seq=1, ts=1.0, status="success")
        runtime.bus.publish(run)
        await asyncio.sleep(0)
        assert [e async for e in runtime.follow("r9")] == [run]
