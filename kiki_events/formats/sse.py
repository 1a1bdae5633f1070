"""SSE wire frames of the default format, as bytes.

A run event becomes::

    id: <run_id>:<seq>
    event: <type>
    data: <json>

followed by a blank line, lines separated by ``\\n`` only (some clients parse
nothing from ``\\r\\n``). Connection-level notices (``seq == 0``) have no ``id``
line, so a browser's ``Last-Event-ID`` never points at them; their data is the
whole event (with ``run_id``), because no ``id`` line carries it.

Pure functions without third-party imports: the run store encodes each event
once with :func:`event_frame` and every client reuses the bytes.
"""

from __future__ import annotations

from ..codec import encode, sse_data
from ..events import AgentLifecycleEvent, ErrorEvent, StatusEvent, StreamEvent, ToolResultEvent
from ..redaction import redact_text

__all__ = ["event_frame", "notice_frame", "retry_frame"]


def event_frame(event: StreamEvent, *, with_agent: bool = True) -> bytes:
    """The frame of one run event (``id``, ``event`` and ``data`` lines).

    ``with_agent=False`` leaves a token's agent out (see :func:`~kiki_events.codec.sse_data`).
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
