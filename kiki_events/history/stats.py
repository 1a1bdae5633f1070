"""What :meth:`EventStore.stats <kiki_events.history.base.EventStore.stats>` returns: figures over stored runs.

A :class:`Stats` holds the figures of every run selected (``total``) and, with
``by``, of each group of them (``groups``): runs by status, durations, LLM calls,
tokens by type, time to first token, tool calls and failures, and cost (what the
priced calls cost, and how many calls and tokens had no price). The SQL that
computes them, in the database, is :mod:`.statsql`; ``docs/history.md``
("Statistics") is the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypeAlias, get_args

from pydantic import BaseModel, ConfigDict

from ..errors import InvalidArgumentError
from ..events import Usage

__all__ = [
    "STATS_KEYS",
    "RunStatuses",
    "Spread",
    "Stats",
    "StatsCost",
    "StatsGroup",
    "StatsKey",
    "parse_statuses",
]

_Status: TypeAlias = Literal["running", "success", "error", "interrupted", "cancelled"]
"""``base.StoredStatus`` (repeated: ``base`` imports this module's types)."""

StatsKey: TypeAlias = Literal["run", "thread", "agent", "graph", "model"]
"""What ``stats(by=…)`` groups by."""
STATS_KEYS: tuple[StatsKey, ...] = ("run", "thread", "agent", "graph", "model")

_DIGITS = 9
"""Dollar figures are rounded to nano-dollars, as a run's cost is."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RunStatuses(_Frozen):
    """Runs by status (``running``: no ``done`` stored yet)."""

    running: int = 0
    success: int = 0
    error: int = 0
    interrupted: int = 0
    cancelled: int = 0


class Spread(_Frozen):
    """A distribution of durations in seconds: how many, their sum, mean, percentiles and maximum.

    Percentiles are nearest-rank: ``p95`` is the smallest value at least 95 % of the
    values are not above. Every figure but ``count`` and ``total`` is ``None`` when
    ``count`` is 0.
    """

    count: int = 0
    total: float = 0.0
    mean: float | None = None
    p50: float | None = None
    p95: float | None = None
    max: float | None = None


class StatsCost(_Frozen):
    """The cost of the LLM calls counted, from each ``llm`` event's ``cost_usd``.

    A call without a ``cost_usd`` (its model has no price in the price table of the
    node that ran it, or that node has none) is *unpriced*: counted in
    ``unpriced_calls`` and ``unpriced_tokens``, never priced by a guess.
    """

    usd: float = 0.0
    """What the priced calls cost, in US dollars."""
    priced_calls: int = 0
    unpriced_calls: int = 0
    unpriced_tokens: int = 0
    """The ``total_tokens`` of the unpriced calls."""


class StatsGroup(_Frozen):
    """The figures of one group of runs (or of every run selected, as ``Stats.total``)."""

    key: str | None = None
    """The run id, thread id, agent path, graph or model of the group (``None``: runs or calls without one)."""
    runs: int = 0
    """Runs in the group (by agent: runs the agent produced events in; by model: runs that called it)."""
    statuses: RunStatuses = RunStatuses()
    duration_s: Spread = Spread()
    """The runs' durations (runs that ended)."""
    llm_calls: int = 0
    tokens: Usage = Usage()
    """The LLM calls' tokens by type (``cached``: part of ``input``; ``reasoning``: part of ``output``)."""
    ttft_s: Spread = Spread()
    """Time to first token of the calls that streamed."""
    tool_calls: int | None = 0
    """Tool results (calls that ran); ``None`` by model (a tool call belongs to no model)."""
    tool_errors: int | None = 0
    """Tool results carrying an error; ``None`` by model."""
    cost: StatsCost = StatsCost()


class Stats(_Frozen):
    """Figures over the runs a principal may see, started in ``[since, until)`` and matching the filters."""

    by: StatsKey | None = None
    since: float | None = None
    until: float | None = None
    total: StatsGroup = StatsGroup()
    """Every run selected (never cut by ``limit``)."""
    groups: list[StatsGroup] = []
    """One per key, in key order (``None`` first, then by code point); empty without ``by``."""
    truncated: bool = False
    """More groups than ``limit``: the first ``limit`` are given."""


def spread(count: Any, total: Any, top: Any, p50: Any, p95: Any) -> Spread:
    """A :class:`Spread` from database figures (``Decimal``, ``int``, ``float`` or ``None``)."""
    n = int(count or 0)
    if n == 0:
        return Spread()
    whole = float(total or 0.0)
    return Spread(
        count=n,
        total=whole,
        mean=whole / n,
        p50=None if p50 is None else float(p50),
        p95=None if p95 is None else float(p95),
        max=None if top is None else float(top),
    )


def dollars(value: Any) -> float:
    """A sum of dollars from the database, rounded to nano-dollars."""
    return round(float(value or 0.0), _DIGITS)


def whole(value: Any) -> int:
    """A count or sum of counts from the database (``None`` for an empty sum)."""
    return int(value or 0)


def parse_statuses(value: str | Sequence[str] | None) -> list[_Status] | None:
    """``"success,error"`` (or ``["success", "error"]``, or ``["success,error"]``) → ``["success", "error"]``
    (``None``: any status).

    Raises:
        InvalidArgumentError: an unknown status (or an empty one).
    """
    if value is None:
        return None
    known: tuple[str, ...] = get_args(_Status)
    values = [value] if isinstance(value, str) else list(value)
    statuses = [part.strip() for item in values for part in item.split(",")]
    unknown = [s for s in statuses if s not in known]
    if unknown:
        raise InvalidArgumentError(f"status: {unknown[0]!r} is not one of {', '.join(known)}")
    return statuses  # type: ignore[return-value]
