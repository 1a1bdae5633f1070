"""What LLM calls cost: a price table, and the cost of a run's calls by model (no I/O).

Prices are US dollars per million tokens, per model: ``input``, ``output`` and
``cached`` (input tokens read from the provider's prompt cache; the ``input`` price
when not given). The token counts follow :class:`~kiki_events.events.Usage`:
``cached_tokens`` are part of ``input_tokens`` and ``reasoning_tokens`` part of
``output_tokens``, so a call costs::

    (input_tokens - cached_tokens) * input + cached_tokens * cached + output_tokens * output

divided by one million (reasoning is paid as output). A model is looked up by its
provider-qualified name first (``"openai:gpt-4o"``, the ``llm`` event's ``provider``
and ``model`` joined by a colon), then by its plain name (``"gpt-4o"``); names match
exactly (case and all). A model found under neither is *unpriced*: its calls and
tokens are counted, never priced by a guess. ``docs/config.md`` ("prices") has the YAML.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ArgumentTypeError, InvalidArgumentError
from .events import Cost, ModelCost, Usage

__all__ = [
    "MAX_MODEL_NAME",
    "PER_TOKENS",
    "CostTally",
    "Price",
    "PriceTable",
    "PricesLike",
    "check_model_name",
    "usage_minus",
    "usage_of",
]

PER_TOKENS = 1_000_000
"""Prices are per this many tokens."""
MAX_MODEL_NAME = 200
"""Longest model name (with its provider) a price table accepts."""
_DIGITS = 9
"""Dollar figures are rounded to nano-dollars (a float sum would show 0.30000000000000004)."""
_COUNTS = ("input_tokens", "output_tokens", "total_tokens", "reasoning_tokens", "cached_tokens")


def _price_value(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgumentTypeError(f"{what} must be a number of US dollars per million tokens; got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise InvalidArgumentError(f"{what} must be a finite number of at least 0; got {value!r}")
    return number


@dataclass(frozen=True, slots=True)
class Price:
    """The price of one model, in US dollars per million tokens."""

    input: float
    output: float
    cached: float | None = None
    """Input tokens read from the prompt cache; ``None``: the ``input`` price."""

    def __post_init__(self) -> None:
        _price_value(self.input, "input")
        _price_value(self.output, "output")
        if self.cached is not None:
            _price_value(self.cached, "cached")

    @classmethod
    def of(cls, value: Price | Mapping[str, Any], model: str = "price") -> Price:
        """``value`` if it is a Price, else one from a mapping with ``input``, ``output`` and ``cached``."""
        if isinstance(value, Price):
            return value
        if not isinstance(value, Mapping):
            raise ArgumentTypeError(f"the price of {model!r} must be a Price or a mapping; got {type(value).__name__}")
        unknown = sorted(str(key) for key in value if key not in ("input", "output", "cached"))
        if unknown:
            raise InvalidArgumentError(f"the price of {model!r} has unknown keys {unknown} (input, output, cached)")
        missing = [key for key in ("input", "output") if key not in value]
        if missing:
            raise InvalidArgumentError(f"the price of {model!r} needs {' and '.join(missing)}")
        cached = value.get("cached")
        return cls(
            _price_value(value["input"], f"{model}.input"),
            _price_value(value["output"], f"{model}.output"),
            None if cached is None else _price_value(cached, f"{model}.cached"),
        )

    def usd(self, usage: Usage) -> float:
        """What ``usage`` costs at this price, in US dollars (not rounded)."""
        inputs = usage.input_tokens
        cached = min(usage.cached_tokens, inputs)  # part of the input, never more
        cached_price = self.input if self.cached is None else self.cached
        dollars = (inputs - cached) * self.input + cached * cached_price + usage.output_tokens * self.output
        return dollars / PER_TOKENS


def check_model_name(name: object) -> str:
    """``name`` if it can key a price table: ``model`` or ``provider:model``, no spaces, not empty."""
    if not isinstance(name, str):
        raise ArgumentTypeError(f"a model name must be a string; got {type(name).__name__}")
    if not name or len(name) > MAX_MODEL_NAME or any(c.isspace() for c in name):
        raise InvalidArgumentError(
            f"a model name is 1 to {MAX_MODEL_NAME} characters without spaces, e.g. gpt-4o-mini or "
            f"openai:gpt-4o; got {name[:60]!r}"
        )
    if name.startswith(":") or name.endswith(":"):
        raise InvalidArgumentError(f"a provider-qualified model name is provider:model, both non-empty; got {name!r}")
    return name


class PriceTable(Mapping[str, Price]):
    """Prices by model name (``gpt-4o``) or provider-qualified name (``openai:gpt-4o``)."""

    __slots__ = ("_prices",)

    def __init__(self, prices: Mapping[str, Price | Mapping[str, Any]] | None = None) -> None:
        self._prices: dict[str, Price] = {}
        for name, price in (prices or {}).items():
            self._prices[check_model_name(name)] = Price.of(price, name)

    @classmethod
    def of(cls, prices: PricesLike) -> PriceTable | None:
        """``prices`` as a table (``None`` stays ``None``: no prices, no cost)."""
        if prices is None or isinstance(prices, PriceTable):
            return prices
        if not isinstance(prices, Mapping):
            raise ArgumentTypeError(f"prices must be a PriceTable or a mapping of model → price; got {prices!r}")
        return cls(prices)

    def price_of(self, model: str | None, provider: str | None = None) -> Price | None:
        """The price of ``model``: as ``provider:model`` first, then as ``model``; ``None``: unpriced."""
        if model is None:
            return None
        prices = self._prices
        if provider is not None:
            price = prices.get(f"{provider}:{model}")
            if price is not None:
                return price
        return prices.get(model)

    def __getitem__(self, name: str) -> Price:
        return self._prices[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    def __repr__(self) -> str:
        return f"PriceTable({self._prices!r})"


PricesLike = PriceTable | Mapping[str, Price | Mapping[str, Any]] | None
"""What a handler accepts as ``prices``: a table, a mapping of model → price, or ``None``."""


class _Entry:
    """One (model, provider)'s calls in a tally: count, token counts, and their cost."""

    __slots__ = ("calls", "counts", "usd")

    def __init__(self, priced: bool) -> None:
        self.calls = 0
        self.counts = [0, 0, 0, 0, 0]
        self.usd: float | None = 0.0 if priced else None


class CostTally:
    """The LLM calls of one run by model, priced as they are added.

    :meth:`add` takes own calls (one ``llm`` event each); :meth:`add_cost` takes a
    relayed run's :class:`Cost` (its models' usage, priced again with this table);
    :meth:`add_unknown` takes tokens whose model is not known. :meth:`cost` is the
    result, for the run's ``done``.
    """

    __slots__ = ("_entries", "prices")

    def __init__(self, prices: PriceTable) -> None:
        self.prices = prices
        self._entries: dict[tuple[str | None, str | None], _Entry] = {}

    def add(self, model: str | None, provider: str | None, usage: Usage, calls: int = 1) -> float | None:
        """Add ``calls`` calls of ``model`` that used ``usage``; returns their cost (``None``: unpriced)."""
        key = (model, provider)
        entry = self._entries.get(key)
        price = self.prices.price_of(model, provider)
        if entry is None:
            entry = self._entries[key] = _Entry(price is not None)
        entry.calls += calls
        counts = entry.counts
        values = usage.__dict__
        for i, name in enumerate(_COUNTS):
            counts[i] += values[name]
        if price is None or entry.usd is None:
            return None
        usd = price.usd(usage)
        entry.usd += usd
        return round(usd, _DIGITS)

    def add_cost(self, cost: Cost) -> None:
        """Add a relayed run's calls, by the models its ``done``'s ``cost`` lists."""
        for item in cost.models:
            self.add(item.model, item.provider, item.usage, item.calls)

    def add_unknown(self, usage: Usage, calls: int = 0) -> None:
        """Add tokens of calls whose model is not known (unpriced), if there are any."""
        if any(usage.__dict__.values()) or calls:
            self.add(None, None, usage, calls)

    def usage(self) -> Usage:
        """Every token added so far."""
        totals = [0, 0, 0, 0, 0]
        for entry in self._entries.values():
            for i, count in enumerate(entry.counts):
                totals[i] += count
        return Usage(**dict(zip(_COUNTS, totals, strict=True)))

    def cost(self) -> Cost:
        """What the calls added so far cost."""
        models = []
        total = 0.0
        unpriced_calls = unpriced_tokens = 0
        for (model, provider), entry in self._entries.items():
            usage = Usage(**dict(zip(_COUNTS, entry.counts, strict=True)))
            if entry.usd is None:
                unpriced_calls += entry.calls
                unpriced_tokens += usage.total_tokens
            else:
                total += entry.usd
            usd = None if entry.usd is None else round(entry.usd, _DIGITS)
            models.append(ModelCost(model=model, provider=provider, calls=entry.calls, usage=usage, usd=usd))
        return Cost(
            total_usd=round(total, _DIGITS),
            unpriced_calls=unpriced_calls,
            unpriced_tokens=unpriced_tokens,
            models=tuple(models),
        )


def usage_minus(usage: Usage, seen: Usage) -> Usage:
    """``usage`` less ``seen``, field by field, never below zero."""
    return Usage(**{name: max(getattr(usage, name) - getattr(seen, name), 0) for name in _COUNTS})


def usage_of(cost: Cost) -> Usage:
    """The tokens of every model ``cost`` lists, added up."""
    totals = dict.fromkeys(_COUNTS, 0)
    for item in cost.models:
        for name in _COUNTS:
            totals[name] += getattr(item.usage, name)
    return Usage(**totals)
