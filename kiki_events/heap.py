"""Keep start-up objects out of the garbage collector's full passes.

A server process imports LangChain, LangGraph, FastAPI and pydantic and builds its
graphs before it serves anything: a few hundred thousand objects that live as long
as the process. CPython's full (generation 2) collections walk all of them, and on
a small machine one such pass stalls the event loop for tens of milliseconds —
which readers see as stream latency (measured with ``benchmarks/bridge.py``: p99
publish-to-delivery of ~50 ms on node B without this, ~4 ms with it).

:func:`freeze_startup_heap` collects once, then moves every surviving object into
the collector's permanent generation (:func:`gc.freeze`), so later passes only look
at what the process allocates while serving. ``kiki-events serve`` calls it once
the app is built; call it yourself at the end of your own app's start-up (for
example at the end of a FastAPI ``lifespan`` start) if you embed the runtime.
It changes process-wide collector state, so the library never calls it on its own.

:func:`tune_collector` sets the collector's thresholds for serving. Under load a
server allocates tracked objects fast (messages and chunks per token, the events
kept for replay), and with CPython's defaults (700, 10, 10) that means hundreds of
young passes a second, objects that live as long as a run promoted into the old
generation, and a full pass every second or so. With 200 clients streaming the demo
(``benchmarks/load.py``, Python 3.11) the collector took about a third of the
server's CPU, nearly all of it full passes; with :data:`SERVING_THRESHOLDS` about a
tenth. A young pass then waits for 50,000 new objects (a few milliseconds each),
so most short-lived objects are freed by reference counting before any pass sees
them, and few reach the old generation. Cyclic garbage waits a little longer; peak
memory was the same. ``kiki-events serve`` calls it; embedders may call it too.
"""

from __future__ import annotations

import gc

from .errors import InvalidArgumentError

__all__ = ["SERVING_THRESHOLDS", "freeze_startup_heap", "tune_collector"]

SERVING_THRESHOLDS = (50_000, 20, 10)
"""Collector thresholds for a serving process (see the module docstring)."""


def freeze_startup_heap() -> int:
    """Collect, then exempt every object alive now from full collections.

    Returns the number of objects frozen (:func:`gc.get_freeze_count`). Calling it
    again later freezes what was added meanwhile; :func:`gc.unfreeze` undoes it.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def tune_collector(thresholds: tuple[int, int, int] = SERVING_THRESHOLDS) -> tuple[int, int, int]:
    """Set the collector's thresholds (:func:`gc.set_threshold`); returns the previous ones.

    Raises:
        ValueError: a threshold is not positive.
    """
    if len(thresholds) != 3 or any(value < 1 for value in thresholds):
        raise InvalidArgumentError(f"thresholds must be three positive numbers; got {thresholds!r}")
    previous = gc.get_threshold()
    gc.set_threshold(*thresholds)
    return previous
