"""The AG-UI wire format (``agui``): a run's events as AG-UI protocol events.

Each AG-UI event is one SSE frame, ``data: <json>`` and a blank line, lines ending
in ``\\n`` only; keys are camelCase and an optional field without a value is left
out, never sent as ``null``. The mapping (table in ``docs/sse.md``, section AG-UI):

* ``status started`` → ``RUN_STARTED{threadId, runId}``, always the first event (a
  stream that starts elsewhere, e.g. after a replay gap, gets it before its first
  event). A run without a ``thread_id`` is its own conversation: ``threadId`` is
  then the run id.
* ``agent_lifecycle`` → ``STEP_STARTED`` / ``STEP_FINISHED{stepName: agent path}``;
  a step already open under the same name (parallel branches of one node) is
  counted, not opened twice, and finishes when the last of them ends.
* ``token`` (text) → ``TEXT_MESSAGE_START{messageId, role: "assistant"}`` before the
  message's first token, then ``TEXT_MESSAGE_CONTENT{messageId, delta}``;
  ``messageId`` is ``<run_id>:<message_id>`` (our run id: message ids are per run,
  and a client keeps a thread's messages across its runs). The message
  ends (``TEXT_MESSAGE_END``) at its ``llm`` event, when a tool call of the same
  message starts, or before the terminal event. A token of a message that was
  already ended opens a continuation message ``<run_id>:<message_id>#<n>``.
* ``token`` (reasoning) → with protocol 1.0, ``REASONING_START`` /
  ``REASONING_MESSAGE_START{role: "reasoning"}`` / ``REASONING_MESSAGE_CONTENT`` /
  ``REASONING_MESSAGE_END`` / ``REASONING_END`` under the id ``<messageId>:reasoning``
  (ended like a text message, and when the message's text starts). A 0.0.x client
  gets each reasoning token as ``CUSTOM{name: "kiki.token"}`` instead.
* ``tool_call`` start / args / end → ``TOOL_CALL_START{toolCallId, toolCallName,
  parentMessageId}`` / ``TOOL_CALL_ARGS{toolCallId, delta}`` / ``TOOL_CALL_END``. A
  call whose arguments were not streamed (name and arguments in one chunk) gets one
  ``TOOL_CALL_ARGS`` with the JSON of its final arguments before its end.
* ``tool_result`` → ``TOOL_CALL_RESULT{messageId: "<tool_call_id>:result",
  toolCallId, content, role: "tool"}`` (the call is ended first if it is still
  open); ``content`` is the output or, when the tool failed, ``"<error_type>:
  <error>"`` (redacted).
* ``custom`` → ``CUSTOM{name, value: data}`` (``{}`` when there is no data); one
  with a ``tool_call_id`` is that call's progress: ``ACTIVITY_SNAPSHOT`` with
  protocol 1.0, ``CUSTOM{name: "kiki.tool_progress"}`` with 0.0.x (``aguiparts.py``).
  Every other event (``llm``, ``interrupt``, ``done``, connection notices …) →
  ``CUSTOM{name: "kiki.<type>", value: the event's JSON}``.
* ``error`` → everything open is ended, then ``RUN_ERROR{message, code:
  error_type}``.
* ``done`` → everything open is ended, then ``RUN_FINISHED{threadId, runId}``; with
  protocol 1.0 it carries ``outcome``: ``success``, ``interrupt`` (the run's
  interrupts: ``id``, ``reason`` ``tool_call`` or ``input_required``, ``message``,
  ``toolCallId``, ``responseSchema``; ``aguiparts.py``) or ``cancelled``. A 0.0.x
  client knows no outcome: an interrupted run ends with a plain ``RUN_FINISHED``
  (the ``kiki.interrupt`` event before it carries the interrupts), a cancelled one
  with ``RUN_ERROR{code: "cancelled"}``; ``done`` ``error`` alone with ``RUN_ERROR{code: "error"}``.

Exactly one terminal event (``RUN_FINISHED`` or ``RUN_ERROR``) ends a run, after every
message, tool call and step was ended. A thread's stream carries its runs one after
another, each from ``RUN_STARTED`` to ``RUN_FINISHED``; nothing may follow a ``RUN_ERROR``,
so a stream ends there (:attr:`AGUIEncoder.ended`). A stream that ends without ``done``
(a slow client dropped) is closed by :meth:`Encoder.finish` with
``RUN_ERROR{code: "stream_ended"}``: the client reconnects to follow the run.

The encoder remembers what is open per stream (the format is not ``cacheable``).
:data:`FORMAT` speaks protocol 1.0; :meth:`AGUIFormat.encoder_for` picks the version a
client declared and may put its own ``runId`` / ``threadId`` on the run's events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.runlog import Frame, Item
from ..events import (
    AgentLifecycleEvent,
    CustomEvent,
    DoneEvent,
    ErrorEvent,
    InterruptEvent,
    LLMCallEvent,
    StatusEvent,
    StreamEvent,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
)
from ..redaction import redact_text
from .aguiparts import interrupt_of, progress_of
from .base import Encoder, Format
from .jsondata import data_frame as _frame
from .jsondata import dumps as _dumps
from .jsondata import event_json as _event_json

__all__ = ["FORMAT", "PROTOCOL_LEGACY", "PROTOCOL_V1", "AGUIEncoder", "AGUIFormat"]

PROTOCOL_V1 = "1.0"
"""The protocol version whose events this format sends by default."""
PROTOCOL_LEGACY = "0.0"
"""Clients that declare no version, or a 0.x one: no 1.0-only events or fields."""


class AGUIEncoder(Encoder):
    """Encodes one stream's items as AG-UI events; keeps what is open (see the module docstring)."""

    __slots__ = (
        "_closed",
        "_errored",
        "_handlers",
        "_interrupts",
        "_messages",
        "_ours",
        "_parents",
        "_run_id",
        "_run_override",
        "_steps",
        "_thread_id",
        "_thread_override",
        "_tools",
        "finished",
        "v1",
    )

    def __init__(
        self, protocol_version: str = PROTOCOL_V1, *, run_id: str | None = None, thread_id: str | None = None
    ) -> None:
        self._run_override = run_id
        self._thread_override = thread_id
        self.v1 = protocol_version != PROTOCOL_LEGACY
        """Whether 1.0-only events and fields may be sent."""
        self.finished = False
        """The terminal event of the current run was sent."""
        self._errored = False  # that terminal was RUN_ERROR: the protocol allows nothing after it
        self._run_id = ""
        self._thread_id = ""
        self._ours = ""  # our run id: the prefix of message ids
        # Open messages: AG-UI message id → "text" or "reasoning"; our message id → its segment.
        self._messages: dict[str, str] = {}
        self._closed: dict[str, int] = {}
        self._parents: dict[str, str] = {}  # our message id → the AG-UI id of its last ended part
        self._tools: dict[str, bool] = {}  # open tool call id → whether ARGS was sent
        self._steps: dict[str, int] = {}  # open step name → how many are running
        self._interrupts: list[dict[str, Any]] = []
        self._handlers: dict[type, Callable[[Any, list[dict[str, Any]]], None]] = {
            StatusEvent: self._status,
            AgentLifecycleEvent: self._lifecycle,
            TokenEvent: self._token,
            ToolCallEvent: self._tool_call,
            ToolResultEvent: self._tool_result,
            CustomEvent: self._custom,
            LLMCallEvent: self._llm,
            InterruptEvent: self._interrupt,
            ErrorEvent: self._error,
            DoneEvent: self._done,
        }

    # -- the seam ---------------------------------------------------------------

    @property
    def ended(self) -> bool:
        """Nothing may follow: the run of a single-run stream finished, or a run ended in ``RUN_ERROR``."""
        return self.finished and (self._errored or self._run_override is not None)

    def encode(self, item: Item, /) -> bytes:
        event: StreamEvent = item.event if isinstance(item, Frame) else item
        if self.finished:
            if self.ended or event.seq == 0 or event.run_id == self._ours:
                return b""
            self._next_run()  # a thread stream's next run: RUN_STARTED again, as the protocol allows
        out: list[dict[str, Any]] = []
        if not self._run_id:
            self._ours = event.run_id
            self._run_id = self._run_override or event.run_id
            self._thread_id = self._thread_override or event.thread_id or event.run_id
            out.append(self._with_version({"type": "RUN_STARTED", "threadId": self._thread_id, "runId": self._run_id}))
        self._handlers[type(event)](event, out)
        return b"".join(map(_frame, out))

    def _next_run(self) -> None:
        """Forget the finished run: the next item opens the next one."""
        self.finished = False
        self._run_id = ""
        for state in (self._messages, self._closed, self._parents, self._tools, self._steps, self._interrupts):
            state.clear()

    def finish(self) -> bytes:
        if self.finished or not self._run_id:
            return b""
        out: list[dict[str, Any]] = []
        ended = {"type": "RUN_ERROR", "message": "the stream ended before the run finished", "code": "stream_ended"}
        self._terminate(out, ended)
        return b"".join(map(_frame, out))

    # -- helpers ----------------------------------------------------------------

    def _with_version(self, fields: dict[str, Any]) -> dict[str, Any]:
        if self.v1:
            fields["protocolVersion"] = PROTOCOL_V1
        return fields

    def _custom_of(self, event: StreamEvent, out: list[dict[str, Any]]) -> None:
        out.append({"type": "CUSTOM", "name": f"kiki.{event.type}", "value": _event_json(event)})

    def _message_id(self, message_id: str) -> str:
        """The AG-UI id a token of our message ``message_id`` goes to now (``<run_id>:<message_id>[#n]``)."""
        segment = self._closed.get(message_id)
        base = f"{self._ours}:{message_id}"
        return base if segment is None else f"{base}#{segment}"

    def _parent_id(self, message_id: str) -> str:
        """The AG-UI id of our message ``message_id``'s latest part (for ``parentMessageId``)."""
        return self._parents.get(message_id) or f"{self._ours}:{message_id}"

    def _end_message(self, agui_id: str, out: list[dict[str, Any]]) -> None:
        kind = self._messages.pop(agui_id)
        if kind == "text":
            out.append({"type": "TEXT_MESSAGE_END", "messageId": agui_id})
        else:
            out.append({"type": "REASONING_MESSAGE_END", "messageId": agui_id})
            out.append({"type": "REASONING_END", "messageId": agui_id})

    def _close_message(self, message_id: str, out: list[dict[str, Any]]) -> None:
        """End our message ``message_id``'s open text and reasoning; later tokens continue it under a new id."""
        agui_id = self._message_id(message_id)
        ended = False
        for candidate in (f"{agui_id}:reasoning", agui_id):
            if candidate in self._messages:
                self._end_message(candidate, out)
                ended = True
        if ended:
            self._closed[message_id] = self._closed.get(message_id, 1) + 1
            self._parents[message_id] = agui_id

    def _end_tool(self, tool_call_id: str, args: dict[str, Any] | None, out: list[dict[str, Any]]) -> None:
        streamed = self._tools.pop(tool_call_id)
        if not streamed:
            out.append({"type": "TOOL_CALL_ARGS", "toolCallId": tool_call_id, "delta": _dumps(args or {})})
        out.append({"type": "TOOL_CALL_END", "toolCallId": tool_call_id})

    def _terminate(self, out: list[dict[str, Any]], terminal: dict[str, Any]) -> None:
        """End every open message, tool call and step, then send ``terminal``; nothing follows it."""
        for agui_id in list(self._messages):
            self._end_message(agui_id, out)
        for tool_call_id in list(self._tools):
            self._end_tool(tool_call_id, None, out)
        out.extend({"type": "STEP_FINISHED", "stepName": name} for name in reversed(list(self._steps)))
        self._steps.clear()
        out.append(terminal)
        self.finished = True
        self._errored = terminal["type"] == "RUN_ERROR"

    # -- one handler per event type ---------------------------------------------

    def _status(self, event: StatusEvent, out: list[dict[str, Any]]) -> None:
        if event.seq == 0 or event.status != "started":
            self._custom_of(event, out)  # a connection notice

    def _lifecycle(self, event: AgentLifecycleEvent, out: list[dict[str, Any]]) -> None:
        name = event.agent or "graph"
        steps = self._steps
        if event.phase == "started":
            if name not in steps:
                out.append({"type": "STEP_STARTED", "stepName": name})
            steps[name] = steps.get(name, 0) + 1
        elif name in steps:
            steps[name] -= 1
            if not steps[name]:
                del steps[name]
                out.append({"type": "STEP_FINISHED", "stepName": name})
        if event.phase == "failed":
            fields = _event_json(event)
            if event.error is not None:
                fields["error"] = redact_text(event.error)
            out.append({"type": "CUSTOM", "name": "kiki.agent_lifecycle", "value": fields})

    def _token(self, event: TokenEvent, out: list[dict[str, Any]]) -> None:
        agui_id = self._message_id(event.message_id)
        if event.kind == "text":
            reasoning = f"{agui_id}:reasoning"
            if reasoning in self._messages:
                self._end_message(reasoning, out)
            if agui_id not in self._messages:
                self._messages[agui_id] = "text"
                out.append({"type": "TEXT_MESSAGE_START", "messageId": agui_id, "role": "assistant"})
            out.append({"type": "TEXT_MESSAGE_CONTENT", "messageId": agui_id, "delta": event.text})
        elif not self.v1:
            self._custom_of(event, out)
        else:
            agui_id = f"{agui_id}:reasoning"
            if agui_id not in self._messages:
                self._messages[agui_id] = "reasoning"
                out.append({"type": "REASONING_START", "messageId": agui_id})
                out.append({"type": "REASONING_MESSAGE_START", "messageId": agui_id, "role": "reasoning"})
            out.append({"type": "REASONING_MESSAGE_CONTENT", "messageId": agui_id, "delta": event.text})

    def _start_tool(self, event: ToolCallEvent | ToolResultEvent, out: list[dict[str, Any]]) -> None:
        fields: dict[str, Any] = {
            "type": "TOOL_CALL_START",
            "toolCallId": event.tool_call_id,
            "toolCallName": event.name or "tool",
        }
        message_id = getattr(event, "message_id", None)
        if message_id is not None:
            self._close_message(message_id, out)
            fields["parentMessageId"] = self._parent_id(message_id)
        self._tools[event.tool_call_id] = False
        out.append(fields)

    def _tool_call(self, event: ToolCallEvent, out: list[dict[str, Any]]) -> None:
        call_id = event.tool_call_id
        if call_id not in self._tools:
            if event.phase != "start" and event.message_id is None and event.name is None:
                # The start was lost (e.g. before a replay gap): open the call so its end is consistent.
                self._tools[call_id] = False
                out.append({"type": "TOOL_CALL_START", "toolCallId": call_id, "toolCallName": "tool"})
            else:
                self._start_tool(event, out)
        if event.phase == "args" and event.args_delta:
            self._tools[call_id] = True
            out.append({"type": "TOOL_CALL_ARGS", "toolCallId": call_id, "delta": event.args_delta})
        elif event.phase == "end":
            self._end_tool(call_id, event.args, out)

    def _tool_result(self, event: ToolResultEvent, out: list[dict[str, Any]]) -> None:
        call_id = event.tool_call_id
        if call_id in self._tools:
            self._end_tool(call_id, None, out)
        if event.error is not None:
            error = redact_text(event.error)
            content = f"{event.error_type}: {error}" if event.error_type else error
        else:
            content = event.output or ""
        out.append(
            {
                "type": "TOOL_CALL_RESULT",
                "messageId": f"{call_id}:result",
                "toolCallId": call_id,
                "content": content,
                "role": "tool",
            }
        )

    def _custom(self, event: CustomEvent, out: list[dict[str, Any]]) -> None:
        if event.tool_call_id is not None:
            out.append(progress_of(event, self.v1))
        else:
            out.append({"type": "CUSTOM", "name": event.name, "value": {} if event.data is None else event.data})

    def _llm(self, event: LLMCallEvent, out: list[dict[str, Any]]) -> None:
        self._close_message(event.message_id, out)
        self._custom_of(event, out)

    def _interrupt(self, event: InterruptEvent, out: list[dict[str, Any]]) -> None:
        for index, info in enumerate(event.interrupts):
            self._interrupts.append(interrupt_of(info, f"{event.run_id}:{event.seq}:{index}"))
        self._custom_of(event, out)

    def _error(self, event: ErrorEvent, out: list[dict[str, Any]]) -> None:
        message = redact_text(event.message)
        text = f"{event.error_type}: {message}" if message else event.error_type
        self._terminate(out, {"type": "RUN_ERROR", "message": text, "code": event.error_type})

    def _done(self, event: DoneEvent, out: list[dict[str, Any]]) -> None:
        self._custom_of(event, out)
        status = event.status
        finished: dict[str, Any] = {"type": "RUN_FINISHED", "threadId": self._thread_id, "runId": self._run_id}
        if status == "error" or (status == "cancelled" and not self.v1):
            message = "the run failed" if status == "error" else "the run was cancelled"
            self._terminate(out, {"type": "RUN_ERROR", "message": message, "code": status})
            return
        if self.v1:
            if status == "interrupted":
                interrupts = self._interrupts or [{"id": f"{event.run_id}:interrupt", "reason": "input_required"}]
                finished["outcome"] = {"type": "interrupt", "interrupts": interrupts}
            else:
                finished["outcome"] = {"type": "success" if status == "success" else "cancelled"}
        self._terminate(out, finished)


class AGUIFormat(Format):
    """AG-UI protocol events over SSE (see the module docstring)."""

    name = "agui"
    media_type = "text/event-stream"
    cacheable = False

    def encoder(self) -> Encoder:
        return AGUIEncoder(PROTOCOL_V1)

    def encoder_for(
        self, protocol_version: str | None, *, run_id: str | None = None, thread_id: str | None = None
    ) -> AGUIEncoder:
        """An encoder for a client that declared ``protocol_version`` (``RunAgentInput.protocolVersion``).

        No declaration, or one whose major version is 0, gets the 0.0.x events;
        anything else (1.0, a newer or an unreadable version) gets protocol 1.0.
        ``run_id`` / ``thread_id``, when given, are the ``runId`` / ``threadId`` of
        ``RUN_STARTED`` and ``RUN_FINISHED`` instead of the run's own (the ids the
        client sent in its ``RunAgentInput``); the ``kiki.*`` events keep ours.
        """
        version = PROTOCOL_V1
        if protocol_version is None or protocol_version.strip().split(".", 1)[0] == "0":
            version = PROTOCOL_LEGACY
        return AGUIEncoder(version, run_id=run_id, thread_id=thread_id)


FORMAT = AGUIFormat()
"""The AG-UI format (protocol 1.0 unless :meth:`AGUIFormat.encoder_for` says otherwise)."""
