"""Sinks: where events leave the process for operators.

Two kinds live here:

* per-event sinks (:class:`~.base.Sink`): the bus calls them for every event
  published on this node; the composition root builds the ones the settings turn
  on (:func:`kiki_events.runtime.build.build_sinks`), attaches them when the
  runtime starts and detaches and closes them when it stops. Ours is
  :mod:`.eventmetrics`, which keeps the event-fed Prometheus metrics, and
  :mod:`.history`, which feeds the durable event store (:mod:`kiki_events.history`);
* the Prometheus metrics themselves (:mod:`.metrics`, defined on the runtime's
  registry) and the copy of the runtime parts' counters into them (:mod:`.parts`).

Add a sink: one new file in ``sinks/`` with a class following :class:`~.base.Sink`
and a factory ``create(context: SinkContext) -> Sink | None`` (``None`` when its
settings turn it off; import heavy dependencies inside it), and one registration
line in :data:`SINKS` below. Nothing else changes.
"""

from . import eventmetrics, history
from .base import Sink, SinkContext, SinkFactory, SinkSet

__all__ = ["SINKS", "Sink", "SinkContext", "SinkFactory", "SinkSet"]

SINKS: tuple[SinkFactory, ...] = (
    # One line per sink, in attach order, e.g. ``stdout.create,``.
    eventmetrics.create,
    history.create,
)
"""The factories of every per-event sink, in the order their sinks are attached."""
