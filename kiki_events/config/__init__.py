"""Settings: one YAML file switches every layer.

``load_settings(path)`` reads YAML, expands ``${VAR}`` and ``${VAR:-default}``,
applies environment overrides (``KIKI__SECTION__KEY=value``, e.g.
``KIKI__EVENTBUS__PROVIDER=redis``) and validates. Any problem is one
:class:`~kiki_events.errors.ConfigError` naming the file, the key and the problem,
raised before anything starts.

Every key, its default and its meaning: ``docs/config.md``. The sections live in
one module per concern (:mod:`.eventbus`, :mod:`.runs`, :mod:`.server`,
:mod:`.observability`, :mod:`.prices`, :mod:`.store`); reading the file is :mod:`.loading`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from ..cost import PriceTable
from ..errors import ConfigError
from .addresses import check_redis_url
from .eventbus import (
    PROVIDERS,
    EventBusSettings,
    PersistenceSettings,
    PublishSettings,
    RedisSettings,
    SubscribeSettings,
)
from .loading import ENV_PREFIX, describe, read_settings_data
from .observability import LangfuseSettings, LoggingSettings, MetricsSettings
from .prices import ModelPrice, check_prices, price_table
from .runs import CheckpointerSettings, HandlerSettings, HandoffSettings, RunSettings, resolve_concurrency
from .server import AuthSettings, ServerSettings, SSESettings
from .store import StoreSettings
from .values import Duration, KeyProblem, Section, parse_duration

__all__ = [
    "ENV_PREFIX",
    "PROVIDERS",
    "AuthSettings",
    "CheckpointerSettings",
    "Duration",
    "EventBusSettings",
    "HandlerSettings",
    "HandoffSettings",
    "LangfuseSettings",
    "LoggingSettings",
    "MetricsSettings",
    "ModelPrice",
    "PersistenceSettings",
    "PublishSettings",
    "RedisSettings",
    "RunSettings",
    "SSESettings",
    "ServerSettings",
    "Settings",
    "StoreSettings",
    "SubscribeSettings",
    "check_redis_url",
    "load_settings",
    "parse_duration",
    "resolve_concurrency",
]


class Settings(Section):
    """The whole configuration."""

    node: str | None = None
    """Name of this process in events (default: host name and pid)."""
    eventbus: EventBusSettings = EventBusSettings()
    sse: SSESettings = SSESettings()
    runs: RunSettings = RunSettings()
    handler: HandlerSettings = HandlerSettings()
    handoff: HandoffSettings = HandoffSettings()
    metrics: MetricsSettings = MetricsSettings()
    langfuse: LangfuseSettings = LangfuseSettings()
    logging: LoggingSettings = LoggingSettings()
    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    graphs: dict[str, str] = Field(default_factory=dict)
    """Graph name → reference like ``./agents/research_team.py:graph``."""
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    """Model name (or ``provider:model``) → its price per million tokens; empty: no cost on events."""

    @field_validator("prices", mode="before")
    @classmethod
    def _empty_prices(cls, value: object) -> object:
        return {} if value is None else value  # ``prices:`` with every entry commented out

    @field_validator("prices")
    @classmethod
    def _model_names(cls, value: dict[str, ModelPrice]) -> dict[str, ModelPrice]:
        return check_prices(value)

    @property
    def price_table(self) -> PriceTable | None:
        """The ``prices`` as the handlers use them; ``None`` when there are none."""
        return price_table(self.prices)

    @model_validator(mode="after")
    def _serving_needs_redis(self) -> Settings:
        bus = self.eventbus
        if self.handoff.serve and (bus.provider != "redis" or not bus.enabled):
            raise KeyProblem(
                "handoff.serve",
                f"serving agents to other nodes needs eventbus.provider: redis (it is {bus.provider!r}"
                + ("" if bus.enabled else ", and eventbus.enabled is false")
                + ")",
            )
        return self

    @property
    def handoff_concurrency(self) -> int:
        """Tasks of one agent this node runs at once: ``handoff.concurrency``, else ``eventbus.subscribe.workers``."""
        return resolve_concurrency(self.handoff, self.eventbus)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "settings") -> Settings:
        """Validate a mapping; raises :class:`ConfigError` naming the key."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(describe(exc, source)) from None


def load_settings(path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Load, expand and validate settings from ``path`` (defaults only if ``None``).

    Raises:
        ConfigError: the file is missing, not YAML, or a key is unknown or invalid.
    """
    env = os.environ if environ is None else environ
    source = str(path) if path is not None else "defaults"
    return Settings.from_mapping(read_settings_data(path, env), source=source)
