"""Picking a stream's wire format: by name (``?format=``) or by ``Accept``, live and resumed.

A second, test-only format (JSON in SSE ``data:`` lines, with a response header and
a terminal frame counting what its stream sent) is registered next to ours; one run
is watched at once by clients of both formats through a real uvicorn server, and across
two nodes sharing a Redis.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import MappingProxyType, ModuleType
from typing import ClassVar

import httpx
import pytest

from kiki_events.config import Settings
from kiki_events.core.runlog import Frame, Item, RunLog
from kiki_events.errors import InvalidArgumentError, UnknownFormatError
from kiki_events.events import TokenEvent
from kiki_events.formats import (
    Encoder,
    Format,
    format_for_accept,
    format_names,
    get_format,
    register_format,
    unregister_format,
)
from kiki_events.formats.kiki import FORMAT as KIKI
from kiki_events.server import create_app
from tests.servers import Gate, LiveServer, SSEFrame, gated_graph, iter_frames, live_server, parse_frame

LINES_TYPE = "text/x-test-lines"
built: list[int] = []
"""Seqs the test format encoded (each should be encoded once, whoever reads it)."""


def _line(frame: Frame) -> bytes:
    built.append(frame.seq)
    event = frame.event
    body = json.dumps({"type": event.type, "seq": event.seq, "run": event.run_id})
    return f"id: {event.run_id}:{event.seq}\ndata: {body}\n\n".encode()


class _LinesEncoder(Encoder):
    """Keeps per-stream state: how many frames its stream sent, told in its terminal frame."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def encode(self, item: Item, /) -> bytes:
        if isinstance(item, Frame):
            self.count += 1
            return item.encoded(LINES, _line)
        return f"data: {json.dumps({'notice': item.status})}\n\n".encode()

    def start(self) -> bytes:
        return b"data: [BEGIN]\n\n"

    def finish(self) -> bytes:
        return f"data: [END {self.count}]\n\n".encode()


class LinesFormat(Format):
    name = "lines"
    media_type = LINES_TYPE
    accepts: ClassVar[tuple[str, ...]] = ("application/x-test-lines",)
    headers = MappingProxyType({"x-test-lines-stream": "v1"})

    def encoder(self) -> Encoder:
        return _LinesEncoder()


LINES = LinesFormat()


@pytest.fixture
def lines() -> Iterator[LinesFormat]:
    register_format(LINES)
    built.clear()
    try:
        yield LINES
    finally:
        unregister_format("lines")


# -- the registry and Accept ---------------------------------------------------------------------------


def test_a_registered_format_is_listed_after_ours_and_removed_again(lines: LinesFormat) -> None:
    assert format_names() == ["kiki", "agui", "aisdk", "lines"]
    assert get_format("lines") is lines
    register_format(lines)  # the same instance again: nothing changes

    class Impostor(LinesFormat):
        pass

    with pytest.raises(InvalidArgumentError, match="already registered"):
        register_format(Impostor())
    with pytest.raises(InvalidArgumentError, match="already registered"):
        register_format(KIKI)
    with pytest.raises(UnknownFormatError, match="register_format"):
        unregister_format("kiki")
    unregister_format("lines")
    assert format_names() == ["kiki", "agui", "aisdk"]
    with pytest.raises(UnknownFormatError, match="'lines'"):
        get_format("lines")
    register_format(lines)  # for the fixture to remove


@pytest.mark.parametrize(
    ("accept", "picked"),
    [
        (None, "kiki"),
        ("", "kiki"),
        ("*/*", "kiki"),
        ("text/event-stream", "kiki"),
        ("Text/Event-Stream; charset=utf-8", "kiki"),
        ("text/*", "kiki"),
        (LINES_TYPE, "lines"),
        ("application/x-test-lines", "lines"),
        ("application/*", "lines"),
        ("application/json, text/x-test-lines;q=0.5, */*;q=0.1", "lines"),
        ("text/x-test-lines;q=0.2, text/event-stream;q=0.9", "kiki"),
        ("text/event-stream;q=0, text/x-test-lines", "lines"),
        ("application/xml, */*;q=0.01", "kiki"),
    ],
)
def test_accept_picks_the_best_format_that_answers(lines: LinesFormat, accept: str | None, picked: str) -> None:
    assert format_for_accept(accept).name == picked


@pytest.mark.parametrize("accept", ["application/json", "text/event-stream;q=0", "garbage", "*/*;q=nope"])
def test_an_accept_nothing_answers_names_the_known_formats(lines: LinesFormat, accept: str) -> None:
    with pytest.raises(UnknownFormatError) as caught:
        format_for_accept(accept)
    message = str(caught.value)
    assert repr(accept) in message
    assert "kiki (text/event-stream)" in message and f"lines ({LINES_TYPE}, application/x-test-lines)" in message


def test_frames_memoise_each_format_separately(lines: LinesFormat) -> None:
    log = RunLog("r", 10)
    log.append(TokenEvent(run_id="r", seq=1, ts=1.0, agent="a", message_id="m", text="hi"))
    frames, _ = log.read(0, 10)
    ours, theirs = KIKI.encoder(), lines.encoder()

    first = theirs.encode(frames[0])
    assert ours.encode(frames[0]).startswith(b"id: r:1\nevent: token\n")
    assert first.startswith(b'id: r:1\ndata: {"type": "token"')
    assert lines.encoder().encode(frames[0]) is first
    assert built == [1]


# -- over HTTP -----------------------------------------------------------------------------------------


@pytest.fixture
def server(lines: LinesFormat, research_team: object) -> Iterator[tuple[LiveServer, Gate]]:
    gate = Gate()
    app = create_app(graphs={"gated": gated_graph(research_team, gate, tokens=10)})
    try:
        with live_server(app) as srv:
            yield srv, gate
    finally:
        gate.open()


def _blocks(raw: bytes) -> list[bytes]:
    """The blocks of a body, keep-alive comments left out."""
    return [block for block in raw.split(b"\n\n") if block and not block.startswith(b":")]


def _lines(raw: bytes) -> tuple[list[dict[str, object]], str]:
    """The events of a ``lines`` body (checked to open with its start frame) and its terminal frame."""
    frames = [parse_frame(block) for block in _blocks(raw)]
    assert frames[0].data == "[BEGIN]", raw[:200]
    assert frames[-1].data is not None
    return [frame.json for frame in frames[1:-1]], frames[-1].data


def _read(response: httpx.Response) -> bytes:
    assert response.status_code == 200, response.read()
    return b"".join(response.iter_raw())


def test_one_run_watched_in_two_formats_live_and_resumed(server: tuple[LiveServer, Gate]) -> None:
    srv, gate = server
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        run_id = client.post("/runs", json={"graph": "gated", "message": "x"}).json()["run_id"]
        url = f"/runs/{run_id}/stream"
        with client.stream("GET", url) as ours, client.stream("GET", url, params={"format": "lines"}) as theirs:
            assert gate.reached.wait(30)
            gate.open()
            ours_raw, theirs_raw = _read(ours), _read(theirs)
            ours_headers, theirs_headers = ours.headers, theirs.headers

        assert ours_headers["content-type"].startswith("text/event-stream")
        assert "x-test-lines-stream" not in ours_headers
        assert theirs_headers["content-type"].startswith(LINES_TYPE)
        assert theirs_headers["x-test-lines-stream"] == "v1"
        for headers in (ours_headers, theirs_headers):
            assert headers["x-kiki-run-id"] == run_id and headers["cache-control"] == "no-store"

        kiki_frames: list[SSEFrame] = [parse_frame(block) for block in _blocks(ours_raw)[1:]]
        assert ours_raw.startswith(b"retry: 2000\n\n")
        assert kiki_frames[-1].event == "done"
        events, end = _lines(theirs_raw)
        last = len(kiki_frames)
        assert [(e["seq"], e["type"], e["run"]) for e in events] == [(f.seq, f.event, run_id) for f in kiki_frames]
        assert [e["seq"] for e in events] == list(range(1, last + 1))
        assert end == f"[END {last}]"
        assert not theirs_raw.startswith(b"retry:")

        # The default, asked for every way, is byte for byte what a client asking nothing got.
        for kwargs in ({"params": {"format": "kiki"}}, {"headers": {"Accept": "text/event-stream"}}, {}):
            with client.stream("GET", url, **kwargs) as again:
                assert _blocks(_read(again)) == _blocks(ours_raw)

        # Resumed after a Last-Event-ID, in each format (by name, by Accept).
        cut = last // 2
        resumes = {
            "lines-by-name": {"params": {"format": "lines"}, "headers": {"Last-Event-ID": f"{run_id}:{cut}"}},
            "lines-by-accept": {"params": {"last_event_id": str(cut)}, "headers": {"Accept": LINES_TYPE}},
            "kiki": {"headers": {"Last-Event-ID": f"{run_id}:{cut}"}},
        }
        bodies = {}
        for name, kwargs in resumes.items():
            with client.stream("GET", url, **kwargs) as resumed:
                bodies[name] = _read(resumed)
                assert resumed.headers.get("x-test-lines-stream") == ("v1" if name != "kiki" else None)
        for name in ("lines-by-name", "lines-by-accept"):
            events, end = _lines(bodies[name])
            assert [e["seq"] for e in events] == list(range(cut + 1, last + 1))
            assert end == f"[END {last - cut}]"
        assert _blocks(bodies["kiki"])[1:] == _blocks(ours_raw)[1 + cut :]

    # Each event was encoded once in the test format, for all three of its clients.
    assert sorted(built) == list(range(1, last + 1))


def test_a_thread_stream_in_the_other_format(server: tuple[LiveServer, Gate]) -> None:
    srv, gate = server
    gate.open()
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        started = client.post("/runs", json={"graph": "gated", "message": "x"}).json()
        url = f"/threads/{started['thread_id']}/stream"
        with client.stream("GET", url, headers={"Accept": "application/x-test-lines"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith(LINES_TYPE)
            assert response.headers["x-test-lines-stream"] == "v1"
            seen = []
            for frame in iter_frames(response, events_only=False):
                if frame.data is None or frame.data == "[BEGIN]":
                    continue
                seen.append(frame.json)
                if seen[-1].get("type") == "done":
                    break
    assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
    assert {e["run"] for e in seen} == {started["run_id"]}


def test_a_thread_stream_as_agui_carries_every_run_and_as_aisdk_ends_after_its_first(research_team: ModuleType) -> None:
    app = create_app(graphs={"team": research_team.build_graph(token_delay=0.0)})
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        run_ids = []
        for message in ("Compare queues", "Compare logs"):
            body = {"graph": "team", "message": message, "thread_id": "both"}
            with client.stream("POST", "/runs/stream", json=body) as response:
                _read(response)
                run_ids.append(response.headers["x-kiki-run-id"])
        agui: list[dict[str, object]] = []
        with client.stream("GET", "/threads/both/stream", params={"format": "agui"}) as response:
            for frame in iter_frames(response, events_only=False):
                if frame.data is not None:
                    agui.append(frame.json)
                if [e["type"] for e in agui].count("RUN_FINISHED") == 2:
                    break  # the thread's stream goes on: the client leaves
        with client.stream("GET", "/threads/both/stream", params={"format": "aisdk"}) as response:
            aisdk = _blocks(_read(response))  # ends by itself

    assert [e["runId"] for e in agui if e["type"] == "RUN_STARTED"] == run_ids
    assert [e["type"] for e in agui].count("RUN_STARTED") == 2 and agui[-1]["type"] == "RUN_FINISHED"
    assert aisdk[-1] == b"data: [DONE]"
    parts = [json.loads(block[6:]) for block in aisdk[:-1]]
    assert parts[0] == {"type": "start", "messageId": run_ids[0]} and parts[-1]["type"] == "finish"
    assert [p["type"] for p in parts].count("finish") == 1


@pytest.mark.parametrize("path", ["/runs/{run_id}/stream", "/threads/{thread_id}/stream"])
def test_an_unknown_format_is_refused_naming_the_known_ones(server: tuple[LiveServer, Gate], path: str) -> None:
    srv, gate = server
    gate.open()
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        started = client.post("/runs", json={"graph": "gated", "message": "x"}).json()
        url = path.format(**started)
        by_name = client.get(url, params={"format": "nope"})
        by_accept = client.get(url, headers={"Accept": "application/xml"})
        name_wins = client.get(url, params={"format": "nope"}, headers={"Accept": LINES_TYPE})

    assert by_name.status_code == 400 == name_wins.status_code
    assert "'nope'" in by_name.json()["detail"] and "kiki, agui, aisdk, lines" in by_name.json()["detail"]
    assert by_accept.status_code == 406
    detail = by_accept.json()["detail"]
    assert "'application/xml'" in detail and "kiki (text/event-stream)" in detail and "lines (" in detail


def test_a_run_started_and_streamed_in_another_format_and_a_refused_format_starts_nothing(
    server: tuple[LiveServer, Gate],
) -> None:
    srv, gate = server
    gate.open()
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        with client.stream(
            "POST", "/runs/stream", json={"graph": "gated", "message": "x"}, params={"format": "lines"}
        ) as response:
            raw = _read(response)
            run_id = response.headers["x-kiki-run-id"]
        refused = client.post(
            "/runs/stream", json={"graph": "gated", "message": "x"}, headers={"Accept": "application/xml"}
        )
        unknown = client.post("/runs/stream", json={"graph": "gated", "message": "x"}, params={"format": "nope"})
        metrics = client.get("/metrics").text

    events, end = _lines(raw)
    assert {e["run"] for e in events} == {run_id} and events[-1]["type"] == "done"
    assert end == f"[END {len(events)}]"
    assert (refused.status_code, unknown.status_code) == (406, 400)
    assert 'kiki_runs_total{graph="gated",status="success"} 1.0' in metrics  # only the streamed run ran


def test_the_schema_documents_the_format_parameter(lines: LinesFormat) -> None:
    paths = create_app(graphs={}).openapi()["paths"]
    assert "406" in paths["/runs/stream"]["post"]["responses"]
    assert [p["name"] for p in paths["/runs/stream"]["post"]["parameters"]] == ["format"]
    for path in ("/runs/{run_id}/stream", "/threads/{thread_id}/stream"):
        operation = paths[path]["get"]
        (param,) = [p for p in operation["parameters"] if p["name"] == "format"]
        assert param["in"] == "query" and not param["required"]
        assert param["schema"]["enum"] == ["kiki", "agui", "aisdk", "lines"]
        assert "406" in operation["responses"]


# -- across nodes ----------------------------------------------------------------------------------------


@pytest.mark.redis
def test_a_run_on_one_node_is_watched_and_resumed_on_another_in_either_format(
    lines: LinesFormat, research_team: object, redis_url: str, key_prefix: str
) -> None:
    gate = Gate()

    def node(name: str) -> object:
        settings = Settings.from_mapping(
            {
                "node": name,
                "eventbus": {"provider": "redis", "redis": {"url": redis_url, "channel_prefix": key_prefix}},
            }
        )
        return create_app(settings, graphs={"gated": gated_graph(research_team, gate, tokens=10)})

    try:
        with (
            live_server(node("fmt-a")) as a,
            live_server(node("fmt-b")) as b,
            httpx.Client(base_url=a.url, timeout=30) as on_a,
            httpx.Client(base_url=b.url, timeout=30) as on_b,
        ):
            run_id = on_a.post("/runs", json={"graph": "gated", "message": "x"}).json()["run_id"]
            url = f"/runs/{run_id}/stream"
            assert gate.reached.wait(30)
            assert on_b.get(f"/runs/{run_id}").json()["node"] == "fmt-a"
            with on_b.stream("GET", url, params={"format": "lines"}) as theirs, on_b.stream("GET", url) as ours:
                gate.open()
                theirs_raw, ours_raw = _read(theirs), _read(ours)
                assert theirs.headers["x-test-lines-stream"] == "v1"
            with on_a.stream("GET", url) as home:
                home_blocks = _blocks(_read(home))
            with on_b.stream("GET", url, params={"format": "lines"}, headers={"Last-Event-ID": f"{run_id}:3"}) as r:
                resumed, resumed_end = _lines(_read(r))
    finally:
        gate.open()

    assert _blocks(ours_raw) == home_blocks  # the other node serves our format byte for byte
    seqs = [parse_frame(block).seq for block in home_blocks[1:]]
    events, end = _lines(theirs_raw)
    assert [e["seq"] for e in events] == seqs == list(range(1, len(seqs) + 1))
    assert end == f"[END {len(seqs)}]"
    assert [e["seq"] for e in resumed] == seqs[3:]
    assert resumed_end == f"[END {len(seqs) - 3}]"
