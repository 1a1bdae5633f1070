"""Real servers for tests: uvicorn in a background thread, and an SSE frame parser.

SSE tests read from a real uvicorn server over HTTP: httpx's ASGITransport
buffers whole bodies and hangs on endless streams.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import uvicorn

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0
"""How long a test waits for a condition: generous, since it returns as soon as the condition holds
(a busy 2-core machine may be slow, never wrong)."""


class LiveServer:
    """A uvicorn server on a free port of 127.0.0.1, running ``app`` in its own thread and loop."""

    def __init__(self, app: Any, *, graceful_timeout: int = 5) -> None:
        self.config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=graceful_timeout,
        )
        self.server = uvicorn.Server(self.config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="uvicorn-test-server", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve()

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> LiveServer:
        self._thread.start()
        wait_for(lambda: self.server.started or not self._thread.is_alive(), timeout, "uvicorn to start")
        if not self.server.started:
            raise RuntimeError("uvicorn did not start (see the log above)")
        return self

    @property
    def port(self) -> int:
        sockets = self.server.servers[0].sockets
        return int(sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, make: Callable[[], Awaitable[T]], timeout: float = DEFAULT_TIMEOUT) -> T:
        """Run a coroutine on the server's loop and return its result."""
        if self.loop is None:
            raise RuntimeError("the server is not running")

        async def run() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def stop(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("uvicorn did not stop in time")


@contextmanager
def live_server(app: Any, *, graceful_timeout: int = 5) -> Iterator[LiveServer]:
    """Serve ``app`` for the duration of the block; yields the running :class:`LiveServer`."""
    server = LiveServer(app, graceful_timeout=graceful_timeout).start()
    try:
        yield server
    finally:
        server.stop()


def wait_for(condition: Callable[[], object], timeout: float = DEFAULT_TIMEOUT, what: str = "a condition") -> None:
    """Poll ``condition`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


async def async_wait_for(
    condition: Callable[[], object], timeout: float = DEFAULT_TIMEOUT, what: str = "a condition"
) -> None:
    """:func:`wait_for` for async tests."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


@dataclass
class SSEFrame:
    """One parsed SSE frame (comment-only blocks are kept as frames with ``comments``)."""

    raw: bytes
    id: str | None = None
    event: str | None = None
    data: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> Any:
        assert self.data is not None, f"frame has no data: {self.raw!r}"
        return json.loads(self.data)

    @property
    def seq(self) -> int:
        assert self.id is not None, f"frame has no id: {self.raw!r}"
        return int(self.id.rpartition(":")[2])


def parse_frame(raw: bytes) -> SSEFrame:
    """Parse one ``\\n\\n``-terminated block (without the terminator)."""
    frame = SSEFrame(raw=raw)
    data: list[str] = []
    for line in raw.decode().split("\n"):
        if line.startswith(":"):
            frame.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            frame.id = value
        elif name == "event":
            frame.event = value
        elif name == "data":
            data.append(value)
        elif name == "retry":
            frame.retry = int(value)
    if data:
        frame.data = "\n".join(data)
    return frame


class FrameSplitter:
    """Splits a byte stream into SSE blocks on ``\\n\\n`` (as strict ``\\n`` clients do)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SSEFrame]:
        self._buffer += chunk
        *blocks, self._buffer = self._buffer.split(b"\n\n")
        return [parse_frame(block) for block in blocks if block]


def iter_frames(response: httpx.Response, *, events_only: bool = True) -> Iterator[SSEFrame]:
    """Frames of a streaming httpx response; ``events_only`` drops retry and comment blocks."""
    splitter = FrameSplitter()
    for chunk in response.iter_raw():
        for frame in splitter.feed(chunk):
            if events_only and frame.event is None:
                continue
            yield frame


async def aiter_frames(response: httpx.Response, *, events_only: bool = True) -> AsyncIterator[SSEFrame]:
    """:func:`iter_frames` for an async response."""
    splitter = FrameSplitter()
    async for chunk in response.aiter_raw():
        for frame in splitter.feed(chunk):
            if events_only and frame.event is None:
                continue
            yield frame


def read_stream(client: httpx.Client, method: str, url: str, **kwargs: Any) -> list[SSEFrame]:
    """Open an SSE stream and read it to its end; asserts a 200."""
    with client.stream(method, url, **kwargs) as response:
        assert response.status_code == 200, response.read()
        return list(iter_frames(response))


class Gate:
    """A point a test graph waits at until the test opens it (from any thread).

    ``reached`` is set when a run arrives at the gate, so a test can wait for
    "the run is live and parked here" instead of sleeping.
    """

    def __init__(self) -> None:
        self.reached = threading.Event()
        self._lock = threading.Lock()
        self._opened = False
        self._waiting: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def wait(self) -> None:
        event = asyncio.Event()
        self.reached.set()
        with self._lock:
            if self._opened:
                return
            self._waiting.append((asyncio.get_running_loop(), event))
        await event.wait()

    def open(self) -> None:
        with self._lock:
            self._opened = True
            waiting, self._waiting = self._waiting, []
        for loop, event in waiting:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)


def gated_graph(research_team: Any, gate: Gate, *, tokens: int = 40) -> Any:
    """``team`` (the demo research team) → ``hold`` (waits at ``gate``) → ``review`` (``tokens`` tokens)."""
    from langgraph.graph import END, START, MessagesState, StateGraph

    async def hold(state: MessagesState) -> dict[str, Any]:
        await gate.wait()
        return {}

    builder = StateGraph(MessagesState)
    builder.add_node("team", research_team.build_graph(token_delay=0.0))
    builder.add_node("hold", hold)
    builder.add_node("review", research_team.build_benchmark_graph(tokens))
    builder.add_edge(START, "team")
    builder.add_edge("team", "hold")
    builder.add_edge("hold", "review")
    builder.add_edge("review", END)
    return builder.compile(name="gated")
