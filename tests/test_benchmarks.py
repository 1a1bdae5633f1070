"""The cross-node benchmarks run end to end (small numbers; their figures are not judged here)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kiki_events.config import Settings
from kiki_events.events import StreamEvent
from kiki_events.heap import SERVING_THRESHOLDS, freeze_startup_heap, tune_collector
from kiki_events.sinks import Sink
from tests.processes import dying_with_us
from tests.redis_server import REQUIRE_ENV
from tests.servers import wait_for

ROOT = Path(__file__).resolve().parent.parent


def test_freeze_startup_heap_moves_live_objects_out_of_the_collectors_reach() -> None:
    kept = [object() for _ in range(1000)]
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count()
        assert frozen >= 1000
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
    assert len(kept) == 1000


def test_tune_collector_sets_the_serving_thresholds_and_returns_the_previous_ones() -> None:
    before = gc.get_threshold()
    try:
        assert tune_collector() == before
        assert gc.get_threshold() == SERVING_THRESHOLDS
        assert tune_collector((1000, 5, 5)) == SERVING_THRESHOLDS
        assert gc.get_threshold() == (1000, 5, 5)
    finally:
        gc.set_threshold(*before)


@pytest.mark.parametrize("thresholds", [(0, 10, 10), (700, -1, 10), (700, 10)])
def test_tune_collector_refuses_thresholds_that_are_not_three_positive_numbers(thresholds: Any) -> None:
    before = gc.get_threshold()
    with pytest.raises(ValueError, match="three positive numbers"):
        tune_collector(thresholds)
    assert gc.get_threshold() == before


def _needs_redis_server() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail("redis-server is not on PATH")
        pytest.skip("redis-server is not on PATH")


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["pubsub", "streams"])
def test_bridge_benchmark_delivers_every_event_and_writes_its_figures(tmp_path: Path, mode: str) -> None:
    _needs_redis_server()
    out = tmp_path / "bridge.json"
    command = [sys.executable, "benchmarks/bridge.py", "--rounds", "1", "--events", "3000", "--rate", "1000",
               "--seconds", "1.5", "--mode", mode, "--out", str(out)]  # fmt: skip
    result = subprocess.run(dying_with_us(command), cwd=ROOT, capture_output=True, text=True, timeout=220, check=False)
    assert result.returncode == 0, result.stderr[-3000:]

    figures = json.loads(out.read_text())
    assert figures["mode"] == mode
    assert figures["heap_frozen"] is True
    p2, p3 = figures["P2"], figures["P3"]
    assert p2["lost"]["kiki"] == 0
    assert p2["lost"]["transport"] == 0
    assert p2["events_per_s"] > 0 and p2["anchor_events_per_s"] > 0
    assert p2["ratio"] == pytest.approx(p2["per_round"]["kiki"][0] / p2["per_round"]["anchor"][0], rel=0.01)
    assert 0 < p3["p50_ms"] <= p3["p99_ms"]
    assert "P2 ratio" in result.stdout and "P3 at 1,000 events/s" in result.stdout


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.timeout(180)
def test_handoff_benchmark_measures_delegates_against_the_redis_floor(tmp_path: Path) -> None:
    _needs_redis_server()
    out = tmp_path / "handoff.json"
    command = [sys.executable, "benchmarks/handoff.py", "--rounds", "20", "--background", "3", "--concurrent", "5",
               "--out", str(out)]  # fmt: skip
    result = subprocess.run(dying_with_us(command), cwd=ROOT, capture_output=True, text=True, timeout=160, check=False)
    assert result.returncode == 0, result.stderr[-3000:]

    figures = json.loads(out.read_text())
    assert figures["rounds"] == 20
    for part in ("anchor", "sequential", "with_others_waiting"):
        assert 0 < figures[part]["p50_ms"] <= figures[part]["p99_ms"], part
    assert figures["with_others_waiting"]["waiting"] == 3
    assert figures["concurrent"] == {
        "delegates": 5,
        "median_batch_ms": pytest.approx(figures["concurrent"]["median_batch_ms"]),
    }
    assert figures["concurrent"]["median_batch_ms"] > 0
    assert figures["ratio_p50"] == pytest.approx(
        figures["sequential"]["p50_ms"] / figures["anchor"]["p50_ms"], rel=0.02
    )


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


_KILLED_PARENT = """
import sys, time
sys.path.insert(0, sys.argv[1])
from benchmarks._common import PrivateRedis
from tests.redis_server import RedisServer
print(PrivateRedis().process.pid, RedisServer().start().process.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.redis
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="dying with the parent is Linux's PR_SET_PDEATHSIG")
def test_private_redis_servers_die_with_their_parent_even_when_it_is_killed() -> None:
    _needs_redis_server()
    parent = subprocess.Popen([sys.executable, "-c", _KILLED_PARENT, str(ROOT)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        servers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(servers) == 2 and all(_running(pid) for pid in servers)
    finally:
        parent.kill()  # SIGKILL: no finally, no atexit runs in it
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
    wait_for(lambda: not any(_running(pid) for pid in servers), what="the redis-servers to die with their parent")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_fanout_benchmark_delivers_every_event_to_every_client_and_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "fanout.json"
    command = [sys.executable, "benchmarks/fanout.py", "--rounds", "1", "--tokens", "600", "--clients", "5",
               "--idle", "20", "--batch", "50", "--out", str(out)]  # fmt: skip
    result = subprocess.run(dying_with_us(command), cwd=ROOT, capture_output=True, text=True, timeout=160, check=False)
    assert result.returncode == 0, result.stderr[-3000:]

    figures = json.loads(out.read_text())
    p4, p6 = figures["P4"], figures["P6"]
    assert p4["lost"] == {"ours": 0, "anchor": 0}
    assert p4["errors"] == {"ours": [], "anchor": []}
    assert p4["lagging"] == 0
    assert p4["frames_per_s"] > 0 and p4["anchor_frames_per_s"] > 0
    assert p4["ratio"] == pytest.approx(p4["ratio_per_round"][0], rel=0.01)
    assert p6["clients"] == 20 and p6["rss_after_kb"] > 0 and p6["anchor"]["clients"] == 20
    assert "P4 ours / anchor" in result.stdout and "P6 20 idle clients" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_load_benchmark_completes_runs_without_errors_and_retries_after_429(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    # One run at a time for three clients: the requests sent beside the first get 429 and retry.
    command = [sys.executable, "benchmarks/load.py", "--clients", "3", "--seconds", "2", "--alone", "1",
               "--token-delay", "0.01", "--max-active", "1", "--out", str(out)]  # fmt: skip
    result = subprocess.run(dying_with_us(command), cwd=ROOT, capture_output=True, text=True, timeout=160, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    figures = json.loads(out.read_text())
    load = figures["load"]
    assert figures["clients"] == 3 and figures["max_active"] == 1
    assert load["errors"] == 0, load["error_kinds"]
    assert load["runs"] >= 1
    assert load["limited_429"] >= 1
    assert load["events"] >= load["runs"] * 10
    assert 0 < load["p50_s"] <= load["p90_s"] <= load["p99_s"] <= load["max_s"]
    assert figures["alone_s"] > 0
    assert figures["ratio_p50"] == pytest.approx(load["p50_s"] / figures["alone_s"], rel=0.02)
    assert load["cpu"]["server_s"] > 0 and load["cpu"]["clients_s"] > 0
    assert "p50 under load / alone" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_capture_benchmark_measures_p1_on_both_graph_shapes(tmp_path: Path) -> None:
    out = tmp_path / "capture.json"
    command = [sys.executable, "benchmarks/capture.py", "--rounds", "2", "--tokens", "50", "--workers", "2",
               "--short-tokens", "5", "--runs", "2", "--out", str(out)]  # fmt: skip
    result = subprocess.run(dying_with_us(command), cwd=ROOT, capture_output=True, text=True, timeout=160, check=False)
    assert result.returncode == 0, result.stderr[-3000:]

    figures = json.loads(out.read_text())
    long, short = figures["graphs"]["long"], figures["graphs"]["short"]
    assert (long["llm_calls_per_run"], long["tokens_per_call"], long["runs_per_round"]) == (2, 50, 1)
    assert (short["llm_calls_per_run"], short["tokens_per_call"], short["runs_per_round"]) == (5, 5, 2)
    # messages: one item per streamed chunk (the text chunks and the final usage chunk of each call).
    assert long["items_per_run"]["messages"] == 2 * (50 + 1)
    assert short["items_per_run"]["messages"] == 5 * (5 + 1)
    # kiki: started + 2 lifecycle events per node + one llm event per call + the tokens + done.
    assert long["items_per_run"]["kiki"] == 1 + 2 * 2 + 2 + 2 * 50 + 1
    assert short["items_per_run"]["kiki"] == 1 + 2 * 5 + 5 + 5 * 5 + 1
    for shape in (long, short):
        p1 = shape["P1"]
        assert len(p1["per_round"]) == 2
        assert p1["range"][0] <= p1["ratio"] <= p1["range"][1]
        assert p1["cpu_range"][0] <= p1["cpu_ratio"] <= p1["cpu_range"][1]
        assert all(ms > 0 for ms in shape["ms_per_run_median"].values())
    assert 0 < figures["P5"]["ratio"] < 1
    assert result.stdout.count("P1  kiki / messages") == 2 and "[short] supervisor loop, 2 workers" in result.stdout

    only_short = tmp_path / "short.json"
    command = [sys.executable, "benchmarks/capture.py", "--rounds", "1", "--graph", "short", "--tokens", "20",
               "--runs", "1", "--breakdown", "--out", str(only_short)]  # fmt: skip
    result = subprocess.run(dying_with_us(command), cwd=ROOT, capture_output=True, text=True, timeout=160, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    graphs = json.loads(only_short.read_text())["graphs"]
    assert list(graphs) == ["short"]
    items = graphs["short"]["items_per_run"]
    assert items["kiki_no_bus"] == items["kiki"] == 1 + 2 * 7 + 7 + 7 * 10 + 1
    assert items["no_handler"] == items["noop_handler"] == 0
    assert graphs["short"]["vs_messages"]["messages"] == 1.0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sinks_benchmark_prices_every_sink_and_json_logging_per_token(tmp_path: Path) -> None:
    out = tmp_path / "sinks.json"
    command = [sys.executable, "benchmarks/sinks.py", "--rounds", "2", "--tokens", "100", "--runs", "1",
               "--sink", "kiki_events.codec:encode", "--out", str(out)]  # fmt: skip
    result = subprocess.run(dying_with_us(command), cwd=ROOT, capture_output=True, text=True, timeout=160, check=False)
    assert result.returncode == 0, result.stderr[-3000:]

    figures = json.loads(out.read_text())
    # The default settings turn the Prometheus metrics on: their sink is measured, alone and with the rest;
    # they keep the history off (benchmarks/store.py measures it).
    assert figures["sinks"] == ["metrics"]
    assert figures["sinks_off_in_settings"] == ["kiki_events.sinks.history.create"]
    assert set(figures["graphs"]) == {"long", "short"}
    assert figures["graphs"]["long"]["tokens_per_round"] == 200
    assert figures["graphs"]["short"]["tokens_per_round"] == 7 * 10 * 5
    for shape in figures["graphs"].values():
        variants = shape["variants"]
        assert {"kiki", "kiki+encode", "kiki+metrics", "kiki+json-logs", "kiki+all"} <= set(variants)
        assert variants["kiki+encode"]["alone_us_per_event"] > 0
        assert variants["kiki+metrics"]["alone_us_per_event"] > 0
        assert variants["kiki"]["extra_us_per_token"] == 0
        for name, row in variants.items():
            low, high = row["extra_us_per_token_range"]
            assert low <= row["extra_us_per_token"] <= high, name
            assert row["P1"] > 0 and row["ms_per_run_median"] > 0, name
        # Every variant saw every event of every run: the sinks on the bus take nothing from the subscriber.
        counts = shape["items_per_round"]
        assert len({count for name, count in counts.items() if name.startswith("kiki")}) == 1
        assert shape["json_logs_records"] == 0  # nothing is logged per token (nor per run)
    assert "kiki+all" in result.stdout and "us/token" in result.stdout


class _CountingSink(Sink):
    name = "counting"

    def __init__(self) -> None:
        self.events = 0
        self.started = self.closed = False

    def __call__(self, event: StreamEvent) -> None:
        self.events += 1

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sinks_benchmark_measures_each_sink_that_sinks_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import sinks as bench

    built = _CountingSink()

    def off(settings: Settings) -> None:
        return None

    monkeypatch.setattr(bench, "SINKS", (lambda settings: built, off))
    args = argparse.Namespace(graph="long", rounds=2, tokens=20, runs=1, settings=None, sink=[], no_freeze=False)
    thresholds = gc.get_threshold()

    figures = asyncio.run(bench.main(args))

    assert gc.get_freeze_count() == 0 and gc.get_threshold() == thresholds  # the settled heap is undone
    long = figures["graphs"]["long"]
    assert "kiki+counting" in long["variants"] and "kiki+all" in long["variants"]
    assert long["variants"]["kiki+counting"]["alone_us_per_event"] > 0
    assert built.started and built.closed
    # Warm-up and two rounds, each one run of 1 + 2 * 2 + 2 + 2 * 20 + 1 events, for kiki+counting and for
    # kiki+all, then 15 passes over one run alone.
    assert long["items_per_round"]["kiki+counting"] == 48
    assert built.events == 2 * 3 * 48 + 15 * 48
    assert figures["sinks_off_in_settings"] == [f"{off.__module__}.{off.__qualname__}"]


def test_store_benchmark_writes_both_databases_and_measures_p1_with_the_store(
    tmp_path: Path, postgres_dsn: str
) -> None:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    out = tmp_path / "store.json"
    admin = make_conninfo(**{**conninfo_to_dict(postgres_dsn), "dbname": "postgres"})
    command = [sys.executable, "benchmarks/store.py", "--quick", "--dsn", admin, "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    backends = ("sqlite", "sqlite_synchronous_normal", "sqlite_row_per_event", "postgres", "postgres_row_per_event")
    for backend in backends:
        write = figures["write"][backend]
        assert write["ours_events_per_s"]["median"] > 0 and write["naive_events_per_s"]["median"] > 0
        assert write["ratio"]["bar"] == (None if backend.endswith("_row_per_event") else 20)
    for variant in ("kiki", "kiki+store"):
        assert figures["P1"][variant]["ratio"] > 0 and figures["P1"][variant]["bar"] == 1.15
    assert "P1 kiki+store" in done.stdout
    # The stored run was read back whole over HTTP (the benchmark checks the count) each round.
    assert figures["fetch"]["events"] == 500 and figures["fetch"]["events_jsonl_s"]["median"] > 0


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_formats_benchmark_checks_every_stream_and_prices_each_format(tmp_path: Path) -> None:
    out = tmp_path / "formats.json"
    # --peer auto: without ag-ui-langgraph (no registry, or its pins cannot be met) ours is measured alone.
    command = [sys.executable, "benchmarks/formats.py", "--rounds", "2", "--runs", "1", "--tokens", "30",
               "--peer", "auto", "--out", str(out)]  # fmt: skip
    result = subprocess.run(dying_with_us(command), cwd=ROOT, capture_output=True, text=True, timeout=400, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    figures = json.loads(out.read_text())
    assert set(figures["graphs"]) == {"long", "tools"}
    long, tools = figures["graphs"]["long"], figures["graphs"]["tools"]
    assert long["tokens_per_run"] == 2 * 30 and long["tool_calls_per_run"] == 0
    assert tools["tokens_per_run"] > 30 and tools["tool_calls_per_run"] == 2
    for shape in (long, tools):
        variants = shape["variants"]
        for name in ("kiki", "agui-1.0", "agui-0.0", "aisdk"):
            row = variants[name]
            # Every token is an event of its own in every format, and the wire carries a little more than the body.
            assert row["events_per_run"] > shape["tokens_per_run"], name
            assert row["wire_bytes_per_token"] > row["body_bytes_per_token"] > 10, name
            assert len(row["cpu_us_per_token"]["per_round"]) == 2, name
            low, high = row["cpu_us_per_token"]["range"]
            assert 0 < low <= row["cpu_us_per_token"]["median"] <= high, name
            assert shape["encoders_alone"][name]["us_per_token"] > 0, name
        assert variants["bare"]["events_per_run"] == variants["streamed"]["events_per_run"] == 0
    if "skipped" in figures["peer"]:
        assert figures["peer"]["skipped"]
        assert "P7 not measured" in result.stdout
        return
    assert "P7 agui-1.0 / peer" in result.stdout
    for shape in (long, tools):
        p7 = shape["P7"]
        assert p7["range"][0] <= p7["ratio"] <= p7["range"][1]
        assert p7["ratio"] == shape["vs_peer"]["agui-1.0/peer"]["median"]
        # The peer's default sends each LangGraph event again as RAW: far more bytes than ours.
        assert p7["bytes_ratio"] < p7["bytes_ratio_vs_lean"] < 1
        assert shape["variants"]["peer"]["events_per_run"] > shape["variants"]["peer-lean"]["events_per_run"]
    if figures["peer"]["constrained"]:
        assert figures["peer"]["versions_that_differ"] == {}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_formats_benchmark_without_its_peer_measures_ours_alone_or_stops_as_told(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = tmp_path / "formats.json"
    command = [sys.executable, "benchmarks/formats.py", "--rounds", "1", "--runs", "1", "--tokens", "10",
               "--graph", "long", "--peer-env", str(blocker / "env"), "--out", str(out)]  # fmt: skip

    alone = subprocess.run(dying_with_us([*command, "--peer", "auto"]), cwd=ROOT, capture_output=True, text=True,
                           timeout=160, check=False)  # fmt: skip
    assert alone.returncode == 0, alone.stdout[-3000:] + alone.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert str(blocker) in figures["peer"]["skipped"]
    assert "P7" not in figures["graphs"]["long"] and "peer" not in figures["graphs"]["long"]["variants"]
    assert "P7 not measured: the peer was not installed (cannot make the virtualenv" in alone.stdout

    out.unlink()
    required = subprocess.run(dying_with_us(command), cwd=ROOT, capture_output=True, text=True, timeout=160,
                              check=False)  # fmt: skip
    assert required.returncode == 1
    assert f"ag-ui-langgraph cannot be installed: cannot make the virtualenv {blocker / 'env'}" in required.stderr
    assert not out.exists()


def _without(body: bytes, needle: bytes, *, last: bool = False) -> bytes:
    """``body`` less its first SSE frame holding ``needle`` (``last``: less its last frame)."""
    frames = [frame for frame in body.split(b"\n\n") if frame]
    index = len(frames) - 1 if last else next(i for i, frame in enumerate(frames) if needle in frame)
    return b"\n\n".join(frames[:index] + frames[index + 1 :]) + b"\n\n"


def test_the_formats_benchmark_reads_each_format_whole_and_notices_what_a_stream_lacks() -> None:
    from benchmarks._formats_servers import graphs
    from benchmarks._formats_tables import ENCODERS, expected_run
    from benchmarks._streams import READERS, problems
    from kiki_events import KikiCallbackHandler
    from kiki_events.core.runlog import RunLog

    graph = graphs(12)["tools"]
    expected = expected_run(graph)
    assert len(expected.calls) == 2 and len(expected.results) == 2 and expected.tokens > 12
    events: list[StreamEvent] = []
    config: Any = {"callbacks": [KikiCallbackHandler(events.append)], "configurable": {"thread_id": "t"}}
    asyncio.run(graph.ainvoke({"messages": [{"role": "user", "content": "Compare Redis streams and pub/sub"}]}, config))
    log = RunLog(events[0].run_id, len(events))
    for event in events:
        log.append(event)
    frames, _ = log.read(0, len(events))
    lacks = {  # format → (a text token's frame, a tool argument's frame)
        "kiki": (b"event: token", b'"phase":"args"'),
        "agui": (b'"TEXT_MESSAGE_CONTENT"', b'"TOOL_CALL_ARGS"'),
        "aisdk": (b'"text-delta"', b'"tool-input-delta"'),
    }
    for name, make in ENCODERS.items():
        encoder = make()
        body = encoder.start() + encoder.encode_all(frames) + encoder.finish()
        reading = name.split("-")[0]
        read = READERS[reading]
        assert problems(reading, read(body), expected) == [], name
        token, args = lacks[reading]
        assert "texts differ" in " ".join(problems(reading, read(_without(body, token)), expected)), name
        assert "tool calls differ" in " ".join(problems(reading, read(_without(body, args)), expected)), name
        assert "does not run from" in " ".join(problems(reading, read(_without(body, b"", last=True)), expected)), name
