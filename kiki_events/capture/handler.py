"""Where LangChain/LangGraph callbacks become :data:`StreamEvent` objects.

:class:`KikiCallbackHandler` is synchronous and runs inline (``run_inline``): for
every callback it builds an event and hands it to its sink (usually
:meth:`EventBus.publish`, which never blocks). It never raises into the graph.

It is composed by concern: run and agent lifecycle (:mod:`.lifecycle`), LLM tokens
and usage (:mod:`.llm`), tool calls and results (:mod:`.tools`), custom and relayed
events (:mod:`.relay`), over the shared state and emitter (:mod:`.base`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TypeVar
from uuid import UUID

from .base import EventSink
from .ids import new_run_id, short_run_id
from .lifecycle import LifecycleMixin
from .llm import LLMMixin
from .relay import RelayMixin

__all__ = ["EventSink", "KikiCallbackHandler", "new_run_id", "short_run_id"]

T = TypeVar("T")


class KikiCallbackHandler(LifecycleMixin, LLMMixin, RelayMixin):
    """Turns one or more LangGraph runs into :data:`StreamEvent` objects.

    Attach it with ``graph.ainvoke(input, config={"callbacks": [handler]})``. Each
    root run gets its own ``run_id`` (derived from LangChain's run UUID, so pass
    ``config["run_id"]`` to choose it; see :func:`new_run_id`) and emits
    ``status`` (started) first and exactly one ``done`` last.

    Args:
        sink: an :class:`~kiki_events.core.bus.EventBus` (events go to its non-blocking
            ``publish``) or any callable taking an event. It must not block.
        node: name of this process, stamped on every event.
        thread_id: conversation id; default: LangGraph's ``configurable.thread_id``.
        graph_name: name reported in the ``started`` status; default: the root run's name.
        max_payload_chars: tool inputs/outputs and custom data are truncated to this.
        causation_id: what caused the runs this handler sees (e.g. another run's event id).
        prices: a :class:`~kiki_events.cost.PriceTable`, or a mapping of model name →
            price (a :class:`~kiki_events.cost.Price` or ``{"input": …, "output": …,
            "cached": …}`` in US dollars per million tokens): each ``llm`` event then
            carries ``cost_usd`` and each ``done`` a ``cost``. ``None``: no cost.
    """

    run_inline = True
    raise_error = False

    # -- pass-through taps: their presence makes chat models stream on invoke() --
    def tap_output_aiter(self, run_id: UUID, output: AsyncIterator[T]) -> AsyncIterator[T]:
        """Return ``output`` unchanged (its presence turns on token streaming)."""
        return output

    def tap_output_iter(self, run_id: UUID, output: Iterator[T]) -> Iterator[T]:
        """Return ``output`` unchanged (its presence turns on token streaming)."""
        return output
