"""Langfuse tracing of every run a run manager starts (the ``langfuse`` settings).

:func:`create` builds a :class:`LangfuseTracing` (a
:class:`~kiki_events.core.tracing.RunTracing`) when ``langfuse.enabled`` is true and
keys are found, in the settings or in ``LANGFUSE_PUBLIC_KEY`` /
``LANGFUSE_SECRET_KEY``. Each run then gets:

* Langfuse's own LangChain callback handler beside ours, with the run's trace id
  (derived from the run id, so it is known when the run starts);
* the trace attributes in the run's metadata (``langfuse_session_id``: the thread,
  ``langfuse_user_id``: the principal, ``langfuse_tags``, ``langfuse_trace_name``);
* the same attributes bound around the whole run in the task that runs the graph
  (Langfuse's ``propagate_attributes``), so that every span of an async graph,
  not only the root, carries them.

Unless ``langfuse.global_tracer_provider`` is true, the spans go through an
OpenTelemetry tracer provider of Langfuse's own, and the process-wide one is left
alone. ``langfuse`` and ``opentelemetry`` are imported inside :func:`create`.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ..core.tracing import RunTrace, TracedRun
from ..log import get_logger

if TYPE_CHECKING:
    from ..config import LangfuseSettings, Settings

__all__ = ["LangfuseTracing", "create"]

logger = get_logger("kiki_events.langfuse")


def create(settings: Settings, *, tracer_provider: Any = None, span_exporter: Any = None) -> LangfuseTracing | None:
    """Langfuse tracing as ``settings.langfuse`` asks, or ``None``.

    ``None`` when it is off, without keys (one warning), or with
    ``LANGFUSE_TRACING_ENABLED=false``.

    ``tracer_provider``: an OpenTelemetry ``TracerProvider`` to send the spans
    through (default: a new one, or the process-wide one with
    ``langfuse.global_tracer_provider``); ``span_exporter``: where Langfuse exports
    them (default: the Langfuse API at ``base_url``).
    """
    config = settings.langfuse
    if not config.enabled:
        return None
    public_key = config.public_key or os.environ.get("LANGFUSE_PUBLIC_KEY") or None
    secret_key = config.secret_key or os.environ.get("LANGFUSE_SECRET_KEY") or None
    if public_key is None or secret_key is None:
        missing = [
            f"langfuse.{name} (or LANGFUSE_{name.upper()})"
            for name, value in (("public_key", public_key), ("secret_key", secret_key))
            if value is None
        ]
        logger.warning("langfuse.enabled is true but %s is not set: runs are not traced", " nor ".join(missing))
        return None
    if os.environ.get("LANGFUSE_TRACING_ENABLED", "true").strip().lower() == "false":
        logger.info("LANGFUSE_TRACING_ENABLED is false: runs are not traced by Langfuse")
        return None
    from langfuse import Langfuse
    from opentelemetry.sdk.trace import TracerProvider

    if tracer_provider is None and not config.global_tracer_provider:
        tracer_provider = TracerProvider()
    client = Langfuse(
        public_key=public_key,
        secret_key=secret_key,
        base_url=config.base_url,
        environment=config.environment,
        release=config.release,
        sample_rate=config.sample_rate,
        tracer_provider=tracer_provider,
        span_exporter=span_exporter,
    )
    logger.info("tracing runs with Langfuse (public key %s)", public_key)
    return LangfuseTracing(client, public_key, config)


class LangfuseTracing:
    """Traces each run with a Langfuse callback handler of its own (see the module)."""

    name = "langfuse"

    def __init__(self, client: Any, public_key: str, settings: LangfuseSettings) -> None:
        from langfuse import propagate_attributes
        from langfuse.langchain import CallbackHandler
        from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

        self.client = client
        """The ``Langfuse`` client (one per public key in a process)."""
        self.public_key = public_key
        self.settings = settings
        self._handler = CallbackHandler
        self._propagate = propagate_attributes
        rate = settings.sample_rate
        self._sampler = TraceIdRatioBased(rate) if rate < 1.0 else None

    def trace_id_of(self, run_id: str) -> str:
        """The trace id of the run ``run_id`` (32 hex digits, derived from it)."""
        trace_id: str = self.client.create_trace_id(seed=run_id)
        return trace_id

    def sampled(self, trace_id: str) -> bool:
        """Whether ``langfuse.sample_rate`` keeps the trace ``trace_id`` (as OpenTelemetry's ratio sampler decides)."""
        if self._sampler is None:
            return True
        result = self._sampler.should_sample(None, int(trace_id, 16), "run")
        return bool(result.decision.is_sampled())  # type: ignore[no-untyped-call]

    def trace(self, run: TracedRun) -> RunTrace:
        """A handler of its own, the trace attributes and the scope binding them, for ``run``."""
        trace_id = self.trace_id_of(run.run_id)
        if not self.sampled(trace_id):
            return RunTrace()
        name = self.settings.trace_name or run.graph
        tags = list(self.settings.tags)
        metadata: dict[str, Any] = {"langfuse_session_id": run.thread_id, "langfuse_trace_name": name}
        if run.principal is not None:
            metadata["langfuse_user_id"] = run.principal
        if tags:
            metadata["langfuse_tags"] = tags
        handler = self._handler(public_key=self.public_key, trace_context={"trace_id": trace_id})

        def scope() -> AbstractContextManager[object]:
            scoped: AbstractContextManager[object] = self._propagate(
                session_id=run.thread_id, user_id=run.principal, tags=tags or None, trace_name=name
            )
            return scoped

        return RunTrace(trace_id=trace_id, callbacks=(handler,), metadata=metadata, scope=scope)

    def flush(self) -> None:
        """Send the spans buffered so far (blocking)."""
        self.client.flush()

    def close(self) -> None:
        """Send what is buffered (blocking).

        The client stays usable: Langfuse keeps one per public key in a process and
        shuts it down at exit.
        """
        self.client.flush()
