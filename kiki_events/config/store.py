"""The ``store`` section: the durable event store (history that outlives the process)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..errors import ConfigError
from .values import Duration, KeyProblem, Section

__all__ = ["StoreSettings"]


class StoreSettings(Section):
    """Where runs and their events are kept after they leave memory (off unless turned on)."""

    enabled: bool = False
    """Store every run this node executes, with its events (``kiki_events.history``)."""
    backend: Literal["sqlite", "postgres"] = "sqlite"
    """``sqlite`` (a file; one node) or ``postgres`` (a database several nodes may share)."""
    path: str = "kiki-history.sqlite"
    """The SQLite file (``backend: sqlite``), relative to the working directory."""
    dsn: str | None = Field(default=None, repr=False)
    """The PostgreSQL connection string (``backend: postgres``); never shown in ``repr``."""
    scope: Literal["local", "all"] = "local"
    """``local``: the runs this node executes; ``all``: also the runs of other nodes it receives."""
    batch_size: int = Field(default=500, ge=1, le=100_000)
    """Most events written in one transaction."""
    flush_interval: Duration = 0.005
    """Longest time a first event waits for others to join its batch."""
    buffer_size: int = Field(default=100_000, ge=1, le=10_000_000)
    """Events waiting to be written (e.g. while the database is down); beyond it new ones are dropped and counted."""
    retention_days: float | None = Field(default=30, gt=0, allow_inf_nan=False)
    """Finished runs older than this are deleted (``null``: kept for ever)."""
    pool_size: int = Field(default=10, ge=1, le=100)
    """PostgreSQL connections open at most."""

    @field_validator("dsn", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.strip():
            raise ConfigError("must name a file, e.g. kiki-history.sqlite")
        return value

    @field_validator("flush_interval")
    @classmethod
    def _short_flush(cls, value: float) -> float:
        if value > 1.0:
            raise ConfigError(f"flush_interval longer than 1s would hold events back; use a few ms (got {value}s)")
        return value

    @model_validator(mode="after")
    def _backend_needs_its_key(self) -> StoreSettings:
        if self.backend == "postgres" and self.dsn is None:
            raise KeyProblem("dsn", "backend: postgres needs a dsn, e.g. postgresql://user@host/db")
        if self.backend == "sqlite" and self.dsn is not None:
            raise KeyProblem("dsn", "dsn is only read with backend: postgres (backend is sqlite)")
        if self.batch_size > self.buffer_size:
            raise KeyProblem(
                "batch_size", f"batch_size {self.batch_size} is larger than buffer_size {self.buffer_size}"
            )
        return self
