"""The AG-UI format's mappings of two payloads: a tool call's progress, and an interrupt.

Pure functions of one event, used by the encoder in ``agui.py`` (which keeps what is
open per stream); the mapping is documented in ``docs/sse.md``, section AG-UI.

* A ``custom`` event with a ``tool_call_id`` is that call's progress. Protocol 1.0
  has a home for it: ``ACTIVITY_SNAPSHOT{messageId: "<tool_call_id>:progress:<name>",
  activityType: name, content: {toolCallId, name, data}}``, which a client keeps as
  an activity message of the conversation (``role: "activity"``) and replaces with
  each later snapshot of the same id: it shows the call's latest progress, one
  activity per call and event name. A 0.0.x client gets ``CUSTOM{name:
  "kiki.tool_progress", value: {toolCallId, name, data}}`` (the same object).
* An interrupt becomes an entry of ``RUN_FINISHED``'s interrupt outcome (1.0 only),
  read with the interrupt value convention of ``docs/events.md``: ``message`` is the
  value's ``question`` (else the value as text); a value naming a ``tool_call_id`` is
  a tool approval, ``reason: "tool_call"`` with ``toolCallId`` and a
  ``responseSchema`` for ``{approved, reason?}``; anything else is ``reason:
  "input_required"``, with ``responseSchema`` ``{"type": "string", "enum": choices}``
  when the value offers ``choices``.
"""

from __future__ import annotations

from typing import Any

from ..events import CustomEvent, InterruptInfo
from .jsondata import text_of

__all__ = ["APPROVAL_SCHEMA", "PROGRESS_NAME", "interrupt_of", "progress_of"]

PROGRESS_NAME = "kiki.tool_progress"
"""The ``CUSTOM`` name of a tool call's progress for 0.0.x clients."""

APPROVAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}, "reason": {"type": "string"}},
    "required": ["approved"],
}
"""The answer to a tool approval: ``{"approved": bool, "reason": str (optional)}``."""


def progress_of(event: CustomEvent, v1: bool) -> dict[str, Any]:
    """The AG-UI event of a ``custom`` event that is a tool call's progress (``tool_call_id`` set)."""
    call_id = event.tool_call_id or ""
    content = {"toolCallId": call_id, "name": event.name, "data": {} if event.data is None else event.data}
    if not v1:
        return {"type": "CUSTOM", "name": PROGRESS_NAME, "value": content}
    return {
        "type": "ACTIVITY_SNAPSHOT",
        "messageId": f"{call_id}:progress:{event.name}",
        "activityType": event.name,
        "content": content,
    }


def _choices(value: dict[str, Any]) -> list[str] | None:
    choices = value.get("choices")
    if isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices):
        return choices
    return None


def interrupt_of(info: InterruptInfo, fallback_id: str) -> dict[str, Any]:
    """One entry of a 1.0 interrupt outcome (``id``, ``reason``, ``message``, ``toolCallId``, ``responseSchema``)."""
    interrupt: dict[str, Any] = {"id": info.id or fallback_id, "reason": "input_required"}
    value = info.value
    if value is None:
        return interrupt
    question = value.get("question") if isinstance(value, dict) else None
    interrupt["message"] = question if isinstance(question, str) else text_of(value)
    if isinstance(value, dict):
        call_id = value.get("tool_call_id")
        choices = _choices(value)
        if isinstance(call_id, str) and call_id:
            interrupt.update(reason="tool_call", toolCallId=call_id, responseSchema=APPROVAL_SCHEMA)
        elif choices is not None:
            interrupt["responseSchema"] = {"type": "string", "enum": choices}
    return interrupt
