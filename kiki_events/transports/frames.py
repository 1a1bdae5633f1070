"""The frames every transport sends, built from the outbox and the control messages.

A transport decides where each frame goes (a channel, a stream entry); what the
frames hold is the same for all of them (see :mod:`~kiki_events.transports.wire`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..core.records import RunInfo
from .base import ControlMessage
from .options import TransportOptions
from .outbox import chunks
from .wire import KIND_CONTROL, KIND_REPLAY, KIND_THREAD, pack

__all__ = ["announcement", "control_frame", "framed", "replay_frames"]


def framed(
    kind: str,
    node: str,
    events: list[bytes],
    options: TransportOptions,
    *,
    sent_at: float,
    run_id: str | None = None,
) -> Iterator[tuple[int, int, bytes]]:
    """``events`` in frames of ``kind`` no larger than the options allow: ``(start, stop, frame)``."""
    for start, stop in chunks(events, options.batch_size, options.frame_bytes):
        yield start, stop, pack(kind, node, events[start:stop], sent_at=sent_at, run_id=run_id)


def announcement(node: str, info: RunInfo, *, sent_at: float) -> bytes:
    """The frame telling a thread's watchers that ``info``'s run started on it."""
    return pack(KIND_THREAD, node, sent_at=sent_at, run_id=info.run_id, i=info.to_fields())


def control_frame(node: str, message: ControlMessage) -> bytes:
    """The frame of a control message sent by ``node``."""
    return pack(KIND_CONTROL, node, sent_at=time.time(), o=message.op, p=dict(message.payload))


def replay_frames(
    node: str,
    run_id: str,
    events: Sequence[bytes],
    options: TransportOptions,
    *,
    first: int | None = None,
    gone: bool = False,
) -> list[bytes]:
    """The frames of a replay answer: ``f`` (first kept seq) on the first, ``e`` (end) on the last."""
    now = time.time()
    parts = list(chunks(list(events), options.batch_size, options.frame_bytes)) or [(0, 0)]
    frames = []
    for index, (start, stop) in enumerate(parts):
        header: dict[str, Any] = {}
        if index == 0 and first is not None:
            header["f"] = first
        if index == len(parts) - 1:
            header["e"] = 1
            if gone:
                header["g"] = 1
        frames.append(pack(KIND_REPLAY, node, events[start:stop], sent_at=now, run_id=run_id, **header))
    return frames
