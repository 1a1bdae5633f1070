"""Bad client input on a real uvicorn server: a 4xx naming the problem, never a 500 or a dropped connection."""

from __future__ import annotations

import gc
import json
import socket
from collections.abc import Iterator
from types import ModuleType
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Header, HTTPException
from hypothesis import given, settings
from hypothesis import strategies as st

from kiki_events.server import create_app
from kiki_events.server.requests import parse_cursor, split_cursor
from tests.servers import LiveServer, live_server, read_stream

UNICODE_DIGITS = ["①", "²", "❺", "٣", "¹²"]


@pytest.fixture(scope="module")
def server(research_team: ModuleType) -> Iterator[LiveServer]:
    app = create_app(graphs={"team": research_team.build_graph(token_delay=0.0)})
    with live_server(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def finished(server: LiveServer) -> dict[str, Any]:
    """A run that ended, with its thread: ``run_id``, ``thread_id``, ``last`` (its last event id)."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        frames = read_stream(client, "POST", "/runs/stream", json={"graph": "team", "message": "Compare queues"})
        last = frames[-1].id
        assert last is not None and frames[-1].event == "done"
        run_id = last.rpartition(":")[0]
        thread_id = client.get(f"/runs/{run_id}").json()["thread_id"]
    return {"run_id": run_id, "thread_id": thread_id, "last": last}


class RawConnection:
    """One keep-alive HTTP/1.1 connection written byte by byte (httpx refuses non-ASCII header values)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def request(self, target: bytes, headers: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        self.sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: test\r\n" + headers + b"\r\n")
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        fields = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        size = int(fields.get("content-length", "0"))
        while len(self.buffer) < size:
            self._read()
        body, self.buffer = self.buffer[:size], self.buffer[size:]
        return int(status_line.split()[1]), fields, body

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the server closed the connection; unread: {self.buffer!r}")
        self.buffer += chunk


def _paths(finished: dict[str, Any]) -> list[str]:
    return [f"/runs/{finished['run_id']}/stream", f"/threads/{finished['thread_id']}/stream"]


@pytest.mark.parametrize("digits", UNICODE_DIGITS)
@pytest.mark.parametrize("endpoint", ["run", "thread"])
def test_unicode_digits_in_last_event_id_query_are_400_naming_the_seq(
    server: LiveServer, finished: dict[str, Any], endpoint: str, digits: str
) -> None:
    path = _paths(finished)[endpoint == "thread"]
    with httpx.Client(base_url=server.url, timeout=10) as client:
        bad = client.get(path, params={"last_event_id": f"{finished['run_id']}:{digits}"})
        assert bad.status_code == 400, bad.text
        detail = bad.json()["detail"]
        assert "last_event_id" in detail and "ASCII digits" in detail, detail
        # The same connection keeps serving.
        assert client.get("/healthz").status_code == 200
        assert client.get(path, params={"last_event_id": f"{finished['run_id']}:"}).status_code == 400


@pytest.mark.parametrize("raw", [b"\xb2", b"\xb9\xb2", b"\xb3", b"1\xb3"])
@pytest.mark.parametrize("endpoint", ["run", "thread"])
def test_non_ascii_bytes_in_the_last_event_id_header_are_400_on_the_same_connection(
    server: LiveServer, finished: dict[str, Any], endpoint: str, raw: bytes
) -> None:
    path = _paths(finished)[endpoint == "thread"].encode()
    connection = RawConnection(server.port)
    try:
        header = b"Last-Event-ID: " + finished["run_id"].encode() + b":" + raw + b"\r\n"
        status, fields, body = connection.request(path, header)
        assert status == 400, body
        assert fields["content-type"] == "application/json"
        detail = json.loads(body)["detail"]
        assert "Last-Event-ID" in detail and "ASCII digits" in detail, detail
        status, _, body = connection.request(b"/healthz")
        assert status == 200, body
    finally:
        connection.close()


def test_a_bare_unicode_seq_in_the_header_is_400_and_a_valid_cursor_still_resumes(
    server: LiveServer, finished: dict[str, Any]
) -> None:
    run_path = _paths(finished)[0].encode()
    connection = RawConnection(server.port)
    try:
        status, _, body = connection.request(run_path, b"Last-Event-ID: \xb2\r\n")
        assert status == 400 and b"ASCII digits" in body, body
        status, _, body = connection.request(run_path, b"Last-Event-ID: " + finished["last"].encode() + b"\r\n")
        assert status == 204, body
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("value", "status", "fragment"),
    [
        (b"\xb2", 400, "ASCII digits"),
        (b"\xd9\xa3", 400, "ASCII digits"),
        (b"-1", 400, "ASCII digits"),
        (b"9" * 5000, 413, "larger than the limit"),
        (b"0" * 5000 + b"2", 422, "not valid JSON"),
    ],
)
@pytest.mark.asyncio
async def test_content_length_is_ascii_digits_and_bounded(
    research_team: ModuleType, value: bytes, status: int, fragment: str
) -> None:
    # uvicorn's HTTP parsers refuse such a header before the app sees it; other ASGI servers may not,
    # so the app is called directly.
    app = create_app(graphs={"team": research_team.build_graph(token_delay=0.0)})
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/runs",
        "raw_path": b"/runs",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json"), (b"content-length", value)],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == status
    assert fragment in json.loads(sent[1]["body"])["detail"]


@pytest.mark.parametrize("where", ["header", "query"])
def test_a_thread_cursor_with_a_run_id_longer_than_any_run_id_is_400(
    server: LiveServer, finished: dict[str, Any], where: str
) -> None:
    # Found by the schema fuzzer: the thread stream built a notice for the unknown run id, which failed validation.
    cursor = "r" * 200 + ":5"
    with httpx.Client(base_url=server.url, timeout=10) as client:
        kwargs: dict[str, Any] = {"headers": {"Last-Event-ID": cursor}} if where == "header" else {}
        if where == "query":
            kwargs["params"] = {"last_event_id": cursor}
        bad = client.get(_paths(finished)[1], **kwargs)
        assert bad.status_code == 400, bad.text
        assert "longer than 128 characters" in bad.json()["detail"]


def test_an_auth_hook_with_a_required_header_gets_a_422_naming_it(research_team: ModuleType) -> None:
    def api_key(x_api_key: Annotated[str, Header()]) -> str:
        return f"key-{x_api_key}"

    app = create_app(graphs={"team": research_team.build_graph(token_delay=0.0)}, auth=api_key)
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        missing = client.get("/graphs")
        assert missing.status_code == 422
        assert missing.json() == {"detail": "header.x-api-key: Field required"}
        assert client.get("/graphs", headers={"X-Api-Key": "k"}).json() == {"graphs": ["team"]}


# -- Last-Event-ID parsing, as properties ------------------------------------------------------------


def _cursor_or_error(value: str) -> tuple[str, int] | ValueError | None:
    """``split_cursor(value)``; any exception other than ValueError fails the test."""
    try:
        return split_cursor(value)
    except ValueError as exc:
        return exc


_cursor_text = st.one_of(
    st.text(max_size=300),
    st.builds("{}:{}".format, st.text(max_size=140), st.text(max_size=25)),
    # Anything Unicode calls a digit or a number: "²", "①", "❺", "٣", "𝟘" …
    st.builds("{}:{}".format, st.text(max_size=20), st.text(st.characters(categories=["Nd", "No"]), max_size=20)),
    st.builds("{}:{}".format, st.text(max_size=20), st.integers(min_value=-5, max_value=10**25)),
)


@given(st.one_of(_cursor_text, st.binary(max_size=300).map(lambda raw: raw.decode("latin-1"))))
@settings(max_examples=500, deadline=None)
def test_any_last_event_id_is_a_cursor_or_a_value_error_naming_it(value: str) -> None:
    # Header bytes reach the app decoded as latin-1, so the binary case is what a raw header can hold.
    result = _cursor_or_error(value)
    if isinstance(result, ValueError):
        assert "Last-Event-ID" in str(result)
        with pytest.raises(HTTPException) as refused:
            parse_cursor(value)
        assert refused.value.status_code == 400 and refused.value.detail == str(result)
        return
    if result is None:
        assert value == ""
        return
    run_id, seq = result
    before, _, digits = value.rpartition(":")
    assert run_id == before and len(run_id) <= 128
    assert digits.isascii() and digits.isdigit() and int(digits) == seq < 10**18


@given(
    st.text(min_size=1, max_size=128) | st.just(""),
    st.integers(min_value=0, max_value=10**18 - 1),
)
@settings(max_examples=300, deadline=None)
def test_valid_cursors_round_trip(run_id: str, seq: int) -> None:
    assert split_cursor(f"{run_id}:{seq}" if run_id else str(seq)) == (run_id, seq)


def test_a_one_value_query_parameter_given_twice_is_422_naming_it(server: LiveServer, finished: dict[str, Any]) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        twice = client.get("/events", params=[("until", "1"), ("until", "2")])
        stream = client.get(f"/runs/{finished['run_id']}/stream", params=[("format", "kiki"), ("format", "agui")])
        listed = client.get("/runs", params=[("status", "success"), ("status", "error")])  # a list: fine

    assert (twice.status_code, twice.json()["detail"]) == (422, "query.until: given more than once; give one value")
    assert stream.status_code == 422 and stream.json()["detail"].startswith("query.format:")
    assert listed.status_code == 200 and finished["run_id"] in [r["run_id"] for r in listed.json()["runs"]]


def test_which_query_parameters_take_one_value_is_known_per_route_of_each_app() -> None:
    """Apps made one after another in one process, with routes of the same path but other parameters."""
    from fastapi import Depends, FastAPI, Query
    from fastapi.testclient import TestClient

    from kiki_events.server.requests import refuse_repeated_query

    def app_with(tag_type: Any) -> FastAPI:
        app = FastAPI(dependencies=[Depends(refuse_repeated_query)])

        def items(tag: Any = None) -> dict[str, Any]:
            return {"tag": tag}

        items.__annotations__ = {"tag": Annotated[tag_type, Query()], "return": dict[str, Any]}
        app.add_api_route("/items", items)
        return app

    for round_ in range(20):  # each app is dropped before the next is made (the memory of its routes is reused)
        with TestClient(app_with(list[str] | None)) as client:
            assert client.get("/items", params=[("tag", "a"), ("tag", "b")]).json() == {"tag": ["a", "b"]}
        del client
        gc.collect()
        one = app_with(str | None)
        with TestClient(one) as client:
            refused = client.get("/items", params=[("tag", "a"), ("tag", "b")])
            assert refused.status_code == 422, round_
            assert refused.json()["detail"] == "query.tag: given more than once; give one value"
            assert client.get("/items", params={"tag": "a"}).json() == {"tag": "a"}
        del client, one
        gc.collect()
