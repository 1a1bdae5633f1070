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
"""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_heap"]


def freeze_startup_heap() -> int:
    """Collect, then exempt every object alive now from full collections.

    Returns the number of objects frozen (:func:`gc.get_freeze_count`). Calling it
    again later freezes what was added meanwhile; :func:`gc.unfreeze` undoes it.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
