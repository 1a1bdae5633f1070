"""Transports: how events cross nodes (see :mod:`kiki_events.transports.base`).

The composition root (:func:`kiki_events.runtime.build.create_transport`) picks one
from the settings.
"""

from __future__ import annotations

from .base import (
    ControlMessage,
    RunInfo,
    ThreadOwner,
    Transport,
    TransportListener,
    TransportState,
    TransportStats,
)
from .common import TransportOptions
from .memory import MemoryHub, MemoryTransport

__all__ = [
    "ControlMessage",
    "MemoryHub",
    "MemoryTransport",
    "RunInfo",
    "ThreadOwner",
    "Transport",
    "TransportListener",
    "TransportOptions",
    "TransportState",
    "TransportStats",
]
