"""The client side of ``benchmarks/formats.py``: one raw HTTP request, and what a stream says.

:func:`request` speaks HTTP/1.1 over a blocking socket (``Connection: close``) and
counts every byte received (status line, headers, chunk framing, body: the bytes on the
wire) besides the body itself. :func:`read_stream` turns a body of any of the four
formats (kiki, AG-UI of either version, ours or the peer's, AI SDK) into the same
:class:`Seen`: the text of each assistant message in order, every tool call with its
arguments, every tool result; :func:`problems` compares that with what the graph
really produced (:class:`Expected`), so a stream is only timed once it is known to
carry the whole run.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kiki_events.formats.kiki import SSEDecoder


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    wire: int
    """Bytes received on the socket: status line, headers, chunk framing and body."""
    seconds: float


def request(port: int, path: str, body: dict[str, Any] | None = None, *, timeout: float = 300) -> Response:
    """``POST`` (with a JSON ``body``) or ``GET`` ``path``; the whole response, read to the connection's end."""
    payload = b"" if body is None else json.dumps(body).encode()
    method = "GET" if body is None else "POST"
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    started = time.perf_counter()
    parts: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(head.encode() + payload)
        while chunk := conn.recv(1 << 20):
            parts.append(chunk)
    seconds = time.perf_counter() - started
    raw = b"".join(parts)
    header_block, _, rest = raw.partition(b"\r\n\r\n")
    lines = header_block.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    content = _dechunk(rest) if headers.get("transfer-encoding") == "chunked" else rest
    return Response(status, headers, content, len(raw), seconds)


def _dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    position = 0
    while True:
        end = data.index(b"\r\n", position)
        size = int(data[position:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2 : end + 2 + size])
        position = end + 2 + size + 2


def sse_frames(body: bytes) -> list[dict[str, str]]:
    """The frames of an SSE body: field → value (``data`` lines joined by ``\\n``); comments left out."""
    frames: list[dict[str, str]] = []
    for block in body.decode().replace("\r\n", "\n").split("\n\n"):
        frame: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            frame[name] = f"{frame[name]}\n{value}" if name in frame and name == "data" else value
        if frame:
            frames.append(frame)
    return frames


@dataclass
class Seen:
    """What one stream carried."""

    texts: dict[str, str] = field(default_factory=dict)
    """Assistant message → its text, in the order the messages started (continuations ``id#n`` joined)."""
    calls: dict[str, list[str]] = field(default_factory=dict)
    """Tool call id → [tool name, its arguments' JSON as streamed], in the order they started."""
    results: dict[str, str] = field(default_factory=dict)
    types: list[str] = field(default_factory=list)
    """Every event's type, in order."""

    def text(self, message_id: str, delta: str) -> None:
        key = message_id.split("#", 1)[0]
        self.texts[key] = self.texts.get(key, "") + delta


def read_agui(body: bytes) -> Seen:
    seen = Seen()
    for frame in sse_frames(body):
        event = json.loads(frame["data"])
        kind = event["type"]
        seen.types.append(kind)
        if kind == "TEXT_MESSAGE_START":
            seen.text(event["messageId"], "")
        elif kind in ("TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_CHUNK"):
            seen.text(event["messageId"], event.get("delta") or "")
        elif kind in ("TOOL_CALL_START", "TOOL_CALL_CHUNK") and event["toolCallId"] not in seen.calls:
            seen.calls[event["toolCallId"]] = [event.get("toolCallName") or "", event.get("delta") or ""]
        elif kind in ("TOOL_CALL_ARGS", "TOOL_CALL_CHUNK"):
            seen.calls[event["toolCallId"]][1] += event["delta"]
        elif kind == "TOOL_CALL_RESULT":
            seen.results[event["toolCallId"]] = event["content"]
    return seen


def read_kiki(body: bytes) -> Seen:
    seen = Seen()
    decoder = SSEDecoder()
    for frame in sse_frames(body):
        if "id" not in frame:
            continue  # the retry frame, connection notices
        event: Any = decoder.decode(frame["id"], frame["event"], frame["data"])
        seen.types.append(event.type)
        if event.type == "token" and event.kind == "text":
            seen.text(event.message_id, event.text)
        elif event.type == "tool_call":
            call = seen.calls.setdefault(event.tool_call_id, [event.name or "", ""])
            if event.phase == "args":
                call[1] += event.args_delta or ""
            elif event.phase == "end" and not call[1]:
                call[1] = json.dumps(event.args or {})
        elif event.type == "tool_result":
            seen.results[event.tool_call_id] = event.output or ""
    return seen


def read_aisdk(body: bytes) -> Seen:
    seen = Seen()
    for frame in sse_frames(body):
        if frame["data"] == "[DONE]":
            seen.types.append("[DONE]")
            continue
        chunk = json.loads(frame["data"])
        kind = chunk["type"]
        seen.types.append(kind)
        if kind == "text-start":
            seen.text(chunk["id"], "")
        elif kind == "text-delta":
            seen.text(chunk["id"], chunk["delta"])
        elif kind == "tool-input-start":
            seen.calls[chunk["toolCallId"]] = [chunk["toolName"], ""]
        elif kind == "tool-input-delta":
            seen.calls[chunk["toolCallId"]][1] += chunk["inputTextDelta"]
        elif kind == "tool-input-available" and not seen.calls[chunk["toolCallId"]][1]:
            seen.calls[chunk["toolCallId"]][1] = json.dumps(chunk["input"])
        elif kind == "tool-output-available":
            output = chunk["output"]
            seen.results[chunk["toolCallId"]] = output if isinstance(output, str) else json.dumps(output)
    return seen


READERS: dict[str, Callable[[bytes], Seen]] = {"kiki": read_kiki, "agui": read_agui, "aisdk": read_aisdk}

ENDS: dict[str, tuple[str, str]] = {
    "kiki": ("status", "done"),
    "agui": ("RUN_STARTED", "RUN_FINISHED"),
    "aisdk": ("start", "[DONE]"),
}
"""Format → (its first event's type, its last one's) in a stream that carries a whole run."""


@dataclass(frozen=True)
class Expected:
    """What a run of the graph produces (from the graph's final state)."""

    texts: list[str]
    """Each assistant message's text (those with text), in order."""
    calls: list[tuple[str, str, dict[str, Any]]]
    """Each tool call: (id, tool name, arguments), in order."""
    results: dict[str, str]
    tokens: int
    """Text chunks the models streamed (each model streams a message as its word-sized chunks)."""


def problems(reading: str, seen: Seen, expected: Expected) -> list[str]:
    """Where a stream (read with ``READERS[reading]``) differs from what the graph produced; empty: none."""
    found: list[str] = []
    first, last = ENDS[reading]
    if not seen.types or seen.types[0] != first or seen.types[-1] != last:
        ends = (seen.types[0], seen.types[-1]) if seen.types else None
        found.append(f"the stream does not run from {first} to {last}: {ends}")
    texts = [text for text in seen.texts.values() if text]
    if texts != expected.texts:
        found.append(f"texts differ: {len(texts)} messages of {[len(t) for t in texts]} characters, "
                     f"expected {len(expected.texts)} of {[len(t) for t in expected.texts]}")  # fmt: skip
    calls = [(call_id, name, _json(args)) for call_id, (name, args) in seen.calls.items()]
    if calls != [(call_id, name, args) for call_id, name, args in expected.calls]:
        found.append(f"tool calls differ: {calls} vs {expected.calls}")
    if seen.results != expected.results:
        found.append(f"tool results differ: {sorted(seen.results)} vs {sorted(expected.results)}")
    return found


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
