"""Logging for the server process.

The library only logs through its own loggers (``kiki_events…``, see
:mod:`kiki_events.log`) and never configures logging itself;
:func:`configure_logging` is what ``kiki-events serve`` calls (and what an
application may call) to write every record of the process, uvicorn's included,
as text or JSON lines on stderr. The handler carries the package's
:class:`~kiki_events.log.LogFilter`, so records of other loggers (uvicorn's access
log with its query strings, the application's own) are masked and carry the bound
run ids too.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from ..config import LoggingSettings
from ..log import ID_FIELDS, LogFilter

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging"]

_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds: ``2026-01-31T12:00:00.123Z``."""
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [run_id=… thread_id=… agent=…]``, then the traceback."""

    def __init__(self) -> None:
        super().__init__(_TEXT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        ids = [f"{key}={value}" for key in ID_FIELDS if (value := getattr(record, key, None)) is not None]
        return f"{text} [{' '.join(ids)}]" if ids else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line.

    ``ts``, ``level``, ``logger``, ``message``; ``run_id``, ``thread_id``, ``agent``
    and any other ``extra=`` attribute when the record has them; ``exception`` and
    ``stack`` (text, masked) when it has those.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((k, v) for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_"))
        if record.exc_info and not record.exc_text:  # a record no LogFilter has seen
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(settings: LoggingSettings, *, stream: TextIO | None = None) -> logging.Handler:
    """Send every record of the process to ``stream`` (stderr) as text or JSON lines; returns the handler.

    The root logger gets the handler and ``settings.level``; a handler from an
    earlier call is replaced, not added to.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    handler.addFilter(LogFilter())
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not getattr(h, "_kiki", False)]
    handler._kiki = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.level)
    return handler
