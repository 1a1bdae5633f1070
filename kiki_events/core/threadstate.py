"""A thread's state as the checkpointer keeps it, JSON-safe (``GET /threads/{thread_id}/state``).

:func:`read_thread_state` reads the latest checkpoint of a thread through the graph
that ran it (``aget_state``): the state's values, the nodes that would run next and
the interrupts waiting for an answer. Messages become plain dicts
(``message.model_dump()``: ``type``, ``content``, ``id``, ``name``, …), other
pydantic models and dataclass-like values their JSON form, anything else its ``str``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..errors import RunNotFoundError

__all__ = ["jsonable", "read_thread_state"]

_MAX_DEPTH = 64


def jsonable(value: Any, _depth: int = 0) -> Any:
    """``value`` as JSON-safe data (messages and pydantic models dumped, the rest as ``str``)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if _depth >= _MAX_DEPTH:
        return str(value)
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):
        try:
            return jsonable(model_dump(mode="json"), _depth + 1)
        except Exception:
            return str(value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item, _depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item, _depth + 1) for item in value]
    return str(value)


async def read_thread_state(graph: Any, thread_id: str) -> dict[str, Any]:
    """The latest checkpoint of ``thread_id`` in ``graph``'s checkpointer.

    ``{"values", "next", "interrupts": [{"id", "value"}], "checkpoint_id", "created_at"}``;
    empty values (and no checkpoint id) if the thread has no checkpoint yet.

    Raises:
        RunNotFoundError: ``graph`` keeps no state (it has no checkpointer).
    """
    config = {"configurable": {"thread_id": thread_id}}
    try:
        snapshot = await graph.aget_state(config)
    except ValueError as exc:  # LangGraph: "No checkpointer set"
        raise RunNotFoundError(f"thread {thread_id!r} keeps no state: its graph has no checkpointer") from exc
    interrupts = [
        {"id": str(getattr(item, "id", "")), "value": jsonable(getattr(item, "value", None))}
        for item in getattr(snapshot, "interrupts", ())
    ]
    checkpoint = (snapshot.config or {}).get("configurable", {}).get("checkpoint_id")
    return {
        "values": jsonable(snapshot.values),
        "next": [str(name) for name in snapshot.next],
        "interrupts": interrupts,
        "checkpoint_id": checkpoint,
        "created_at": snapshot.created_at,
    }
