"""The format seam: what a wire format provides to the server.

A :class:`Format` turns what a cursor yields (:data:`~kiki_events.core.runlog.Item`:
stored :class:`~kiki_events.core.runlog.Frame` objects and connection-level
``StatusEvent`` notices with ``seq == 0``) into the bytes of one HTTP response
body. For each stream the server asks the format for an :class:`Encoder` and
writes, in order:

1. :meth:`Format.retry_frame` (when the format has one and it is not empty), then
   ``encoder.start()`` (what opens a stream, e.g. a "start" message; empty for most
   formats), in one chunk,
2. every item's ``encoder.encode(item)``, coalesced into one chunk per wake-up
   (:meth:`Encoder.encode_all`, which a format may override for speed),
3. ``encoder.finish()`` once the cursor is finished (the run ended, or a slow
   client is dropped) — e.g. a closing ``[DONE]`` line; empty for most formats —
   or once the encoder says the stream can carry nothing more (:attr:`Encoder.ended`:
   a protocol of one run per stream, or one where nothing may follow an error),
   which ends the body there, also of a thread stream that would go on.

A format whose bytes for an event are the same for every client
(:attr:`Format.cacheable`) memoises them on the frame with
:meth:`Frame.encoded(format, build) <kiki_events.core.runlog.Frame.encoded>`,
so a run watched by many clients is encoded once per format. The frame carries
the format-neutral facts an encoder may need (such as
:attr:`~kiki_events.core.runlog.Frame.first_of_message`); whatever else must
be remembered per stream lives in the encoder, which is why there is one per
stream (a stateless format may hand out one shared encoder).

A stream's response carries the format's :attr:`Format.media_type` and its
:attr:`Format.headers` (e.g. a protocol version header its clients check). A
client picks a format by name (the ``format`` query parameter of the stream
endpoints) or by media type in ``Accept`` (:attr:`Format.accepts`, see
:func:`~kiki_events.formats.format_for_accept`).

A new format is one module in this folder that defines a ``FORMAT`` instance of
a :class:`Format` subclass, plus one line in the registry of
:mod:`kiki_events.formats`. Formats import nothing from the web framework: the
server frames nothing itself, it writes what the encoder returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import ClassVar

from ..core.runlog import Item

__all__ = ["Encoder", "Format"]


class Encoder(ABC):
    """Encodes the items of one stream, in order."""

    __slots__ = ()

    @abstractmethod
    def encode(self, item: Item, /) -> bytes:
        """The bytes of one item: a stored frame, or a connection-level notice (``seq == 0``)."""

    def encode_all(self, items: Sequence[Item], /) -> bytes:
        """The bytes of ``items``, in order: what :meth:`encode` gives for each, joined."""
        return b"".join(map(self.encode, items))

    def start(self) -> bytes:
        """What to send before the first item, after ``retry_frame`` (empty when the format needs nothing)."""
        return b""

    @property
    def ended(self) -> bool:
        """Whether the stream can carry nothing more: the server sends :meth:`finish` and ends the body.

        ``False`` by default: a stream of our format goes on as long as its cursor does.
        """
        return False

    def finish(self) -> bytes:
        """What to send after the last item (empty when the format needs nothing)."""
        return b""


class Format(ABC):
    """A wire format: its name, media type and a fresh :class:`Encoder` per stream."""

    name: ClassVar[str]
    """Registry name (see :mod:`kiki_events.formats`)."""
    media_type: ClassVar[str]
    """The response's media type, e.g. ``text/event-stream``."""
    cacheable: ClassVar[bool] = True
    """Whether an event's bytes are the same for every client, so frames may memoise them."""
    headers: ClassVar[Mapping[str, str]] = MappingProxyType({})
    """Extra response headers every stream of this format carries (none by default)."""
    accepts: ClassVar[tuple[str, ...]] = ()
    """Further media types (lowercase ``type/subtype``) an ``Accept`` header may name to pick this
    format, besides :attr:`media_type`; a media type two formats share picks the one registered first."""

    @property
    def media_types(self) -> tuple[str, ...]:
        """Every media type that picks this format in ``Accept``: :attr:`media_type`, then :attr:`accepts`."""
        return (self.media_type, *self.accepts)

    @abstractmethod
    def encoder(self) -> Encoder:
        """An encoder for one stream (a run's or a thread's)."""

    def retry_frame(self, seconds: float) -> bytes:
        """What tells a client how long to wait before reconnecting; empty when the format has nothing for it."""
        return b""

    def __repr__(self) -> str:
        return f"<format {self.name!r} ({self.media_type})>"
