"""Compact JSON codec for :data:`~kiki_events.events.StreamEvent`.

:func:`encode` gives the whole event as compact JSON (no ``null`` fields). Used on
the bus bridge and in storage; :func:`decode` validates it back. What clients
read over HTTP is a wire format's business (:mod:`kiki_events.formats`; ours, with
its compact SSE payloads, is :mod:`kiki_events.formats.kiki`).

The SSE framing as a whole is described in ``docs/sse.md``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .errors import EventDecodeError
from .events import EVENT_TYPES, SCHEMA_VERSION, StreamEvent

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "decode",
    "encode",
    "event_json_schema",
]

DEFAULT_MAX_EVENT_BYTES = 1 << 20
"""Largest encoded event :func:`decode` accepts unless told otherwise (1 MiB)."""

_ADAPTER: TypeAdapter[StreamEvent] = TypeAdapter(StreamEvent)


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
