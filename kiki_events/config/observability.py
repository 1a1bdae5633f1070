"""What operators see: ``metrics``, ``logging`` and ``langfuse`` tracing."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from ..errors import ConfigError
from .values import Section

__all__ = ["LangfuseSettings", "LoggingSettings", "MetricsSettings"]


class MetricsSettings(Section):
    enabled: bool = True
    """Define the ``kiki_`` Prometheus metrics and serve them at ``path``."""
    path: str = "/metrics"

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ConfigError("must start with '/', e.g. /metrics")
        return value


_TRACE_TEXT = 200
"""Langfuse keeps a trace's name and tags only when they are ASCII and at most this long."""


_ENVIRONMENT = re.compile(r"(?!langfuse)[a-z0-9_-]{1,40}")


def _trace_text(value: str, what: str) -> str:
    if not value or len(value) > _TRACE_TEXT or not value.isascii():
        raise ConfigError(f"a {what} must be 1 to {_TRACE_TEXT} ASCII characters, got {value[:40]!r}")
    return value


class LangfuseSettings(Section):
    """Langfuse tracing of every run this node starts (off by default).

    The keys may also come from the environment Langfuse reads
    (``LANGFUSE_PUBLIC_KEY``, ``LANGFUSE_SECRET_KEY``, ``LANGFUSE_BASE_URL`` or
    ``LANGFUSE_HOST``); a key in this section wins.
    """

    enabled: bool = False
    public_key: str | None = None
    secret_key: str | None = Field(default=None, repr=False)
    base_url: str | None = None
    environment: str | None = None
    """The Langfuse environment of the traces (Langfuse's own default when not set)."""
    release: str | None = None
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    """Share of runs traced (decided by the run's trace id)."""
    tags: tuple[str, ...] = ()
    """Tags on every trace."""
    trace_name: str | None = None
    """The name of every trace (default: the graph's name)."""
    global_tracer_provider: bool = False
    """Use, or install when there is none, the process-wide OpenTelemetry tracer provider."""

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_trace_text(tag, "tag") for tag in value)

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: str | None) -> str | None:
        if value is not None and not _ENVIRONMENT.fullmatch(value):
            raise ConfigError(
                f"an environment is 1 to 40 of a-z, 0-9, - and _, not starting with 'langfuse'; got {value[:60]!r}"
            )
        return value

    @field_validator("trace_name")
    @classmethod
    def _trace_name(cls, value: str | None) -> str | None:
        return None if value is None else _trace_text(value, "trace name")


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    log_content: bool = False
    """Log prompt/output text (off by default)."""
