"""Task inputs and results as JSON: LangChain messages survive the trip between nodes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["dump_payload", "encode_output", "last_text", "load_payload"]

_MESSAGE_TAG = "__kiki_message__"


def dump_payload(value: Any) -> Any:
    """``value`` as JSON-safe data; LangChain messages survive :func:`load_payload`."""
    from langchain_core.messages import BaseMessage, message_to_dict
    from pydantic import BaseModel

    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, BaseMessage):
        return {_MESSAGE_TAG: message_to_dict(value)}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): dump_payload(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [dump_payload(v) for v in value]
    return str(value)


def load_payload(value: Any) -> Any:
    """Inverse of :func:`dump_payload`."""
    if isinstance(value, dict):
        if len(value) == 1 and _MESSAGE_TAG in value:
            from langchain_core.messages import messages_from_dict

            return messages_from_dict([value[_MESSAGE_TAG]])[0]
        return {k: load_payload(v) for k, v in value.items()}
    if isinstance(value, list):
        return [load_payload(v) for v in value]
    return value


def last_text(state: Any) -> str | None:
    """Text of the last AI message of a graph state, if it has one."""
    messages = state.get("messages") if isinstance(state, Mapping) else None
    if not isinstance(messages, list):
        return None
    from langchain_core.messages import AIMessage

    for message in reversed(messages):
        if isinstance(message, AIMessage):
            return message.text if isinstance(message.text, str) else str(message.content)
    return None


def encode_output(output: Any, limit: int) -> dict[str, str]:
    """The reply fields of a run's final state: ``text``, and ``output`` if it fits in ``limit`` bytes.

    A final state too large (or not encodable) is left out and ``truncated`` is set.
    """
    fields: dict[str, str] = {}
    text = last_text(output)
    if text is not None:
        fields["text"] = text[:limit]
    if output is None:
        return fields
    try:
        encoded = json.dumps(dump_payload(output), ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        encoded = ""
    if encoded and len(encoded.encode()) <= limit:
        fields["output"] = encoded
    else:
        fields["truncated"] = "1"
    return fields
