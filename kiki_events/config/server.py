"""The ready-made server: ``server`` (with ``server.auth``) and ``sse``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field, field_validator

from ..errors import ConfigError
from .values import Duration, Section

__all__ = ["AuthSettings", "SSESettings", "ServerSettings"]


class SSESettings(Section):
    keepalive: Duration = 15.0
    """Interval of keep-alive comment lines."""
    retry: Duration = 2.0
    """Reconnect delay sent to browsers (``retry:``)."""
    send_timeout: Duration = 30.0
    """A client that accepts nothing for this long is dropped and its connection reset."""
    slow_client: Literal["skip", "disconnect"] = "skip"
    """A client that falls behind (out of the replay window, or more than ``max_backlog``
    events): skip ahead with a ``lagging`` notice, or disconnect."""
    max_backlog: int | None = Field(default=10000, ge=16)
    """Events of a live run a client may have waiting undelivered before ``slow_client``
    applies (its initial replay does not count); empty: only the replay window counts."""
    max_body_bytes: int = Field(default=262144, ge=1024)
    cors_origins: tuple[str, ...] = ()


_MIN_TOKEN_CHARS = 16


class AuthSettings(Section):
    """Authentication of the ready-made server (``kiki-events serve``)."""

    bearer_tokens: dict[str, str] = Field(default_factory=dict, repr=False)
    """Principal → API token (``Authorization: Bearer <token>``), e.g.
    ``{alice: "${ALICE_TOKEN}"}``. Empty: every request is anonymous."""

    @field_validator("bearer_tokens", mode="before")
    @classmethod
    def _tokens(cls, value: object) -> object:
        # Checked here, whole, so that no error message ever quotes a token.
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a mapping of principal to token, got a {type(value).__name__}")
        seen: set[str] = set()
        for principal, token in value.items():
            if not isinstance(principal, str) or not principal.strip() or len(principal) > 200:
                raise ConfigError(f"invalid principal {principal!r} (a non-empty name of at most 200 characters)")
            if not isinstance(token, str):
                raise ConfigError(f"the token of {principal!r} must be a string, not a {type(token).__name__}")
            if len(token) < _MIN_TOKEN_CHARS or token != token.strip() or any(c.isspace() for c in token):
                raise ConfigError(
                    f"the token of {principal!r} must be at least {_MIN_TOKEN_CHARS} characters without spaces"
                )
            if token in seen:
                raise ConfigError(f"the token of {principal!r} is also another principal's token")
            seen.add(token)
        return dict(value)


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    dashboard: bool = True
    auth: AuthSettings = AuthSettings()
    body_timeout: Duration = 5.0
    """Longest time a request body may take to arrive; slower ones get 408."""

    @field_validator("body_timeout")
    @classmethod
    def _positive_body_timeout(cls, value: float) -> float:
        if value <= 0:
            raise ConfigError("body_timeout must be more than 0s")
        return value
