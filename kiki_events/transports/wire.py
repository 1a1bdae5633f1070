"""Frames: the bytes that carry events between nodes.

A frame is one Redis pub/sub message or one stream entry::

    <header JSON>\\n<event JSON>\\n<event JSON> ...

Events are :func:`~kiki_events.codec.encode` bytes, encoded once on the producing
node; JSON escapes every control character inside strings, so a newline always
separates events. The header is a small JSON object with short keys:

====  ==========================================================================
``v``  wire version (:data:`WIRE_VERSION`); frames of another version are dropped
``k``  kind: ``b`` run batch, ``p`` replay chunk, ``l`` lifecycle broadcast,
       ``t`` thread announcement, ``c`` control message
``n``  sender node (echo suppression: a node ignores its own frames)
``t``  publish time, Unix seconds (delivery lag is measured from it)
``r``  run id (``b``, ``p``, ``t``): every event of the frame belongs to it
====  ==========================================================================

plus kind-specific keys: ``p`` frames carry ``f`` (first seq the owner still has),
``e`` (last chunk of the replay) and ``g`` (the owner no longer knows the run);
``t`` frames carry ``i`` (the run's registry fields); ``c`` frames carry ``o`` (the
operation) and ``p`` (its payload).

:func:`unpack` validates foreign bytes completely and raises :class:`~kiki_events.errors.WireError`
with a ``reason`` (``oversized``, ``unknown_version``, ``malformed``) that
receivers count.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias, TypeGuard

from pydantic import ValidationError

from ..codec import _ADAPTER, decode
from ..errors import EventDecodeError, WireError
from ..events import SCHEMA_VERSION, StreamEvent
from ..topics import topic_of

__all__ = [
    "KIND_BATCH",
    "KIND_CONTROL",
    "KIND_LIFECYCLE",
    "KIND_REPLAY",
    "KIND_THREAD",
    "WIRE_VERSION",
    "DropReason",
    "Message",
    "pack",
    "run_frame_of",
    "unpack",
]

WIRE_VERSION: Final = 1
"""Version of the frame layout; receivers drop frames of any other version."""

KIND_BATCH: Final = "b"
KIND_REPLAY: Final = "p"
KIND_LIFECYCLE: Final = "l"
KIND_THREAD: Final = "t"
KIND_CONTROL: Final = "c"
_KINDS = frozenset((KIND_BATCH, KIND_REPLAY, KIND_LIFECYCLE, KIND_THREAD, KIND_CONTROL))
_RUN_KINDS = frozenset((KIND_BATCH, KIND_REPLAY))
_MAX_NAME = 256

DropReason: TypeAlias = Literal["oversized", "unknown_version", "malformed"]
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_validate = _ADAPTER.validate_json


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded, validated frame."""

    kind: str
    sender: str
    sent_at: float
    run_id: str | None
    events: list[StreamEvent]
    header: Mapping[str, Any]


def pack(
    kind: str,
    sender: str,
    events: Sequence[bytes] = (),
    *,
    sent_at: float,
    run_id: str | None = None,
    **extra: Any,
) -> bytes:
    """One frame: the header, then ``events`` (already encoded), newline-separated."""
    header: dict[str, Any] = {"v": WIRE_VERSION, "k": kind, "n": sender, "t": sent_at}
    if run_id is not None:
        header["r"] = run_id
    header.update(extra)
    head = _dumps(header).encode()
    if not events:
        return head
    return head + b"\n" + b"\n".join(events)


def _finite_number(value: object) -> TypeGuard[int | float]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float, which JSON allows
        return False


def run_frame_of(data: object, run_id: str) -> str | None:
    """The sender of ``data`` if it is a run frame (``batch``) of ``run_id``, by its header alone; else ``None``.

    Tells an entry written by a node into a run's stream from anything else put
    there, without judging its events (which a node of another version may write).
    """
    if not isinstance(data, bytes | str):
        return None
    head = (data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data).partition(b"\n")[0]
    try:
        header = json.loads(head)
    except (ValueError, RecursionError):
        return None
    if not isinstance(header, dict) or header.get("k") != KIND_BATCH or header.get("r") != run_id:
        return None
    sender = header.get("n")
    return sender if isinstance(sender, str) and sender else None


def unpack(data: bytes | str, *, max_bytes: int) -> Message:
    """Validate a frame from another node.

    Raises:
        WireError: too large, another version, or not a valid frame.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if len(data) > max_bytes:
        raise WireError("oversized", f"frame of {len(data)} bytes is larger than the limit of {max_bytes}")
    head, _, body = data.partition(b"\n")
    header = _header(head)
    kind, sender, sent_at, run_id = _fields(header)
    if not body:
        return Message(kind, sender, float(sent_at), run_id, [], header)
    if kind not in _RUN_KINDS and kind != KIND_LIFECYCLE:
        raise WireError("malformed", f"frame of kind {kind!r} carries events")
    events = _events(body.split(b"\n"), max_bytes)
    _check_events(kind, run_id, events)
    return Message(kind, sender, float(sent_at), run_id, events, header)


def _header(head: bytes) -> dict[str, Any]:
    """The header object of a frame, of this wire version."""
    try:
        header = json.loads(head)
    except (ValueError, RecursionError):
        raise WireError("malformed", "frame header is not JSON") from None
    if not isinstance(header, dict):
        raise WireError("malformed", "frame header is not a JSON object")
    version = header.get("v")
    if version != WIRE_VERSION or type(version) is not int:
        raise WireError("unknown_version", f"frame version {version!r} (this build reads {WIRE_VERSION})")
    return header


def _fields(header: Mapping[str, Any]) -> tuple[str, str, int | float, str | None]:
    """Kind, sender, publish time and run id of a header, checked."""
    kind = header.get("k")
    sender = header.get("n")
    sent_at = header.get("t")
    run_id = header.get("r")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise WireError("malformed", f"unknown frame kind {str(kind)[:40]!r}")
    if not isinstance(sender, str) or not sender or len(sender) > _MAX_NAME:
        raise WireError("malformed", "frame sender is missing or invalid")
    if not _finite_number(sent_at):
        raise WireError("malformed", "frame time is missing or invalid")
    if run_id is not None and (not isinstance(run_id, str) or not run_id or len(run_id) > 128):
        raise WireError("malformed", "frame run id is invalid")
    if kind in _RUN_KINDS and run_id is None:
        raise WireError("malformed", "run frame without a run id")
    return kind, sender, sent_at, run_id


def _events(lines: list[bytes], max_bytes: int) -> list[StreamEvent]:
    try:
        # The whole frame is within max_bytes, so each event is: validate them directly.
        return [_validate(line) for line in lines]
    except ValidationError:
        for line in lines:
            _event(line, max_bytes)  # raises with the reason of the first bad event
        raise WireError("malformed", "frame carries an invalid event") from None  # pragma: no cover


def _check_events(kind: str, run_id: str | None, events: list[StreamEvent]) -> None:
    """Lifecycle frames carry lifecycle events; run frames carry events of their run (never notices)."""
    if kind == KIND_LIFECYCLE:
        for event in events:
            if event.seq < 1 or topic_of(event) is None:
                raise WireError("malformed", "lifecycle frame carries a run-scoped event or a notice")
    else:
        for event in events:
            if event.run_id != run_id or event.seq < 1:
                raise WireError("malformed", "frame carries an event of another run, or a notice")


def _event(line: bytes, max_bytes: int) -> StreamEvent:
    try:
        return decode(line, max_bytes=max_bytes)
    except EventDecodeError as exc:
        try:
            version = json.loads(line).get("v", SCHEMA_VERSION)
        except (ValueError, AttributeError, RecursionError):
            version = SCHEMA_VERSION
        if version != SCHEMA_VERSION:
            raise WireError("unknown_version", str(exc)) from None
        raise WireError("malformed", str(exc)) from None
