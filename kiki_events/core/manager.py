"""Running graphs on this node: start, track, cancel and shut down graph runs.

:class:`RunManager` starts registered graphs as asyncio tasks with a
:class:`~kiki_events.capture.handler.KikiCallbackHandler` attached, admits at most
``runs.max_active`` at once, cancels them, and shuts them down gracefully. Every run
ends with exactly one ``done`` event, whatever happened to its task
(:func:`execute_run`, :func:`ensure_done`); the run's record lives in the
:class:`~kiki_events.core.store.RunStore`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

from langchain_core.runnables import RunnableConfig
from langgraph.pregel import Pregel

from ..capture.handler import KikiCallbackHandler, new_run_id
from ..config import HandlerSettings, RunSettings
from ..cost import PriceTable
from ..errors import RunError, RunLimitError
from ..events import RunStatus
from ..log import bind, get_logger
from .bus import EventBus
from .graphs import GraphRegistry
from .runrecord import RunRecord
from .store import RunStore
from .threads import new_thread_id
from .tracing import RunTrace, RunTracing, TracedRun

__all__ = ["RunHandle", "RunManager", "ensure_done", "execute_run"]

logger = get_logger("kiki_events.runs")


async def execute_run(
    graph: Any,
    input: Any,
    config: Mapping[str, Any],
    handler: KikiCallbackHandler,
    run_id: str,
    *,
    label: str,
    scope: Callable[[], AbstractContextManager[object]] | None = None,
) -> RunStatus:
    """Run ``graph`` and make sure ``run_id`` ends with exactly one ``done``.

    The graph's exception is logged with its traceback here and becomes the run's
    ``error`` status (its client sees only the redacted message); cancellation
    becomes ``cancelled`` and is re-raised. ``scope`` (a run's tracing,
    :attr:`.RunTrace.scope`) is entered around the graph, in this task.
    """
    # The task's own context: every record logged while the run executes carries its ids.
    with bind(run_id=run_id, thread_id=handler.thread_id):
        return await _execute(graph, input, config, handler, run_id, label, scope)


async def _execute(
    graph: Any,
    input: Any,
    config: Mapping[str, Any],
    handler: KikiCallbackHandler,
    run_id: str,
    label: str,
    scope: Callable[[], AbstractContextManager[object]] | None,
) -> RunStatus:
    try:
        if scope is None:
            await _consume(graph, input, config, handler, run_id)
        else:
            with scope():
                await _consume(graph, input, config, handler, run_id)
    except asyncio.CancelledError:
        handler.finish_run(run_id, "cancelled")
        raise
    except Exception as exc:
        # The whole traceback goes to the server log, with secrets in its text
        # masked; the client gets only the handler's redacted one-line message.
        logger.error("run %s of graph %r failed", run_id, label, exc_info=exc)
        handler.finish_run(run_id, "error", exc)
        return "error"
    except BaseException:
        handler.finish_run(run_id, "cancelled")
        raise
    handler.finish_run(run_id, "success")
    return "success"


async def _consume(
    graph: Any, input: Any, config: Mapping[str, Any], handler: KikiCallbackHandler, run_id: str
) -> None:
    """Run ``graph`` to its end; what its nodes write with LangGraph's stream writer becomes events.

    Any other runnable is invoked.
    """
    if not isinstance(graph, Pregel):
        await graph.ainvoke(input, config=dict(config))
        return
    async for namespace, data in graph.astream(
        input, cast(RunnableConfig, dict(config)), stream_mode="custom", subgraphs=True
    ):
        handler.on_stream_write(run_id, namespace, data)


def ensure_done(task: asyncio.Task[RunStatus], handler: KikiCallbackHandler, run_id: str) -> None:
    """Give ``run_id`` its ``done`` if its task ended without one (idempotent).

    A task cancelled before its first step never executes :func:`execute_run`'s
    body, so the task's done callback is the only place that sees it.
    """
    if task.cancelled():
        handler.finish_run(run_id, "cancelled")
        return
    error = task.exception()
    if error is not None:  # execute_run handles Exception; this is a BaseException
        logger.error("run %s task crashed", run_id, exc_info=error, extra={"run_id": run_id})
        handler.finish_run(run_id, "error", error)
    else:
        handler.finish_run(run_id, task.result())


@dataclass(eq=False)
class RunHandle:
    """A run started by :meth:`RunManager.start`."""

    run_id: str
    thread_id: str
    graph: str
    record: RunRecord
    task: asyncio.Task[RunStatus]


class RunManager:
    """Starts, tracks, cancels and shuts down graph runs on this node."""

    def __init__(
        self,
        *,
        bus: EventBus,
        store: RunStore,
        graphs: GraphRegistry,
        settings: RunSettings | None = None,
        handler_settings: HandlerSettings | None = None,
        node: str | None = None,
        tracing: RunTracing | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self.bus = bus
        self.store = store
        self.graphs = graphs
        self.settings = settings or RunSettings()
        self.handler_settings = handler_settings or HandlerSettings()
        self.node = node
        self.tracing = tracing
        """Traces every run this manager starts (:mod:`.tracing`); ``None``: no tracing."""
        self.prices = prices
        """The price table every run's handler prices its LLM calls with (``prices``); ``None``: no cost."""
        self.started = 0
        """Runs started since creation."""
        self.finished: dict[str, int] = {}
        """Runs ended on this node, by final status."""
        self.handler_errors: dict[str, int] = {}
        """Failures inside the callback handlers of ended runs, by exception class name."""
        self.configurable: dict[str, Any] = {}
        """Entries added to every run's ``configurable`` (the composition root adds what graph nodes look up)."""
        self._tasks: dict[str, asyncio.Task[RunStatus]] = {}
        self._closing = False

    @property
    def active(self) -> int:
        """Runs executing on this node now."""
        return len(self._tasks)

    @property
    def closing(self) -> bool:
        """Whether :meth:`shutdown` began; new runs are refused."""
        return self._closing

    def start(
        self,
        graph_name: str,
        input: Any,
        *,
        thread_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        principal: str | None = None,
        handler_factory: Callable[..., KikiCallbackHandler] = KikiCallbackHandler,
        relayed_into: str | None = None,
        checkpointed: bool = True,
    ) -> RunHandle:
        """Start a run of the graph registered as ``graph_name``; returns at once.

        ``checkpointed=False`` runs the graph as it was registered, without the
        checkpointer the registry lends (``runs.checkpointer``): for work done for
        another run on its thread (a handoff), whose state must not mix with the
        thread's own conversation.

        ``relayed_into``: the run whose stream carries this run's events (it
        delegated the work and relays it); the thread then lists only that run.

        Raises:
            UnknownGraphError: no such graph.
            RunLimitError: ``runs.max_active`` runs are executing already.
            RunNotFoundError: ``thread_id`` belongs to another principal.
            RunError: the manager is shutting down.
        """
        graph = self._admit(graph_name, checkpointed)
        thread_id = thread_id or new_thread_id()
        run_uuid, run_id = new_run_id()
        trace = self._trace(TracedRun(run_id, thread_id, graph_name, principal))
        record = self.store.create(
            run_id,
            thread_id=thread_id,
            graph=graph_name,
            principal=principal,
            node=self.node,
            relayed_into=relayed_into,
            trace_id=trace.trace_id,
        )
        handler = handler_factory(
            self.bus,
            node=self.node,
            thread_id=thread_id,
            graph_name=graph_name,
            max_payload_chars=self.handler_settings.max_payload_chars,
            prices=self.prices,
        )
        handler.trace_id = trace.trace_id
        config = _run_config(handler, run_uuid, run_id, thread_id, metadata, self.configurable, trace, principal)
        scope = trace.scope if self.tracing is not None else None
        task = asyncio.get_running_loop().create_task(
            execute_run(graph, input, config, handler, run_id, label=graph_name, scope=scope), name=f"kiki-run:{run_id}"
        )
        self._tasks[run_id] = task
        self.started += 1
        task.add_done_callback(lambda t: self._finished_task(run_id, record, handler, t))
        return RunHandle(run_id, thread_id, graph_name, record, task)

    def _trace(self, run: TracedRun) -> RunTrace:
        """The tracing of ``run``; a failing backend costs the run its trace, never the run."""
        if self.tracing is None:
            return _UNTRACED
        try:
            return self.tracing.trace(run)
        except Exception:
            logger.exception("%s could not trace run %s; the run goes on untraced", self.tracing.name, run.run_id)
            return _UNTRACED

    def _admit(self, graph_name: str, checkpointed: bool = True) -> Any:
        """The graph registered as ``graph_name``, if a new run of it may start now.

        Raises:
            RunError: the manager is shutting down.
            UnknownGraphError: no such graph.
            RunLimitError: ``runs.max_active`` runs are executing already.
        """
        if self._closing:
            raise RunError("the server is shutting down; no new runs are accepted")
        graph = self.graphs.get(graph_name, lent=checkpointed)
        if len(self._tasks) >= self.settings.max_active:
            raise RunLimitError(f"{self.settings.max_active} runs are executing already (runs.max_active); retry later")
        return graph

    def _finished_task(
        self, run_id: str, record: RunRecord, handler: KikiCallbackHandler, task: asyncio.Task[RunStatus]
    ) -> None:
        self._tasks.pop(run_id, None)
        ensure_done(task, handler, run_id)
        if not record.ended:
            # The final ``done`` never reached the store (bus full or closed):
            # still end the record so readers stop waiting.
            logger.warning(
                "run %s ended without its done event reaching the run store", run_id, extra={"run_id": run_id}
            )
            record.log.close()
            record.ended_at = time.time()
        status = record.status
        self.finished[status] = self.finished.get(status, 0) + 1
        for kind, count in handler.error_types.items():
            self.handler_errors[kind] = self.handler_errors.get(kind, 0) + count

    def get(self, run_id: str, principal: str | None = None) -> RunRecord:
        """See :meth:`RunStore.get`."""
        return self.store.get(run_id, principal)

    def cancel(self, run_id: str, principal: str | None = None) -> RunRecord:
        """Ask the run's task to stop; a run that already ended stays ended.

        Raises:
            RunNotFoundError: unknown here, or someone else's.
        """
        record = self.store.get(run_id, principal)
        task = self._tasks.get(run_id)
        if task is not None and not record.ended:
            task.cancel()
        return record

    async def cancel_and_wait(self, run_id: str, principal: str | None = None, *, timeout: float = 5.0) -> RunRecord:
        """:meth:`cancel`, then wait up to ``timeout`` for the run to end."""
        record = self.cancel(run_id, principal)
        task = self._tasks.get(run_id)
        if task is not None:
            await asyncio.wait({task}, timeout=timeout)
        return record

    def is_local(self, run_id: str) -> bool:
        """Whether the run executes on this node (so :meth:`cancel` can stop it)."""
        return run_id in self._tasks

    async def shutdown(self, grace: float | None = None) -> None:
        """Refuse new runs, give running ones ``grace`` seconds, cancel the rest, await all."""
        self._closing = True
        grace = self.settings.shutdown_grace if grace is None else grace
        tasks = list(self._tasks.values())
        if not tasks:
            return
        logger.info("waiting up to %.1fs for %d run(s) to finish", grace, len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=grace) if grace > 0 else (set(), set(tasks))
        for task in pending:
            task.cancel()
        if pending:
            logger.info("cancelled %d run(s) still executing after the grace period", len(pending))
        await asyncio.gather(*tasks, return_exceptions=True)


_UNTRACED = RunTrace()


def _run_config(
    handler: KikiCallbackHandler,
    run_uuid: UUID,
    run_id: str,
    thread_id: str,
    metadata: Mapping[str, Any] | None,
    configurable: Mapping[str, Any],
    trace: RunTrace = _UNTRACED,
    principal: str | None = None,
) -> dict[str, Any]:
    """The LangGraph config of a run: its callback handlers, ids and metadata.

    ``kiki_principal`` (after the client's metadata, which cannot set it) lands in the
    checkpoints the run writes: it names the thread's owner after a restart.
    """
    return {
        "callbacks": [handler, *trace.callbacks],
        "run_id": run_uuid,
        "configurable": {**configurable, "thread_id": thread_id},
        "metadata": {
            **(metadata or {}),
            **trace.metadata,
            "kiki_run_id": run_id,
            "thread_id": thread_id,
            "kiki_principal": principal,
        },
    }
