"""Helpers shared by the formats that send each message as one JSON ``data:`` frame (AG-UI, AI SDK).

Compact JSON (no spaces, UTF-8 kept), a ``data: <json>`` frame ending in a blank
line, and an event as its JSON with unset fields left out.
"""

from __future__ import annotations

import json
from typing import Any

from ..events import StreamEvent

__all__ = ["data_frame", "dumps", "event_json", "text_of"]

dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
"""Compact JSON text of a value."""


def data_frame(fields: Any) -> bytes:
    """One SSE frame: ``data: <json>`` and a blank line, lines ending in ``\\n`` only."""
    return b"data: " + dumps(fields).encode() + b"\n\n"


def event_json(event: StreamEvent) -> Any:
    """The event's JSON (our field names), fields without a value left out."""
    return json.loads(type(event).__pydantic_serializer__.to_json(event, exclude_none=True))


def text_of(value: Any) -> str:
    """A string as it is, anything else as its JSON."""
    return value if isinstance(value, str) else dumps(value)
