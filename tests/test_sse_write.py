"""The SSE write path on a real uvicorn: stalled and slow clients, slow bodies, coalesced sends.

Clients here are raw sockets or httpx clients with a small receive buffer, so the
server's sends really block the way they do for a client that stops reading.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from kiki_events.capture.handler import new_run_id
from kiki_events.config import Settings
from kiki_events.events import DoneEvent, StatusEvent, trusted_token
from kiki_events.runtime import KikiRuntime
from kiki_events.server import create_app
from tests.servers import LiveServer, SSEFrame, iter_frames, live_server, wait_for

_TCP_ESTABLISHED = 1


def _app(**sections: Any) -> FastAPI:
    return create_app(Settings.from_mapping(sections))


def _runtime(srv: LiveServer) -> KikiRuntime:
    runtime: KikiRuntime = srv.config.app.state.kiki_runtime  # type: ignore[attr-defined]
    return runtime


def _open_run(srv: LiveServer) -> str:
    """A live run on the server (its first event published), fed by the test."""
    runtime = _runtime(srv)
    _, run_id = new_run_id()

    async def open_run() -> None:
        runtime.store.create(run_id)
        runtime.bus.publish(StatusEvent(run_id=run_id, seq=1, ts=time.time(), status="started", graph="fed"))

    srv.call(open_run)
    return run_id


def _feed(srv: LiveServer, run_id: str, first: int, count: int, *, text: str = " word", done: bool = False) -> int:
    """Publish tokens ``first .. first+count-1`` (then ``done``) on the server's loop; the next seq."""
    runtime = _runtime(srv)

    async def feed() -> None:
        now = time.time()
        for seq in range(first, first + count):
            runtime.bus.publish(trusted_token(run_id, seq, now, None, "writer", None, None, "m1", text))
        if done:
            runtime.bus.publish(DoneEvent(run_id=run_id, seq=first + count, ts=now, status="success"))

    srv.call(feed)
    return first + count + (1 if done else 0)


def _tcp_state(sock: socket.socket) -> int:
    return int(struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0])


def _raw_get(srv: LiveServer, path: str, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", srv.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


def _read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(1 << 20):
        data += chunk
    return data


# -- a client that reads nothing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "size", "done"),
    [
        (3000, 4000, False),  # ~12 MB: far more than the kernel buffers of both ends hold
        (400, 10_000, True),  # ~4 MB and the run's end in one send: the body's closing send is what stalls
    ],
    ids=["mid-run", "at-the-end"],
)
def test_a_client_that_reads_nothing_is_reset_after_the_send_timeout(tokens: int, size: int, done: bool) -> None:
    send_timeout = 0.5
    with live_server(_app(sse={"send_timeout": send_timeout})) as srv:
        runtime = _runtime(srv)
        run_id = _open_run(srv)
        sock = _raw_get(srv, f"/runs/{run_id}/stream", rcvbuf=4096)
        try:
            wait_for(lambda: runtime.store.clients == 1, what="the stream to open")
            _feed(srv, run_id, 2, tokens, text="x" * size, done=done)
            wait_for(
                lambda: _tcp_state(sock) != _TCP_ESTABLISHED,
                timeout=send_timeout + 1.0,
                what="the server to drop the stalled connection",
            )
            with pytest.raises(ConnectionResetError):
                _read_to_end(sock)
        finally:
            sock.close()
        assert runtime.store.clients == 0
        assert runtime.store.stalled == 1
        wait_for(lambda: not srv.server.server_state.connections, what="uvicorn to forget the connection")
        health = httpx.get(f"{srv.url}/healthz").json()
        assert health["sse"]["stalled"] == 1
        assert 'kiki_sse_disconnects_total{reason="stalled"} 1.0' in httpx.get(f"{srv.url}/metrics").text


# -- a request body that never completes ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/runs", "/runs/stream"])
def test_a_body_shorter_than_its_content_length_gets_408_and_the_connection_closes(path: str) -> None:
    with (
        live_server(_app(server={"body_timeout": "300ms"})) as srv,
        socket.create_connection(("127.0.0.1", srv.port)) as sock,
    ):
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            '{"graph": "team", '.encode()
        )
        sock.settimeout(10)  # the answer must come by itself: failing here means the server still waits
        response = _read_to_end(sock)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), response[:200]
    assert b"connection: close" in head.lower()
    assert b"did not arrive within 0.3s (server.body_timeout)" in body


def test_body_timeout_must_be_positive() -> None:
    from kiki_events.errors import ConfigError

    with pytest.raises(ConfigError, match=r"server\.body_timeout: body_timeout must be more than 0s"):
        Settings.from_mapping({"server": {"body_timeout": 0}})


# -- a slow client beside a fast one --------------------------------------------------------------------------


def _small_buffer_client(srv: LiveServer) -> httpx.Client:
    transport = httpx.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)])
    return httpx.Client(base_url=srv.url, timeout=60, transport=transport)


def _continuous(frames: list[SSEFrame], start: int) -> bool:
    return [f.seq for f in frames] == list(range(start, start + len(frames)))


@pytest.mark.parametrize("policy", ["skip", "disconnect"])
def test_a_client_that_falls_behind_gets_the_slow_client_policy_and_the_others_get_everything(policy: str) -> None:
    backlog, batch, tokens = 1000, 200, 6000
    app = _app(sse={"max_backlog": backlog, "slow_client": policy, "send_timeout": "60s"})
    with live_server(app) as srv, _small_buffer_client(srv) as slow, httpx.Client(base_url=srv.url, timeout=60) as fast:
        runtime = _runtime(srv)
        run_id = _open_run(srv)
        url = f"/runs/{run_id}/stream"
        fast_frames: list[SSEFrame] = []
        fast_ready = threading.Event()

        def read_fast() -> None:
            with fast.stream("GET", url) as response:
                fast_ready.set()
                fast_frames.extend(iter_frames(response))

        reader = threading.Thread(target=read_fast)
        reader.start()
        with slow.stream("GET", url) as response:
            slow_iter: Iterator[SSEFrame] = iter_frames(response)
            slow_frames = [next(slow_iter)]  # the run's first event; then it stops reading
            assert fast_ready.wait(10)
            wait_for(lambda: fast_frames, what="the fast client's first frame")
            text = "y" * 2000  # ~12 MB in all: the slow client's socket fills up and its sends block
            seq = 2
            while seq < tokens + 2:
                seq = _feed(srv, run_id, seq, batch, text=text, done=seq + batch >= tokens + 2)
                wait_for(lambda last=seq - 1: fast_frames[-1].seq >= last, what=f"the fast client to get seq {seq - 1}")
            slow_frames.extend(slow_iter)
        reader.join(10)
        ended = {"completed": 2} if policy == "skip" else {"completed": 1, "slow_client": 1}
        wait_for(lambda: runtime.store.disconnects == ended, what=f"the disconnects {ended}")

    last = tokens + 2
    assert _continuous(fast_frames, 1) and fast_frames[-1].seq == last, "the fast client lost events"
    assert fast_frames[-1].event == "done"

    notices = [i for i, f in enumerate(slow_frames) if f.id is None]
    assert len(notices) == 1, [f.event for f in slow_frames if f.id is None]
    at = notices[0]
    notice = slow_frames[at].json
    assert notice["status"] == "lagging"
    assert f"more than {backlog} events behind" in notice["detail"]
    before, after = slow_frames[:at], slow_frames[at + 1 :]
    assert _continuous(before, 1)
    assert before[-1].seq < last - backlog  # it really was behind when told
    if policy == "skip":
        assert after[0].seq == notice["first_seq"] == last - backlog // 2 + 1
        assert _continuous(after, notice["first_seq"]) and after[-1].event == "done"
    else:
        assert after == []  # told, then disconnected
    assert runtime.store.lagging == 1


# -- coalescing ----------------------------------------------------------------------------------------------


def _chunks(sock: socket.socket) -> list[bytes]:
    """The HTTP chunks of a chunked response, up to its end (each one ASGI body message)."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, data = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    chunks: list[bytes] = []
    while True:
        while b"\r\n" not in data:
            data += sock.recv(65536)
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        while len(data) < size + 2:
            data += sock.recv(65536)
        if size == 0:
            return chunks
        chunks.append(data[:size])
        data = data[size + 2 :]


def test_a_backlog_goes_out_in_one_send_per_512_frames() -> None:
    with live_server(_app()) as srv:
        run_id = _open_run(srv)
        _feed(srv, run_id, 2, 1500, done=True)
        with _raw_get(srv, f"/runs/{run_id}/stream") as sock:
            chunks = _chunks(sock)
    assert chunks[0].startswith(b"retry: ")
    frames = [chunk.count(b"\n\nid: ") + chunk.startswith(b"id: ") for chunk in chunks[1:]]
    assert frames == [512, 512, 478]  # 1,502 events: three sends, not one per event
    assert b"event: done\n" in chunks[-1]
