"""Server logging: text or JSON lines, secrets masked, tracebacks kept."""

from __future__ import annotations

import io
import json
import logging

from kiki_events.cli.logs import configure_logging
from kiki_events.config import LoggingSettings
from kiki_events.log import get_logger


def _log_failure(stream: io.StringIO, fmt: str) -> str:
    level = logging.getLogger().level
    handler = configure_logging(LoggingSettings(format=fmt), stream=stream)  # type: ignore[arg-type]
    try:
        try:
            raise RuntimeError("connect redis://app:s3cret@db failed")
        except RuntimeError:
            get_logger("kiki_events.test").exception("run failed", extra={"run_id": "r-1"})
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(level)
    return stream.getvalue()


def test_json_lines_mask_secrets_and_keep_the_traceback() -> None:
    out = _log_failure(io.StringIO(), "json")
    entry = json.loads(out.strip().splitlines()[-1])
    assert entry["level"] == "error" and entry["logger"] == "kiki_events.test"
    assert entry["message"] == "run failed" and entry["run_id"] == "r-1"
    assert "Traceback" in entry["exception"] and "RuntimeError" in entry["exception"]
    assert "s3cret" not in out


def test_text_lines_mask_secrets() -> None:
    out = _log_failure(io.StringIO(), "text")
    assert "run failed" in out and "Traceback" in out
    assert "s3cret" not in out and "redis://app:***@db" in out


def test_configuring_twice_keeps_one_handler() -> None:
    level = logging.getLogger().level
    first = configure_logging(LoggingSettings(), stream=io.StringIO())
    second = configure_logging(LoggingSettings(), stream=io.StringIO())
    try:
        ours = [h for h in logging.getLogger().handlers if getattr(h, "_kiki", False)]
        assert ours == [second]
    finally:
        logging.getLogger().removeHandler(first)
        logging.getLogger().removeHandler(second)
        logging.getLogger().setLevel(level)
