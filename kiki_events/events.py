"""Typed stream events: the envelope, one model per event type, and the union.

Every event is immutable and carries the same envelope:

* ``run_id`` – the root graph run; unguessable.
* ``seq`` – position in the run: 1, 2, 3 … strictly increasing, no gaps. Order by
  ``seq``, never by ``ts``. ``seq == 0`` marks a connection-level notice (for
  example a replay gap) that is not part of the run's sequence.
* ``id`` – ``f"{run_id}:{seq}"``, globally unique; derived, never sent twice.
* ``thread_id`` – the conversation (LangGraph's ``thread_id``).
* ``agent`` – the agent path, subgraphs included, e.g. ``research/researcher``.
* ``causation_id`` – id of the event or run that caused this one.
* ``ts`` – Unix time in seconds (millisecond precision).
* ``node`` – the process that produced the event.
* ``v`` – wire schema version (:data:`SCHEMA_VERSION`).

Every event type and field, the topics and the encodings: ``docs/events.md``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeAlias, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "AgentLifecycleEvent",
    "Cost",
    "CustomEvent",
    "DoneEvent",
    "ErrorEvent",
    "EventType",
    "InterruptEvent",
    "InterruptInfo",
    "LLMCallEvent",
    "ModelCost",
    "RunStatus",
    "StatusEvent",
    "StreamEvent",
    "TokenEvent",
    "ToolCallEvent",
    "ToolResultEvent",
    "Usage",
]

SCHEMA_VERSION = 1
"""Version of the wire schema; decoders reject events with a different ``v``."""

EventType: TypeAlias = Literal[
    "status",
    "agent_lifecycle",
    "token",
    "llm",
    "tool_call",
    "tool_result",
    "custom",
    "interrupt",
    "error",
    "done",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)

RunStatus: TypeAlias = Literal["success", "error", "interrupted", "cancelled"]
"""Final status of a run, carried by :class:`DoneEvent`."""


class _Event(BaseModel):
    """The envelope shared by every event."""

    # NaN/Infinity would encode as ``null`` and then fail to decode.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    run_id: Annotated[str, Field(min_length=1, max_length=128)]
    """The root graph run this event belongs to."""
    seq: Annotated[int, Field(ge=0)]
    """Position in the run (1, 2, 3 …); 0 for connection-level notices."""
    ts: float
    """Unix time in seconds when the event was produced."""
    thread_id: str | None = None
    """Conversation the run belongs to."""
    agent: str | None = None
    """Agent (graph node) path, e.g. ``research/researcher``."""
    causation_id: str | None = None
    """Id of the event or run that caused this one."""
    node: str | None = None
    """Name of the process (server node) that produced the event."""
    v: Literal[1] = 1
    """Wire schema version (:data:`SCHEMA_VERSION`)."""

    @property
    def id(self) -> str:
        """Globally unique event id: ``"<run_id>:<seq>"``."""
        return f"{self.run_id}:{self.seq}"


class StatusEvent(_Event):
    """Run or stream status.

    ``started`` opens every run (with the graph name). Connection-level notices
    (``seq == 0``) tell one client something about its stream: ``gap`` (the
    requested replay point is older than what is kept), ``lagging`` (the client
    was too slow and events were skipped), ``missed`` (events may have been lost
    upstream, e.g. while a bridge was disconnected).
    """

    type: Literal["status"] = "status"
    status: Literal["started", "gap", "lagging", "missed"]
    graph: str | None = None
    """Graph name (on ``started``)."""
    detail: str | None = None
    """Human-readable explanation of a notice."""
    first_seq: int | None = None
    """On ``gap``/``lagging``: the first seq the client will receive next."""


class AgentLifecycleEvent(_Event):
    """An agent (graph node) started, completed or failed."""

    type: Literal["agent_lifecycle"] = "agent_lifecycle"
    phase: Literal["started", "completed", "failed"]
    duration_s: float | None = None
    """Wall time of the agent step (on ``completed``/``failed``)."""
    error: str | None = None
    """Redacted error message (on ``failed``)."""


class TokenEvent(_Event):
    """A text (or reasoning) delta of one LLM message."""

    type: Literal["token"] = "token"
    message_id: str
    """Identifies the message within the run; stable across its tokens."""
    text: str
    kind: Literal["text", "reasoning"] = "text"


class ToolCallEvent(_Event):
    """A tool call requested by an LLM, streamed as start / args deltas / end.

    ``start`` carries ``name``; ``args`` carries an ``args_delta`` (a fragment of
    the JSON arguments); ``end`` carries the complete parsed ``args``.
    """

    type: Literal["tool_call"] = "tool_call"
    phase: Literal["start", "args", "end"]
    tool_call_id: str
    name: str | None = None
    message_id: str | None = None
    """The LLM message that requested the call."""
    args_delta: str | None = None
    args: dict[str, Any] | None = None


class ToolResultEvent(_Event):
    """The outcome of a tool call: its output or its (redacted) error."""

    type: Literal["tool_result"] = "tool_result"
    tool_call_id: str
    name: str | None = None
    output: str | None = None
    """Tool output as text, truncated to the configured size."""
    error: str | None = None
    """Redacted error message when the tool failed."""
    truncated: bool | None = None
    duration_s: float | None = None
    """Wall time of the tool run, in seconds."""
    error_type: str | None = None
    """Exception class name when the tool raised (``error`` holds the redacted message)."""


class CustomEvent(_Event):
    """A user event: ``adispatch_custom_event`` or LangGraph's stream writer.

    One emitted while a tool runs carries that call's ``tool_call_id``: it is the
    call's progress, shown under the call and mapped to each format's tool progress.
    """

    type: Literal["custom"] = "custom"
    name: str
    data: Any = None
    tool_call_id: str | None = None
    """The tool call running when the event was emitted (its progress), else ``None``."""


class InterruptInfo(BaseModel):
    """One human-in-the-loop interrupt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str | None = None
    value: Any = None


class InterruptEvent(_Event):
    """The run paused for human input."""

    type: Literal["interrupt"] = "interrupt"
    interrupts: tuple[InterruptInfo, ...] = ()


class ErrorEvent(_Event):
    """Something failed; ``message`` is redacted and safe to show to a client."""

    type: Literal["error"] = "error"
    message: str
    """What went wrong, without the exception's name (that is ``error_type``); may be empty."""
    error_type: str
    """Exception class name, e.g. ``RuntimeError``: show ``f"{error_type}: {message}"``."""


class Usage(BaseModel):
    """Token counts, read from ``on_llm_end``.

    ``cached_tokens`` are the part of ``input_tokens`` read from the provider's prompt
    cache, ``reasoning_tokens`` the part of ``output_tokens`` spent on reasoning.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0


class LLMCallEvent(_Event):
    """One LLM call ended: its model, timings and token usage (one per call)."""

    type: Literal["llm"] = "llm"
    message_id: str
    """The message whose ``token`` events this call streamed."""
    status: Literal["success", "error", "cancelled"]
    model: str | None = None
    """The model name, as the integration reports it (e.g. ``gpt-4o-mini``)."""
    provider: str | None = None
    """The provider, as the integration reports it (e.g. ``openai``)."""
    duration_s: float
    """Wall time of the call, in seconds."""
    ttft_s: float | None = None
    """Time to the first streamed chunk, in seconds (absent when nothing streamed)."""
    usage: Usage = Usage()
    error_type: str | None = None
    """Exception class name when the call failed."""
    cost_usd: float | None = None
    """What the call cost in US dollars (the node's price table); ``None``: no price for its model, or no table."""


class ModelCost(BaseModel):
    """One model's LLM calls in a run: how many, their tokens, and what they cost."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    model: str | None = None
    """The model as its ``llm`` events name it; ``None``: not reported (or a relayed run's unseen calls)."""
    provider: str | None = None
    calls: int = 0
    usage: Usage = Usage()
    usd: float | None = None
    """Their cost in US dollars; ``None``: the price table has no price for the model (unpriced)."""


class Cost(BaseModel):
    """What a run's LLM calls cost, priced with the price table of the node that reports the run."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    total_usd: float = 0.0
    """The cost of the priced calls, in US dollars; unpriced calls are not in it (never guessed)."""
    unpriced_calls: int = 0
    """Calls of models without a price."""
    unpriced_tokens: int = 0
    """The ``total_tokens`` of those calls."""
    models: tuple[ModelCost, ...] = ()
    """Per model (and provider), in the order first seen; the usages add up to the run's."""


class DoneEvent(_Event):
    """The last event of every run, exactly once."""

    type: Literal["done"] = "done"
    status: RunStatus
    usage: Usage = Usage()
    duration_s: float = 0.0
    trace_id: str | None = None
    """The run's trace id when the runtime traces its runs (Langfuse's, with ``langfuse`` on), else ``None``."""
    cost: Cost | None = None
    """What the run's LLM calls cost (``docs/events.md``); ``None`` when the node has no price table."""


_TOKEN_FIELDS = frozenset(TokenEvent.model_fields)
_new = object.__new__
_set = object.__setattr__


def trusted_token(
    run_id: str,
    seq: int,
    ts: float,
    thread_id: str | None,
    agent: str | None,
    causation_id: str | None,
    node: str | None,
    message_id: str,
    text: str,
    kind: Literal["text", "reasoning"] = "text",
) -> TokenEvent:
    """Build a :class:`TokenEvent` from values this library produced itself.

    The handler creates one per LLM token, so it skips validation (and
    ``model_construct``'s generic default handling, which costs several µs). The
    result is an ordinary, immutable TokenEvent; a test checks it equals the
    validated one.
    """
    event = _new(TokenEvent)
    _set(
        event,
        "__dict__",
        {
            "run_id": run_id,
            "seq": seq,
            "ts": ts,
            "thread_id": thread_id,
            "agent": agent,
            "causation_id": causation_id,
            "node": node,
            "v": 1,
            "type": "token",
            "message_id": message_id,
            "text": text,
            "kind": kind,
        },
    )
    _set(event, "__pydantic_fields_set__", _TOKEN_FIELDS)
    _set(event, "__pydantic_extra__", None)
    _set(event, "__pydantic_private__", None)
    return event


_M = TypeVar("_M", bound=BaseModel)
_LAYOUTS: dict[type[BaseModel], dict[str, Any]] = {}


def _layout(kind: type[BaseModel]) -> dict[str, Any]:
    """Every field of ``kind`` in declaration order, with its default (``None`` for required ones)."""
    layout = _LAYOUTS.get(kind)
    if layout is None:
        layout = {
            name: None if info.is_required() else info.get_default(call_default_factory=True)
            for name, info in kind.model_fields.items()
        }
        _LAYOUTS[kind] = layout
    return layout


def trusted(kind: type[_M], fields: dict[str, Any]) -> _M:
    """Build a ``kind`` model from ``fields`` this library produced and checked itself.

    The handler builds an event per agent step and per LLM call from values of its
    own (the run's envelope, checked when the run's first event was validated; agent
    paths, literals, durations), so it skips validation, which costs several µs each.
    ``fields`` must hold every required field, with values the validated model would
    keep as they are. The result is an ordinary, immutable model: same values, same
    field order, same ``model_fields_set``; a test checks it equals the validated one.
    """
    values = _layout(kind).copy()
    values.update(fields)
    model = _new(kind)
    _set(model, "__dict__", values)
    _set(model, "__pydantic_fields_set__", set(fields))
    _set(model, "__pydantic_extra__", None)
    _set(model, "__pydantic_private__", None)
    return model


StreamEvent: TypeAlias = Annotated[
    StatusEvent
    | AgentLifecycleEvent
    | TokenEvent
    | LLMCallEvent
    | ToolCallEvent
    | ToolResultEvent
    | CustomEvent
    | InterruptEvent
    | ErrorEvent
    | DoneEvent,
    Field(discriminator="type"),
]
"""Any event; ``type`` is the discriminator."""
