"""The seam through which a tracing backend follows every run a :class:`~.manager.RunManager` starts.

The manager asks its :class:`RunTracing` (``None``: no tracing, nothing changes) for
a :class:`RunTrace` when it starts a run, before the run is registered, and:

* adds ``callbacks`` beside its own handler and ``metadata`` to the run's config;
* stamps ``trace_id`` on the run's record (``GET /runs/{id}``) and on its ``done``;
* enters ``scope()`` in the task that runs the graph, around the whole run, so
  whatever the backend binds to the context reaches every step of the graph.

The backends live in :mod:`kiki_events.sinks`; this module knows none of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["RunTrace", "RunTracing", "TracedRun"]


@dataclass(frozen=True)
class TracedRun:
    """What a tracing backend is told about a run that starts."""

    run_id: str
    thread_id: str
    graph: str
    principal: str | None = None


def _no_scope() -> AbstractContextManager[object]:
    return contextlib.nullcontext()


@dataclass(frozen=True)
class RunTrace:
    """How one run is traced: what goes into its config, and its trace id."""

    trace_id: str | None = None
    """The run's trace id, known when it starts (``None``: not traced)."""
    callbacks: Sequence[Any] = ()
    """Callback handlers added beside the run's own."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """Entries added to the run's ``metadata``."""
    scope: Callable[[], AbstractContextManager[object]] = _no_scope
    """A context entered around the run, in the task that runs the graph."""


class RunTracing(Protocol):
    """A tracing backend: one :class:`RunTrace` per run, and a ``close`` at shutdown."""

    name: str

    def trace(self, run: TracedRun) -> RunTrace:
        """How to trace ``run``; quick, and never raises (a failure means an empty :class:`RunTrace`)."""
        ...

    def close(self) -> None:
        """Send what is buffered and stop (blocking: the runtime calls it in a worker thread)."""
        ...
