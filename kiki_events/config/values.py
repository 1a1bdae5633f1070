"""Shared pieces of the settings: the section base, durations, and per-key problems."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict

from ..errors import ConfigError

__all__ = ["Duration", "KeyProblem", "Section", "parse_duration"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# ``[0-9]``, not ``\d``: a duration is written in ASCII digits (``\d`` also matches ``٣``).
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: object) -> float:
    """``5``, ``"5s"``, ``"250ms"``, ``"2m"``, ``"1h"``, ``"7d"`` → seconds."""
    if isinstance(value, bool):
        raise ConfigError("expected a duration such as 5s or 250ms, got a boolean")
    if isinstance(value, int | float):
        # An int beyond any float (YAML reads them) is as infinite as ``.inf``.
        seconds = float(value) if isinstance(value, float) or abs(value) < 2**1023 else math.inf
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ConfigError(f"expected a duration such as 5s or 250ms, got {value!r}")
    if not math.isfinite(seconds):
        raise ConfigError(f"a duration must be a finite number of seconds, got {value!r}")
    if seconds < 0:
        raise ConfigError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class KeyProblem(ConfigError):
    """A problem of the whole settings that belongs to one key (``key``), for the error message."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
