"""Transports: how events cross nodes (see :mod:`kiki_events.transports.base`).

The composition root (:func:`kiki_events.runtime.build.create_transport`) picks one
from the settings, through the ``PROVIDERS`` table of :mod:`kiki_events.runtime.build`.

Adding a transport is one file plus one registration line: subclass
:class:`~kiki_events.transports.common.BaseTransport` (the outbox, ``publish``,
``register``, ``flush``, state, intake checks and control messages are done),
write how frames are sent and read and how the registry is kept, and add its
builder to ``PROVIDERS`` (its name listed in ``kiki_events.config.PROVIDERS``).
"""

from __future__ import annotations

from .base import (
    ControlChannel,
    ControlMessage,
    FrameTransport,
    RunInfo,
    RunRegistry,
    ThreadOwner,
    Transport,
    TransportListener,
    TransportState,
)
from .common import BaseTransport
from .memory import MemoryHub, MemoryTransport
from .options import TransportOptions
from .stats import TransportStats

__all__ = [
    "BaseTransport",
    "ControlChannel",
    "ControlMessage",
    "FrameTransport",
    "MemoryHub",
    "MemoryTransport",
    "RunInfo",
    "RunRegistry",
    "ThreadOwner",
    "Transport",
    "TransportListener",
    "TransportOptions",
    "TransportState",
    "TransportStats",
]
