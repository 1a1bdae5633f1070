"""The Vercel AI SDK UI message stream (``aisdk``): a run's events as UI message chunks.

What ``useChat`` (``ai`` 5, 6 and 7) reads: each chunk one ``data: <json>`` frame and
a blank line, the stream ending with ``data: [DONE]``; every response carries
``x-vercel-ai-ui-message-stream: v1``. Optional fields without a value are left out,
never ``null``, and no field outside a chunk's type definition is sent. The mapping
(table in ``docs/sse.md``, section Vercel AI SDK):

* the first item → ``start{messageId: run id}`` then ``start-step``: the whole run
  is one assistant message and one step. Agents do not map to steps: a client's
  ``finish-step`` forgets every open text and reasoning part, so an agent finishing
  while a parallel one still streams would break the other's next delta.
* ``agent_lifecycle`` → ``data-kiki-agent{data: the event's JSON}``.
* ``token`` (text) → ``text-start{id}`` before the message's first token, then
  ``text-delta{id, delta}``; ``text-end`` at the message's ``llm`` event, when a tool
  call of the message starts, or before the end. Text after that goes to
  ``<message_id>#2``, ``#3`` …; ``token`` (reasoning) → ``reasoning-start`` /
  ``reasoning-delta`` / ``reasoning-end`` under ``<message_id>:reasoning``, ended
  when the message's text starts or as its text is.
* ``tool_call`` → ``tool-input-start{toolCallId, toolName, dynamic: true}`` /
  ``tool-input-delta{toolCallId, inputTextDelta}`` / ``tool-input-available{toolCallId,
  toolName, input, dynamic: true}`` (a call whose arguments came in one chunk goes
  from start straight to available). ``tool_result`` → ``tool-output-available{output}``,
  or ``tool-output-error{errorText: "<error_type>: <error>"}`` (redacted) when it failed.
* ``custom`` with a ``tool_call_id`` (the call's progress) → ``tool-output-available{output:
  data, preliminary: true}`` while the call has no final output: the final
  ``tool-output-available`` (or ``tool-output-error``) replaces it. Progress after the
  final output, or for a call the stream never announced, stays ``data-kiki-custom``.
* ``interrupt``: each tool approval (a value with ``tool_call_id``, docs/events.md) →
  ``tool-approval-request{approvalId: the interrupt id, toolCallId}``, its call made
  ``input-available`` first (from the value's ``tool`` and ``args`` when the stream
  never announced it); the other interrupts → ``data-kiki-interrupt`` (the event with
  only those). ``useChat``'s ``addToolApprovalResponse`` answers an approval.
* every other event → ``data-kiki-<type>{data: the event's JSON}`` (``llm``,
  ``custom``, ``done``, connection notices ``status``).
* an answer that continues the client's assistant message (a tool approval answered):
  ``start`` carries that message's id (``message_id``) instead of the run id, so the
  client goes on with the message it has, and the calls it holds (``known_calls``) get
  their output without being announced again, so it updates their parts.
* ``done`` → everything open ended, ``finish-step``, ``finish``; ``cancelled`` ends
  with ``abort`` instead of ``finish``. ``error`` (and ``done`` ``error`` without one)
  → everything open ended, ``error{errorText}``, ``finish``: ``useChat`` stops at the
  ``error`` (its status becomes ``error``); a reader that goes on sees the message end.
* :meth:`AISDKEncoder.finish` sends ``data: [DONE]``; a stream cut short (a slow client
  dropped) is first closed with ``error{errorText: "the stream ended before the run
  finished"}`` and ``finish``: the client resumes to follow the run.

Exactly one ``finish`` or ``abort`` ends a stream that sent anything, after every
part was ended; nothing but ``[DONE]`` follows it (a thread's stream carries its first
run only). The encoder remembers what is open, so the format is not cacheable.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from ..core.runlog import Frame, Item
from ..events import (
    AgentLifecycleEvent,
    CustomEvent,
    DoneEvent,
    ErrorEvent,
    InterruptEvent,
    InterruptInfo,
    LLMCallEvent,
    StatusEvent,
    StreamEvent,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
)
from ..redaction import redact_text
from .base import Encoder, Format
from .jsondata import data_frame, event_json

__all__ = ["DONE_FRAME", "FORMAT", "STREAM_HEADER", "AISDKEncoder", "AISDKFormat"]

STREAM_HEADER = "x-vercel-ai-ui-message-stream"
"""The response header that tells the AI SDK the body is a UI message stream (value ``v1``)."""
DONE_FRAME = b"data: [DONE]\n\n"
"""The last frame of every stream that sent anything."""

_Out = list[dict[str, Any]]


class _Tool:
    __slots__ = ("args", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.args = ""  # the argument deltas so far


class AISDKEncoder(Encoder):
    """Encodes one stream's items as UI message chunks; keeps what is open (see the module docstring)."""

    __slots__ = (
        "_available_calls",
        "_closed",
        "_handlers",
        "_message_id",
        "_output_calls",
        "_parts",
        "_run_id",
        "_tools",
        "done_sent",
        "finished",
    )

    def __init__(self, known_calls: frozenset[str] = frozenset(), message_id: str | None = None) -> None:
        self.finished = False
        """The terminal chunk (``finish`` or ``abort``) was sent: later items encode to ``b""``."""
        self.done_sent = False
        """``[DONE]`` was sent: :meth:`finish` gives ``b""`` from then on."""
        self._run_id = ""
        self._message_id = message_id
        self._parts: dict[str, str] = {}  # open text / reasoning part id → "text" or "reasoning"
        self._closed: dict[str, int] = {}  # our message id → the number of its next continuation
        self._tools: dict[str, _Tool] = {}  # open tool call id → its name and streamed arguments
        self._available_calls: set[str] = set(known_calls)  # calls the client holds with their input
        self._output_calls: set[str] = set()  # calls whose final output (or error) was sent
        self._handlers: dict[type, Callable[[Any, _Out], None]] = {
            StatusEvent: self._status,
            AgentLifecycleEvent: self._lifecycle,
            TokenEvent: self._token,
            ToolCallEvent: self._tool_call,
            ToolResultEvent: self._tool_result,
            CustomEvent: self._custom,
            InterruptEvent: self._interrupt,
            LLMCallEvent: self._llm,
            ErrorEvent: self._error,
            DoneEvent: self._done,
        }

    # -- the seam ---------------------------------------------------------------

    def encode(self, item: Item, /) -> bytes:
        if self.finished:
            return b""
        event: StreamEvent = item.event if isinstance(item, Frame) else item
        out: _Out = []
        if not self._run_id:
            self._run_id = event.run_id
            out += ({"type": "start", "messageId": self._message_id or event.run_id}, {"type": "start-step"})
        self._handlers.get(type(event), self._data)(event, out)
        return b"".join(map(data_frame, out))

    @property
    def ended(self) -> bool:
        """A UI message stream is one message: it ends with its run's terminal chunk (a thread stream too)."""
        return self.finished

    def finish(self) -> bytes:
        if self.done_sent or not self._run_id:
            return b""
        out: _Out = []
        if not self.finished:
            self._fail(out, "the stream ended before the run finished")
        self.done_sent = True
        return b"".join(map(data_frame, out)) + DONE_FRAME

    # -- helpers ----------------------------------------------------------------

    def _data(self, event: StreamEvent, out: _Out, name: str = "") -> None:
        out.append({"type": f"data-kiki-{name or event.type}", "data": event_json(event)})

    def _text_id(self, message_id: str) -> str:
        segment = self._closed.get(message_id)
        return message_id if segment is None else f"{message_id}#{segment}"

    def _end_part(self, part_id: str, out: _Out) -> None:
        out.append({"type": f"{self._parts.pop(part_id)}-end", "id": part_id})

    def _close_message(self, message_id: str, out: _Out) -> None:
        """End our message's open text and reasoning; its later tokens go to a continuation id."""
        text_id = self._text_id(message_id)
        ended = False
        for part_id in (f"{text_id}:reasoning", text_id):
            if part_id in self._parts:
                self._end_part(part_id, out)
                ended = True
        if ended:
            self._closed[message_id] = self._closed.get(message_id, 1) + 1

    def _available(self, call_id: str, args: dict[str, Any] | None, out: _Out) -> None:
        tool = self._tools.pop(call_id)
        self._available_calls.add(call_id)
        if args is None:
            try:
                args = json.loads(tool.args) if tool.args else {}
            except ValueError:
                args = {}
        fields = {"toolCallId": call_id, "toolName": tool.name, "input": args, "dynamic": True}
        out.append({"type": "tool-input-available", **fields})

    def _end_all(self, out: _Out) -> None:
        for part_id in list(self._parts):
            self._end_part(part_id, out)
        for call_id in list(self._tools):
            self._available(call_id, None, out)

    def _end(self, out: _Out, terminal: str = "finish") -> None:
        self._end_all(out)
        out.append({"type": "finish-step"})
        out.append({"type": terminal})
        self.finished = True

    def _fail(self, out: _Out, text: str) -> None:
        self._end_all(out)
        out.append({"type": "error", "errorText": text})
        self._end(out)

    # -- one handler per event type ---------------------------------------------

    def _status(self, event: StatusEvent, out: _Out) -> None:
        if event.seq == 0 or event.status != "started":
            self._data(event, out)  # a connection notice

    def _lifecycle(self, event: AgentLifecycleEvent, out: _Out) -> None:
        fields = event_json(event)
        if event.error is not None:
            fields["error"] = redact_text(event.error)
        out.append({"type": "data-kiki-agent", "data": fields})

    def _token(self, event: TokenEvent, out: _Out) -> None:
        text_id = self._text_id(event.message_id)
        part_id = text_id if event.kind == "text" else f"{text_id}:reasoning"
        if event.kind == "text" and f"{text_id}:reasoning" in self._parts:
            self._end_part(f"{text_id}:reasoning", out)
        if part_id not in self._parts:
            self._parts[part_id] = event.kind
            out.append({"type": f"{event.kind}-start", "id": part_id})
        out.append({"type": f"{event.kind}-delta", "id": part_id, "delta": event.text})

    def _open_tool(self, call_id: str, name: str | None, out: _Out) -> None:
        tool = self._tools[call_id] = _Tool(name or "tool")
        out.append({"type": "tool-input-start", "toolCallId": call_id, "toolName": tool.name, "dynamic": True})

    def _tool_call(self, event: ToolCallEvent, out: _Out) -> None:
        call_id = event.tool_call_id
        if call_id in self._available_calls:
            return  # made available early (its progress, approval or result came first): the client has it
        if call_id not in self._tools:
            if event.message_id is not None:
                self._close_message(event.message_id, out)
            self._open_tool(call_id, event.name, out)
        if event.phase == "args" and event.args_delta:
            self._tools[call_id].args += event.args_delta
            out.append({"type": "tool-input-delta", "toolCallId": call_id, "inputTextDelta": event.args_delta})
        elif event.phase == "end":
            self._available(call_id, event.args, out)

    def _tool_result(self, event: ToolResultEvent, out: _Out) -> None:
        call_id = event.tool_call_id
        if call_id not in self._available_calls:
            if call_id not in self._tools:  # its start was lost (a replay gap): the client needs the call first
                self._tools[call_id] = _Tool(event.name or "tool")
            self._available(call_id, None, out)
        self._output_calls.add(call_id)
        if event.error is not None:
            error = redact_text(event.error)
            text = f"{event.error_type}: {error}" if event.error_type else error
            out.append({"type": "tool-output-error", "toolCallId": call_id, "errorText": text, "dynamic": True})
        else:
            output = event.output or ""
            out.append({"type": "tool-output-available", "toolCallId": call_id, "output": output, "dynamic": True})

    def _custom(self, event: CustomEvent, out: _Out) -> None:
        call_id = event.tool_call_id
        if call_id is None or call_id in self._output_calls:
            self._data(event, out)
            return
        if call_id in self._tools:
            self._available(call_id, None, out)
        if call_id not in self._available_calls:  # a call the client was never told of
            self._data(event, out)
            return
        output = {} if event.data is None else event.data
        fields = {"toolCallId": call_id, "output": output, "dynamic": True, "preliminary": True}
        out.append({"type": "tool-output-available", **fields})

    def _interrupt(self, event: InterruptEvent, out: _Out) -> None:
        others: list[int] = []
        for index, info in enumerate(event.interrupts):
            call_id = _approval_call(info)
            if call_id is None or call_id in self._output_calls:
                others.append(index)
                continue
            if call_id in self._tools:
                self._available(call_id, None, out)
            elif call_id not in self._available_calls:  # not announced: the value says what the call is
                self._tools[call_id] = _Tool(str(info.value.get("tool") or "tool"))
                args = info.value.get("args")
                self._available(call_id, args if isinstance(args, dict) else {}, out)
            approval_id = info.id or call_id
            out.append({"type": "tool-approval-request", "approvalId": approval_id, "toolCallId": call_id})
        if others:
            fields = event_json(event)
            fields["interrupts"] = [fields["interrupts"][index] for index in others]
            out.append({"type": "data-kiki-interrupt", "data": fields})

    def _llm(self, event: LLMCallEvent, out: _Out) -> None:
        self._close_message(event.message_id, out)
        self._data(event, out)

    def _error(self, event: ErrorEvent, out: _Out) -> None:
        message = redact_text(event.message)
        self._fail(out, f"{event.error_type}: {message}" if message else event.error_type)

    def _done(self, event: DoneEvent, out: _Out) -> None:
        self._end_all(out)
        self._data(event, out)
        if event.status == "error":
            self._fail(out, "the run failed")
        else:
            self._end(out, "abort" if event.status == "cancelled" else "finish")


def _approval_call(info: InterruptInfo) -> str | None:
    """The tool call an interrupt asks approval for (its value's ``tool_call_id``), else ``None``."""
    value = info.value
    if isinstance(value, dict):
        call_id = value.get("tool_call_id")
        if isinstance(call_id, str) and call_id:
            return call_id
    return None


class AISDKFormat(Format):
    """UI message chunks for the Vercel AI SDK over SSE (see the module docstring).

    For an answer that continues the client's assistant message: ``message_id`` is that
    message's id (``start`` carries it instead of the run id) and ``known_calls`` the tool
    call ids it holds (their outputs update its parts instead of announcing the calls).
    """

    name = "aisdk"
    media_type = "text/event-stream"
    cacheable = False
    headers = MappingProxyType({STREAM_HEADER: "v1"})

    def __init__(self, known_calls: frozenset[str] = frozenset(), message_id: str | None = None) -> None:
        self.known_calls = known_calls
        self.message_id = message_id

    def encoder(self) -> AISDKEncoder:
        return AISDKEncoder(self.known_calls, self.message_id)


FORMAT = AISDKFormat()
"""The AI SDK UI message stream format."""
