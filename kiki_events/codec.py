"""Compact JSON codec for :data:`~kiki_events.events.StreamEvent`.

Two encodings:

* :func:`encode` – the whole event as compact JSON (no ``null`` fields). Used on
  the bus bridge and in storage; :func:`decode` validates it back.
* :func:`sse_data` – the ``data:`` payload of an SSE frame. The frame's ``id:``
  line already carries ``run_id`` and ``seq`` and its ``event:`` line the type, so
  they are not repeated; token frames also leave out the run-constant envelope
  fields (``thread_id``, ``node``, ``v``, ``causation_id``), and carry ``agent``
  only on the first token of each message. :func:`decode_sse` rebuilds the
  event from the three frame lines.

The SSE framing as a whole is described in ``docs/sse.md``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .errors import EventDecodeError
from .events import EVENT_TYPES, SCHEMA_VERSION, DoneEvent, StreamEvent, TokenEvent

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "SSEDecoder",
    "decode",
    "decode_sse",
    "encode",
    "event_json_schema",
    "sse_data",
]

DEFAULT_MAX_EVENT_BYTES = 1 << 20
"""Largest encoded event :func:`decode` accepts unless told otherwise (1 MiB)."""

_ADAPTER: TypeAdapter[StreamEvent] = TypeAdapter(StreamEvent)
_SSE_EXCLUDE: set[str] = {"type", "run_id", "seq"}
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode(event: StreamEvent) -> bytes:
    """Encode ``event`` as compact UTF-8 JSON without ``null`` fields."""
    return type(event).__pydantic_serializer__.to_json(event, exclude_none=True)


def decode(data: bytes | str, *, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> StreamEvent:
    """Validate foreign bytes into an event.

    Raises:
        EventDecodeError: the input is too large, not JSON, of an unknown type or
            schema version, or fails validation. The message names the problem.
    """
    if len(data) > max_bytes:
        raise EventDecodeError(f"event is {len(data)} bytes, larger than the limit of {max_bytes}")
    return _validate(data)


def _validate(data: bytes | str) -> StreamEvent:
    try:
        return _ADAPTER.validate_json(data)
    except ValidationError as exc:
        raise EventDecodeError(_explain(exc, data)) from None


def _explain(exc: ValidationError, data: bytes | str) -> str:
    try:
        raw = json.loads(data)
    except RecursionError:
        return "event is nested too deeply"
    except ValueError:
        return "event is not valid JSON"
    if not isinstance(raw, dict):
        return f"event must be a JSON object, got {type(raw).__name__}"
    kind = raw.get("type")
    if kind not in EVENT_TYPES:
        return f"unknown event type {kind!r}; expected one of {', '.join(EVENT_TYPES)}"
    version = raw.get("v", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        return f"unsupported event schema version v={version!r} (this build reads v={SCHEMA_VERSION})"
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"][1:]) or "(event)"
    count = exc.error_count()
    more = f" (and {count - 1} more problems)" if count > 1 else ""
    return f"invalid {kind} event: {where}: {first['msg']}{more}"


def sse_data(event: StreamEvent, *, with_agent: bool = True) -> bytes:
    """The ``data:`` payload of ``event``'s SSE frame (see the module docstring).

    A message's agent is metadata of the message, not of each token: the replay
    log passes ``with_agent=False`` for every token of a message after its first,
    and clients map ``message_id`` to the agent they saw first.
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
        EventDecodeError: as :func:`decode`, or the ``id`` is not ``<run_id>:<seq>``.
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
    return _validate(json.dumps(fields))


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


def event_json_schema() -> dict[str, Any]:
    """JSON Schema of the :data:`StreamEvent` union (as printed by ``kiki-events schema``)."""
    schema = _ADAPTER.json_schema()
    # ``type`` has a default in the models, but decode() needs it to pick the model.
    for ref in schema["discriminator"]["mapping"].values():
        required = schema["$defs"][ref.rsplit("/", 1)[-1]].setdefault("required", [])
        if "type" not in required:
            required.append("type")
    schema["title"] = "StreamEvent"
    schema["$comment"] = f"kiki_events wire schema v{SCHEMA_VERSION}; the SSE id is '<run_id>:<seq>'"
    return schema
