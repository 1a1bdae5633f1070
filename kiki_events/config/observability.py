"""What operators see: ``metrics``, ``logging`` and the reserved ``langfuse`` section."""

from __future__ import annotations

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


class LangfuseSettings(Section):
    """Reserved for Langfuse tracing, which is not built yet.

    The keys are accepted so that existing files keep loading, and nothing reads
    them; ``enabled: true`` is refused rather than silently doing nothing.
    """

    enabled: bool = False
    public_key: str | None = None
    secret_key: str | None = Field(default=None, repr=False)
    base_url: str | None = None

    @field_validator("enabled")
    @classmethod
    def _not_available(cls, value: bool) -> bool:
        if value:
            raise ConfigError(
                "Langfuse tracing is not available yet; set enabled: false or remove the langfuse section"
            )
        return value


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    log_content: bool = False
    """Log prompt/output text (off by default)."""
