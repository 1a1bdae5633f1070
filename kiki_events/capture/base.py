"""The state and the emitting core every part of :class:`KikiCallbackHandler` shares.

The handler is composed of mixins (``lifecycle``, ``llm``, ``tools``, ``relay``)
over :class:`HandlerBase`: one object, so the per-token path stays a plain method
call with no collaborator lookups in between.
"""

from __future__ import annotations

import json
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from uuid import UUID

from langgraph.callbacks import GraphCallbackHandler

from ..cost import CostTally, PricesLike, PriceTable
from ..errors import ArgumentTypeError, InvalidArgumentError
from ..events import StreamEvent, trusted
from ..log import get_logger
from .state import LLMCallState, RunState

__all__ = ["CANCELLED", "CONTROL_FLOW", "HIDDEN", "EventSink", "HandlerBase", "guard", "logger", "now"]

logger = get_logger("kiki_events.handler")

EventSink = Callable[[StreamEvent], object]

HIDDEN = "langsmith:hidden"
"""The tag of runs LangChain hides from tracing; we do not report them either."""
CANCELLED = ("CancelledError", "GeneratorExit", "KeyboardInterrupt")
"""Exception names that mean "cancelled", not "failed"."""
CONTROL_FLOW = ("GraphInterrupt", "NodeInterrupt", "ParentCommand", "GraphBubbleUp")
"""Exception names LangGraph raises to pause or redirect a run: neither failures nor results."""


def now() -> float:
    """The wall-clock time stamped on events (seconds, millisecond precision)."""
    return round(time.time(), 3)


def guard(method: Callable[..., None]) -> Callable[..., None]:
    """One dispatch guard: a bug in the handler is logged, never raised into the graph."""

    def guarded(self: HandlerBase, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception:
            self._failed(method.__name__)

    guarded.__name__ = method.__name__
    guarded.__doc__ = method.__doc__
    return guarded


class HandlerBase(GraphCallbackHandler):
    """Configuration, per-run state and event emission (see :class:`KikiCallbackHandler`)."""

    def __init__(
        self,
        sink: Any,
        *,
        node: str | None = None,
        thread_id: str | None = None,
        graph_name: str | None = None,
        max_payload_chars: int = 4000,
        causation_id: str | None = None,
        prices: PricesLike = None,
    ) -> None:
        super().__init__()
        publish = getattr(sink, "publish", None)
        emit = publish if callable(publish) else sink
        if not callable(emit):
            raise ArgumentTypeError("sink must be an EventBus or a callable taking a StreamEvent")
        if max_payload_chars < 16:
            raise InvalidArgumentError(f"max_payload_chars must be at least 16; got {max_payload_chars}")
        named = {"node": node, "thread_id": thread_id, "graph_name": graph_name, "causation_id": causation_id}
        for name, value in named.items():
            if value is not None and not isinstance(value, str):
                raise ArgumentTypeError(f"{name} must be a string or None; got {type(value).__name__}")
        self._emit: EventSink = emit
        self.node = node
        self.thread_id = thread_id
        self.graph_name = graph_name
        self.max_payload_chars = max_payload_chars
        self.causation_id = causation_id
        self.prices = PriceTable.of(prices)
        """The price table the cost on ``llm`` and ``done`` events comes from (``None``: no cost)."""
        self.trace_id: str | None = None
        """The tracing id put on the ``done`` of the runs it reports (a run manager sets it per run)."""
        self.errors = 0
        """Internal failures (logged and swallowed)."""
        self.error_types: dict[str, int] = {}
        """``errors`` by exception class name."""
        self.dropped = 0
        """Events the sink refused (full queue or bus not running)."""
        self._runs: dict[str, RunState] = {}
        self._owner: dict[UUID, RunState] = {}
        self._llm_calls: dict[UUID, LLMCallState] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()

    @property
    def active_runs(self) -> int:
        """Root runs started and not yet ended."""
        return len(self._runs)

    def _failed(self, callback: str) -> None:
        """Count a failure inside ``callback`` (call it in an ``except`` block); log the first and every 1000th."""
        self.errors += 1
        error = sys.exc_info()[1]
        kind = type(error).__name__ if error is not None else "unknown"
        self.error_types[kind] = self.error_types.get(kind, 0) + 1
        if self.errors == 1 or self.errors % 1000 == 0:
            logger.exception("KikiCallbackHandler.%s failed (%d so far); the run continues", callback, self.errors)

    def _new_run(self, run_id: str, root: UUID, thread_id: str | None) -> RunState:
        """The state of a root run starting now; it tallies cost when the handler has prices."""
        run = RunState(run_id, root, thread_id, self.causation_id, time.monotonic())
        if self.prices is not None:
            run.cost = CostTally(self.prices)
        return run

    def _adopt(self, run: RunState, run_id: UUID) -> None:
        run.members.add(run_id)
        self._owner[run_id] = run

    def _release(self, run: RunState, run_id: UUID) -> None:
        run.members.discard(run_id)
        self._owner.pop(run_id, None)
        if run.llm_calls.pop(run_id, None) is not None:
            self._llm_calls.pop(run_id, None)

    def _send(self, run: RunState, kind: type[StreamEvent], **fields: Any) -> None:
        event = kind(
            run_id=run.run_id,
            seq=next(run.seq),
            ts=now(),
            thread_id=run.thread_id,
            causation_id=run.causation_id,
            node=self.node,
            **fields,
        )
        run.checked = True
        if self._emit(event) is False:
            self.dropped += 1

    def _send_own(self, run: RunState, kind: type[StreamEvent], fields: dict[str, Any]) -> None:
        """:meth:`_send` for an event whose own ``fields`` the handler made and checked itself.

        Once an event of ``run`` was validated (its ``started`` status), the envelope is
        known to be valid, and the event is built without validation (:func:`trusted`).
        """
        if not run.checked:
            self._send(run, kind, **fields)
            return
        fields["run_id"] = run.run_id
        fields["seq"] = next(run.seq)
        fields["ts"] = now()
        fields["thread_id"] = run.thread_id
        fields["causation_id"] = run.causation_id
        fields["node"] = self.node
        if self._emit(trusted(kind, fields)) is False:
            self.dropped += 1

    def _payload(self, value: Any) -> tuple[str, bool]:
        if isinstance(value, str):
            text = value
        else:
            try:
                text = json.dumps(value, ensure_ascii=False, default=str)
            except (TypeError, ValueError):
                text = str(value)
        if len(text) > self.max_payload_chars:
            return text[: self.max_payload_chars] + "…", True
        return text, False

    def _jsonable(self, value: Any) -> Any:
        """JSON-safe ``value``; replaced by its truncated text when too large or not JSON."""
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            return self._payload(value)[0]
        if len(text) > self.max_payload_chars:
            return text[: self.max_payload_chars] + "…"
        return value
