"""Tool calls and their results: the calls an LLM streams (``tool_call`` start, args,
end) and the tool runs that answer them (``tool_result``)."""

from __future__ import annotations

import json
import time
from typing import Any
from uuid import UUID

from ..events import ToolCallEvent, ToolResultEvent
from ..redaction import redact_error
from .base import CANCELLED, CONTROL_FLOW, HandlerBase, guard
from .ids import agent_path, runnable_name
from .state import RUNNING_TOOL, LLMCallState, RunState, ToolCallState

__all__ = ["ToolsMixin"]

_PENDING_MAX = 256
"""Requested tool calls remembered per run for pairing with tool runs (oldest half dropped beyond)."""


class ToolsMixin(HandlerBase):
    """``tool_call`` events from an LLM's output and ``tool_result`` events from tool runs."""

    # -- tool calls an LLM makes ---------------------------------------------------------------
    def _tool_call_chunk(self, call: LLMCallState, piece: Any) -> None:
        index = piece.get("index")
        key = index if index is not None else piece.get("id")
        state = call.tool_calls.get(key)
        args = piece.get("args") or ""
        if state is None:
            tool_call_id = piece.get("id") or f"{call.message_id}.{len(call.tool_calls)}"
            state = ToolCallState(tool_call_id, piece.get("name") or "")
            call.tool_calls[key] = state
            self._send(
                call.run,
                ToolCallEvent,
                agent=call.agent,
                phase="start",
                tool_call_id=state.tool_call_id,
                name=state.name,
                message_id=call.message_id,
            )
        if args:
            state.args.append(args)
            self._send(
                call.run,
                ToolCallEvent,
                agent=call.agent,
                phase="args",
                tool_call_id=state.tool_call_id,
                args_delta=args,
            )

    def _finish_tool_calls(self, call: LLMCallState, message: Any) -> None:
        """End every tool call of the LLM's final ``message``; announce those it did not stream."""
        final_calls = list(getattr(message, "tool_calls", None) or []) if message is not None else []
        streamed = {s.tool_call_id: s for s in call.tool_calls.values()}
        for final in final_calls:
            tool_call_id = final.get("id")
            state = streamed.pop(tool_call_id, None) if tool_call_id else None
            args = final.get("args") if isinstance(final.get("args"), dict) else {}
            if state is None:
                state = self._announce_tool_call(call, tool_call_id, final.get("name") or "", args)
            self._close_tool_call(call, state, args)
        for state in streamed.values():
            self._close_tool_call(call, state, _parse_args("".join(state.args)))

    def _announce_tool_call(
        self, call: LLMCallState, tool_call_id: str | None, name: str, args: dict[str, Any]
    ) -> ToolCallState:
        state = ToolCallState(tool_call_id or f"{call.message_id}.{len(call.tool_calls)}", name)
        call.tool_calls[state.tool_call_id] = state
        run = call.run
        self._send(
            run,
            ToolCallEvent,
            agent=call.agent,
            phase="start",
            tool_call_id=state.tool_call_id,
            name=name,
            message_id=call.message_id,
        )
        delta = json.dumps(args, ensure_ascii=False, default=str)
        self._send(
            run, ToolCallEvent, agent=call.agent, phase="args", tool_call_id=state.tool_call_id, args_delta=delta
        )
        return state

    def _close_tool_call(self, call: LLMCallState, state: ToolCallState, args: dict[str, Any]) -> None:
        run = call.run
        self._send(
            run,
            ToolCallEvent,
            agent=call.agent,
            phase="end",
            tool_call_id=state.tool_call_id,
            name=state.name,
            message_id=call.message_id,
            args=self._jsonable(args),
        )
        run.pending_tool_calls.append((state.tool_call_id, state.name, _canonical(args)))
        if len(run.pending_tool_calls) > _PENDING_MAX:
            del run.pending_tool_calls[: _PENDING_MAX // 2]

    # -- tool runs -----------------------------------------------------------------------------
    @guard
    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        run = self._owner.get(parent_run_id) if parent_run_id is not None else None
        if run is None:
            return
        self._adopt(run, run_id)
        name = kwargs.get("name") or runnable_name(serialized) or "tool"
        tool_call_id = kwargs.get("tool_call_id")
        if not isinstance(tool_call_id, str) or not tool_call_id:
            tool_call_id = self._match_pending(run, name, inputs if inputs is not None else input_str)
        else:
            run.pending_tool_calls = [p for p in run.pending_tool_calls if p[0] != tool_call_id]
        agent = agent_path(metadata)
        run.tools[run_id] = (tool_call_id or str(run_id), name, agent, time.perf_counter())
        RUNNING_TOOL.set((run.run_id, tool_call_id or str(run_id), agent))

    def _match_pending(self, run: RunState, name: str, inputs: Any) -> str | None:
        """Without a ``tool_call_id`` (e.g. astream_events), pair by name and arguments."""
        if isinstance(inputs, str):
            try:
                inputs = json.loads(inputs)
            except ValueError:
                inputs = None
        wanted = _canonical(inputs) if isinstance(inputs, dict) else None
        for i, (tool_call_id, pending_name, args) in enumerate(run.pending_tool_calls):
            if pending_name == name and (wanted is None or wanted == args):
                del run.pending_tool_calls[i]
                return tool_call_id
        return None

    def _end_tool(self, run_id: UUID) -> tuple[RunState, str, str, str | None, float] | None:
        """The run of an ending tool run and what its start recorded (id, name, agent, start), released."""
        run = self._owner.get(run_id)
        if run is None:
            return None
        self._release(run, run_id)
        ended = run.tools.pop(run_id, (str(run_id), "tool", None, 0.0))
        running = RUNNING_TOOL.get()
        if running is not None and running[1] == ended[0]:
            RUNNING_TOOL.set(None)
        return (run, *ended)

    @guard
    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        ended = self._end_tool(run_id)
        if ended is None:
            return
        run, tool_call_id, name, agent, started = ended
        tool_call_id = getattr(output, "tool_call_id", None) or tool_call_id
        content = getattr(output, "content", output)
        text, truncated = self._payload(content)
        # A ToolMessage with status "error" carries the error text as its content.
        field = "error" if getattr(output, "status", None) == "error" else "output"
        self._send(
            run,
            ToolResultEvent,
            agent=agent,
            tool_call_id=tool_call_id,
            name=name,
            truncated=truncated or None,
            duration_s=_since(started),
            **{field: text},
        )

    @guard
    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        ended = self._end_tool(run_id)
        if ended is None:
            return
        run, tool_call_id, name, agent, started = ended
        given = kwargs.get("tool_call_id")
        if isinstance(given, str) and given:
            tool_call_id = given
        if type(error).__name__ in CANCELLED or type(error).__name__ in CONTROL_FLOW:
            return  # cancelled, or paused for an interrupt: the call has no result (yet)
        self._send(
            run,
            ToolResultEvent,
            agent=agent,
            tool_call_id=tool_call_id,
            name=name,
            error=redact_error(error),
            error_type=type(error).__name__,
            duration_s=_since(started),
        )


def _since(started: float) -> float | None:
    return round(time.perf_counter() - started, 6) if started else None


def _parse_args(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"__raw__": text}
    return value if isinstance(value, dict) else {"__value__": value}


def _canonical(args: Any) -> str:
    try:
        return json.dumps(args, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(args)
