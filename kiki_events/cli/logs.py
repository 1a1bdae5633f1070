"""Logging for the server process.

The library only logs through ``logging.getLogger("kiki_events…")`` and never
configures logging itself; :func:`configure_logging` is what ``kiki-events serve``
calls (and what an application may call) to render records as text or JSON lines,
with credentials masked in every message and traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from ..config import LoggingSettings
from ..redaction import redact_text

__all__ = ["JsonFormatter", "RedactingFormatter", "configure_logging"]

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class RedactingFormatter(logging.Formatter):
    """Text lines; secrets in messages and tracebacks are masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, extras, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update((k, v) for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_"))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redact_text(json.dumps(entry, ensure_ascii=False, default=str))


def configure_logging(settings: LoggingSettings, *, stream: TextIO | None = None) -> logging.Handler:
    """Send records of the root logger to ``stream`` (stderr) as text or JSON; returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not getattr(h, "_kiki", False)]
    handler._kiki = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.level)
    return handler
