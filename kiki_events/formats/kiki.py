"""Our wire format (``kiki``, the default): SSE frames, as bytes.

A run event becomes::

    id: <run_id>:<seq>
    event: <type>
    data: <json>

followed by a blank line, lines separated by ``\\n`` only (some clients parse
nothing from ``\\r\\n``). The ``data`` payload (:func:`sse_data`) does not
repeat what the ``id`` line (``run_id``, ``seq``) and the ``event`` line (the
type) carry; token frames also leave out the run-constant envelope fields
(``thread_id``, ``node``, ``v``, ``causation_id``), and carry ``agent`` only on
the first token of each message (:attr:`~kiki_events.core.runlog.Frame.first_of_message`).
:func:`decode_sse` rebuilds an event from the three frame lines, and
:class:`SSEDecoder` a whole stream, agents included.

Connection-level notices (``seq == 0``) have no ``id`` line, so a browser's
``Last-Event-ID`` never points at them; their data is the whole event (with
``run_id``), because no ``id`` line carries it. A stream starts with a
``retry:`` frame (:func:`retry_frame`) and needs nothing after its last event.

:data:`FORMAT` is this format for the server (see :mod:`kiki_events.formats.base`):
its frames are the same for every client, so each event is encoded once, on
first use, and memoised on its stored frame; its encoder keeps no state, so
every stream shares one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from ..codec import DEFAULT_MAX_EVENT_BYTES, decode, encode
from ..core.runlog import Frame, Item
from ..errors import EventDecodeError
from ..events import (
    AgentLifecycleEvent,
    DoneEvent,
    ErrorEvent,
    StatusEvent,
    StreamEvent,
    TokenEvent,
    ToolResultEvent,
)
from ..redaction import redact_text
from .base import Encoder, Format

__all__ = [
    "FORMAT",
    "KikiFormat",
    "SSEDecoder",
    "decode_sse",
    "event_frame",
    "notice_frame",
    "retry_frame",
    "sse_data",
]

_SSE_EXCLUDE: set[str] = {"type", "run_id", "seq"}
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def sse_data(event: StreamEvent, *, with_agent: bool = True) -> bytes:
    """The ``data:`` payload of ``event``'s SSE frame (see the module docstring).

    A message's agent is metadata of the message, not of each token: frames pass
    ``with_agent=False`` for every token of a message after its first (see
    :attr:`~kiki_events.core.runlog.Frame.first_of_message`), and clients map
    ``message_id`` to the agent they saw first.
    """
    if type(event) is TokenEvent:
        # The hot path: one frame per token, so build it by hand.
        fields: dict[str, Any] = {"ts": round(event.ts, 3), "message_id": event.message_id, "text": event.text}
        if with_agent and event.agent is not None:
            fields["agent"] = event.agent
        if event.kind != "text":
            fields["kind"] = event.kind
        return _dumps(fields).encode()
    return type(event).__pydantic_serializer__.to_json(event, exclude_none=True, exclude=_SSE_EXCLUDE)


def decode_sse(
    event_id: str, event_type: str, data: bytes | str, *, max_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> StreamEvent:
    """Rebuild an event from an SSE frame's ``id``, ``event`` and ``data`` lines.

    Frames without an ``id`` (connection-level notices) pass ``event_id=""``.

    Raises:
        EventDecodeError: as :func:`~kiki_events.codec.decode`, or the ``id`` is not ``<run_id>:<seq>``.
    """
    if len(data) > max_bytes:
        raise EventDecodeError(f"SSE data is {len(data)} bytes, larger than the limit of {max_bytes}")
    try:
        fields = json.loads(data)
    except RecursionError:
        raise EventDecodeError("SSE data is nested too deeply") from None
    except ValueError:
        raise EventDecodeError("SSE data is not valid JSON") from None
    if not isinstance(fields, dict):
        raise EventDecodeError("SSE data must be a JSON object")
    run_id, sep, seq = event_id.rpartition(":")
    # isdigit() alone accepts "²" or "٣", which int() rejects; a seq fits in 64 bits.
    if event_id and (not sep or not seq.isascii() or not seq.isdigit() or len(seq) > 19):
        raise EventDecodeError(f"SSE id {event_id!r} is not of the form '<run_id>:<seq>'")
    fields["type"] = event_type
    if event_id:
        fields["run_id"], fields["seq"] = run_id, int(seq)
    else:
        fields.setdefault("seq", 0)
    # Already size-checked; re-encoding may escape non-ASCII text and grow it.
    return decode(json.dumps(fields), max_bytes=sys.maxsize)


class SSEDecoder:
    """Rebuilds the events of an SSE stream, restoring what frames leave out.

    Token frames name their agent only on a message's first token; the decoder
    remembers it per message and puts it back on the later tokens. Use one
    decoder per stream (or per client reading several streams).
    """

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_bytes = max_bytes
        self._agents: dict[tuple[str, str], str] = {}

    def decode(self, event_id: str, event_type: str, data: bytes | str) -> StreamEvent:
        """Like :func:`decode_sse`; raises :class:`EventDecodeError` the same way."""
        event = decode_sse(event_id, event_type, data, max_bytes=self.max_bytes)
        if isinstance(event, TokenEvent):
            key = (event.run_id, event.message_id)
            if event.agent is not None:
                self._agents[key] = event.agent
            else:
                agent = self._agents.get(key)
                if agent is not None:
                    event = event.model_copy(update={"agent": agent})
        elif isinstance(event, DoneEvent):
            run_id = event.run_id
            for key in [k for k in self._agents if k[0] == run_id]:
                del self._agents[key]
        return event


def event_frame(event: StreamEvent, *, with_agent: bool = True) -> bytes:
    """The frame of one run event (``id``, ``event`` and ``data`` lines).

    ``with_agent=False`` leaves a token's agent out (see :func:`sse_data`).
    """
    if event.seq == 0 and type(event) is StatusEvent:
        return notice_frame(event)
    kind = type(event)
    # Defence in depth: whatever produced an error text, secrets in it never
    # reach a browser. Error events are rare, so this costs nothing per token.
    if kind is ErrorEvent:
        event = event.model_copy(update={"message": redact_text(event.message)})  # type: ignore[union-attr]
    elif (kind is AgentLifecycleEvent or kind is ToolResultEvent) and event.error is not None:  # type: ignore[union-attr]
        event = event.model_copy(update={"error": redact_text(event.error)})  # type: ignore[union-attr]
    return b"".join(
        (
            b"id: ",
            event.run_id.encode(),
            b":",
            str(event.seq).encode(),
            b"\nevent: ",
            event.type.encode(),
            b"\ndata: ",
            sse_data(event, with_agent=with_agent),
            b"\n\n",
        )
    )


def notice_frame(event: StatusEvent) -> bytes:
    """A connection-level notice: no ``id`` line, the whole event as data."""
    return b"event: status\ndata: " + encode(event) + b"\n\n"


def retry_frame(seconds: float) -> bytes:
    """The ``retry:`` frame telling a browser how long to wait before reconnecting."""
    return b"retry: " + str(round(seconds * 1000)).encode() + b"\n\n"


def _stored_frame(frame: Frame) -> bytes:
    return event_frame(frame.event, with_agent=frame.first_of_message)


class _Encoder(Encoder):
    """Stateless: what a frame looks like depends only on the frame."""

    __slots__ = ()

    def encode(self, item: Item, /) -> bytes:
        if isinstance(item, Frame):
            return item.encoded(FORMAT, _stored_frame)
        return notice_frame(item)

    def encode_all(self, items: Sequence[Item], /) -> bytes:
        # The hot path of every stream: no call per item beyond the memo's.
        return b"".join(
            [item.encoded(FORMAT, _stored_frame) if isinstance(item, Frame) else notice_frame(item) for item in items]
        )


_ENCODER = _Encoder()


class KikiFormat(Format):
    """Our SSE frames (see the module docstring)."""

    name = "kiki"
    media_type = "text/event-stream"
    cacheable = True

    def encoder(self) -> Encoder:
        return _ENCODER

    def retry_frame(self, seconds: float) -> bytes:
        return retry_frame(seconds)


FORMAT = KikiFormat()
"""The default format."""
