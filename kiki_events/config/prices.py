"""The ``prices`` section: what each model's tokens cost, for the cost on ``llm`` and ``done`` events.

Each key is a model name as the ``llm`` events report it (``gpt-4o-mini``) or
qualified by its provider (``openai:gpt-4o``, which wins over the plain name); each
value gives US dollars per million ``input``, ``output`` and (optionally)
``cached`` input tokens. Matching and pricing: :mod:`kiki_events.cost`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field

from ..cost import Price, PriceTable, check_model_name
from ..errors import ConfigError, KikiEventsError
from .loading import key_part
from .values import KeyProblem, Section

__all__ = ["ModelPrice", "check_prices", "price_table"]


def _not_a_boolean(value: object) -> object:
    if isinstance(value, bool):
        raise ConfigError("expected US dollars per million tokens, got a boolean")
    return value


def _not_negative(value: float) -> float:
    if value < 0:
        raise ConfigError("a price cannot be negative")
    return value


_Dollars = Annotated[float, BeforeValidator(_not_a_boolean), Field(allow_inf_nan=False), AfterValidator(_not_negative)]
"""US dollars per million tokens: a finite number, at least 0."""


class ModelPrice(Section):
    """One model's price, in US dollars per million tokens."""

    input: _Dollars
    """Input (prompt) tokens not read from the cache."""
    output: _Dollars
    """Output tokens, reasoning included."""
    cached: _Dollars | None = None
    """Input tokens read from the provider's prompt cache; not set: the ``input`` price."""

    def price(self) -> Price:
        """This price as the handlers use it."""
        return Price(self.input, self.output, self.cached)


def check_prices(prices: dict[str, ModelPrice]) -> dict[str, ModelPrice]:
    """``prices`` if every key can name a model (see :func:`kiki_events.cost.check_model_name`)."""
    for name in prices:
        try:
            check_model_name(name)
        except KikiEventsError as exc:
            raise KeyProblem(key_part(name), str(exc)) from None
    return prices


def price_table(prices: Mapping[str, ModelPrice]) -> PriceTable | None:
    """The table of ``prices``; ``None`` when it is empty (no prices: no cost on events)."""
    if not prices:
        return None
    return PriceTable({name: price.price() for name, price in prices.items()})
