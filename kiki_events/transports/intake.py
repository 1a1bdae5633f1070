"""The checks on every frame a transport receives, before the listener sees it.

Size, wire version and validation (:func:`~kiki_events.transports.wire.unpack`),
echo suppression (a node ignores its own frames), counting, and a listener that
raises never stopping the reader. Drops are counted by reason and logged once per
kind.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..errors import WireError
from ..log import get_logger
from .base import ControlMessage, TransportListener
from .stats import TransportStats
from .wire import KIND_BATCH, KIND_CONTROL, KIND_LIFECYCLE, Message, unpack

__all__ = ["Intake"]

logger = get_logger("kiki_events.bridge")


class Intake:
    """The receiving side of one transport (see the module docstring)."""

    def __init__(self, node: str, stats: TransportStats, max_bytes: int) -> None:
        self.node = node
        self.stats = stats
        self.max_bytes = max_bytes
        self.listener: TransportListener | None = None
        """Set when the transport starts."""
        self._rejected_logged: set[str] = set()
        self._bad_listener_logged = False

    def receive(self, data: bytes | str, *, live: bool = True) -> str | None:
        """Validate one frame from outside and hand it to the listener (never raises).

        Returns why it was dropped (counted and logged), or ``None``.
        """
        try:
            message = unpack(data, max_bytes=self.max_bytes)
        except WireError as exc:
            self.stats.drop(exc.reason)
            self.log_once(exc.reason, "dropped a frame from the transport: %s", exc)
            return exc.reason
        if message.sender == self.node:
            return None  # our own frame: never re-deliver it here
        listener = self.listener
        if listener is None:
            return None
        kind = message.kind
        if kind == KIND_CONTROL:
            return self._control(listener, message)
        stats = self.stats
        stats.messages_in += 1
        if kind == KIND_LIFECYCLE:
            stats.lifecycle_in += len(message.events)
        else:
            stats.events_in += len(message.events)
        if live and kind in (KIND_BATCH, KIND_LIFECYCLE):
            stats.observe_lag(time.time() - message.sent_at)
        self.safely(listener.on_frame, message)
        return None

    def _control(self, listener: TransportListener, message: Message) -> str | None:
        op = message.header.get("o")
        payload = message.header.get("p", {})
        if not isinstance(op, str) or not op or not isinstance(payload, dict):
            self.stats.drop("malformed")
            self.log_once("malformed", "dropped a frame from the transport: %s", "invalid control message")
            return "malformed"
        self.stats.messages_in += 1
        self.safely(listener.on_control, ControlMessage(op, message.sender, payload))
        return None

    def safely(self, method: Callable[..., object], *args: object) -> None:
        """Call the listener; what it raises is counted (``listener_error``) and logged once."""
        try:
            method(*args)
        except Exception:
            self.stats.drop("listener_error")
            if not self._bad_listener_logged:
                self._bad_listener_logged = True
                logger.exception("the bridge failed to handle a frame")

    def log_once(self, kind: str, message: str, *args: object) -> None:
        """Warn the first time a drop of ``kind`` happens; later ones at debug level."""
        if kind in self._rejected_logged:
            logger.debug(message, *args)
            return
        self._rejected_logged.add(kind)
        logger.warning(message + " (logged once per kind; see kiki_events_dropped_total)", *args)
