"""Where LangChain/LangGraph callbacks become :data:`StreamEvent` objects.

:class:`KikiCallbackHandler` is synchronous and runs inline (``run_inline``): for
every callback it builds an event and hands it to its sink (usually
:meth:`EventBus.publish`, which never blocks). It never raises into the graph.

Per-run state is keyed by the root run and dropped when the root run ends,
whatever happened below (a cancelled LLM call reports neither end nor error).
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk, LLMResult
from langgraph.callbacks import GraphCallbackHandler, GraphInterruptEvent

from ..events import (
    AgentLifecycleEvent,
    CustomEvent,
    DoneEvent,
    ErrorEvent,
    InterruptEvent,
    InterruptInfo,
    RunStatus,
    StatusEvent,
    StreamEvent,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
    Usage,
    trusted_token,
)
from ..redaction import redact_error, redact_message

__all__ = ["EventSink", "KikiCallbackHandler", "new_run_id", "short_run_id"]

logger = logging.getLogger("kiki_events.handler")

EventSink = Callable[[StreamEvent], object]
T = TypeVar("T")

_HIDDEN = "langsmith:hidden"
_NOSTREAM = "nostream"
_CANCELLED = ("CancelledError", "GeneratorExit", "KeyboardInterrupt")
# LangGraph's control-flow exceptions (interrupts, Command(graph=PARENT)) are not failures.
_CONTROL_FLOW = ("GraphInterrupt", "NodeInterrupt", "ParentCommand", "GraphBubbleUp")
_FINISHED_MEMORY = 4096
_NOT_RELAYED = frozenset({"status", "error", "done", "interrupt"})


def short_run_id(run_uuid: UUID) -> str:
    """Our 22-character run id for a LangChain run UUID (base64url of its bytes)."""
    return base64.urlsafe_b64encode(run_uuid.bytes).rstrip(b"=").decode()


def new_run_id() -> tuple[UUID, str]:
    """A fresh random run: pass the UUID as ``config["run_id"]``; the str is our run id."""
    run_uuid = uuid.uuid4()
    return run_uuid, short_run_id(run_uuid)


def _now() -> float:
    return round(time.time(), 3)


def _agent_path(metadata: dict[str, Any] | None) -> str | None:
    """``research:<task>|researcher:<task>`` → ``research/researcher``."""
    if not metadata:
        return None
    ns = metadata.get("langgraph_checkpoint_ns")
    if isinstance(ns, str) and ns:
        return "/".join(part.split(":", 1)[0] for part in ns.split("|"))
    node = metadata.get("langgraph_node")
    return node if isinstance(node, str) else None


@dataclass
class _ToolCall:
    tool_call_id: str
    name: str
    args: list[str] = field(default_factory=list)


@dataclass
class _LLMCall:
    run: _Run
    agent: str | None
    message_id: str
    silent: bool
    tokens: int = 0
    tool_calls: dict[Any, _ToolCall] = field(default_factory=dict)


@dataclass
class _Node:
    agent: str
    started: float


@dataclass
class _Run:
    """Everything we keep about one root run; dropped when it ends."""

    run_id: str
    root: UUID
    thread_id: str | None
    causation_id: str | None
    started: float
    seq: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    messages: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    members: set[UUID] = field(default_factory=set)
    nodes: dict[UUID, _Node] = field(default_factory=dict)
    node_namespaces: set[str] = field(default_factory=set)
    llm_calls: dict[UUID, _LLMCall] = field(default_factory=dict)
    tools: dict[UUID, tuple[str, str, str | None]] = field(default_factory=dict)
    pending_tool_calls: list[tuple[str, str, str]] = field(default_factory=list)
    """(tool_call_id, name, canonical args JSON) requested but not yet started."""
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    interrupted: bool = False
    failed_agent: str | None = None
    error_sent: bool = False
    relayed_ids: dict[str, str] = field(default_factory=dict)
    """Message ids of relayed runs → message ids in this run (see ``relay``)."""
    relayed_usage: set[str] = field(default_factory=set)
    """Relayed runs whose usage was added to this run's (once each)."""


def _guard(method: Callable[..., None]) -> Callable[..., None]:
    """One dispatch guard: a bug in the handler is logged, never raised into the graph."""

    def guarded(self: KikiCallbackHandler, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception:
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                logger.exception(
                    "KikiCallbackHandler.%s failed (%d so far); the run continues", method.__name__, self.errors
                )

    guarded.__name__ = method.__name__
    guarded.__doc__ = method.__doc__
    return guarded


class KikiCallbackHandler(GraphCallbackHandler):
    """Turns one or more LangGraph runs into :data:`StreamEvent` objects.

    Attach it with ``graph.ainvoke(input, config={"callbacks": [handler]})``. Each
    root run gets its own ``run_id`` (derived from LangChain's run UUID, so pass
    ``config["run_id"]`` to choose it; see :func:`new_run_id`) and emits
    ``status`` (started) first and exactly one ``done`` last.

    Args:
        sink: an :class:`~kiki_events.core.bus.EventBus` (events go to its non-blocking
            ``publish``) or any callable taking an event. It must not block.
        node: name of this process, stamped on every event.
        thread_id: conversation id; default: LangGraph's ``configurable.thread_id``.
        graph_name: name reported in the ``started`` status; default: the root run's name.
        max_payload_chars: tool inputs/outputs and custom data are truncated to this.
        causation_id: what caused the runs this handler sees (e.g. another run's event id).
    """

    run_inline = True
    raise_error = False

    def __init__(
        self,
        sink: Any,
        *,
        node: str | None = None,
        thread_id: str | None = None,
        graph_name: str | None = None,
        max_payload_chars: int = 4000,
        causation_id: str | None = None,
    ) -> None:
        super().__init__()
        publish = getattr(sink, "publish", None)
        emit = publish if callable(publish) else sink
        if not callable(emit):
            raise TypeError("sink must be an EventBus or a callable taking a StreamEvent")
        if max_payload_chars < 16:
            raise ValueError(f"max_payload_chars must be at least 16; got {max_payload_chars}")
        self._emit: EventSink = emit
        self.node = node
        self.thread_id = thread_id
        self.graph_name = graph_name
        self.max_payload_chars = max_payload_chars
        self.causation_id = causation_id
        self.errors = 0
        """Internal failures (logged and swallowed)."""
        self.dropped = 0
        """Events the sink refused (full queue or bus not running)."""
        self._runs: dict[str, _Run] = {}
        self._owner: dict[UUID, _Run] = {}
        self._llm_calls: dict[UUID, _LLMCall] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()

    # -- pass-through taps: their presence makes chat models stream on invoke() --
    def tap_output_aiter(self, run_id: UUID, output: AsyncIterator[T]) -> AsyncIterator[T]:
        """Return ``output`` unchanged (its presence turns on token streaming)."""
        return output

    def tap_output_iter(self, run_id: UUID, output: Iterator[T]) -> Iterator[T]:
        """Return ``output`` unchanged (its presence turns on token streaming)."""
        return output

    # -- public helpers ------------------------------------------------------------------
    @property
    def active_runs(self) -> int:
        """Root runs started and not yet ended."""
        return len(self._runs)

    def finish_run(self, run_id: str, status: RunStatus, error: BaseException | None = None) -> None:
        """Emit the final ``done`` for ``run_id`` if it was not emitted yet (idempotent).

        Call it when the task that ran the graph ends, whatever happened: a run
        cancelled before LangGraph reported anything still gets its ``done``.
        """
        if run_id in self._finished:
            return
        run = self._runs.get(run_id)
        if run is None:
            run = _Run(run_id, uuid.uuid4(), self.thread_id, self.causation_id, time.monotonic())
            self._send(run, StatusEvent, status="started", graph=self.graph_name)
        self._end_run(run, status, error)

    def _fail_open_nodes(self, root: UUID, error: BaseException) -> None:
        """Report every still-open node of ``root``'s run as failed, innermost first.

        For sources that do not report node errors (``astream_events``).
        """
        run = self._owner.get(root)
        if run is None:
            return
        for node_run in reversed(list(run.nodes)):
            self.on_chain_error(error, run_id=node_run)

    # -- run and node lifecycle ----------------------------------------------------------
    @_guard
    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        run = self._owner.get(parent_run_id) if parent_run_id is not None else None
        if run is None:
            self._start_run(run_id, metadata, kwargs.get("name") or _name(serialized))
            return
        self._adopt(run, run_id)
        if not metadata or (tags and _HIDDEN in tags):
            return
        node = metadata.get("langgraph_node")
        name = kwargs.get("name") or _name(serialized)
        if not isinstance(node, str) or name != node or node.startswith("__"):
            return
        ns = metadata.get("langgraph_checkpoint_ns") or node
        if ns in run.node_namespaces:
            return  # a subgraph node starts twice: the node, then the compiled graph
        run.node_namespaces.add(ns)
        agent = _agent_path(metadata) or node
        run.nodes[run_id] = _Node(agent, time.monotonic())
        self._send(run, AgentLifecycleEvent, agent=agent, phase="started")

    @_guard
    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._owner.get(run_id)
        if run is None:
            return
        if run_id == run.root:
            self._end_run(run, "interrupted" if run.interrupted else "success")
            return
        self._release(run, run_id)
        node = run.nodes.pop(run_id, None)
        if node is not None:
            duration = round(time.monotonic() - node.started, 6)
            self._send(run, AgentLifecycleEvent, agent=node.agent, phase="completed", duration_s=duration)

    @_guard
    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._owner.get(run_id)
        if run is None:
            return
        kind = type(error).__name__
        if run_id == run.root:
            if kind in _CANCELLED:
                self._end_run(run, "cancelled")
            elif kind in _CONTROL_FLOW:
                self._end_run(run, "interrupted")
            else:
                self._end_run(run, "error", error)
            return
        self._release(run, run_id)
        node = run.nodes.pop(run_id, None)
        if node is None or kind in _CANCELLED or kind in _CONTROL_FLOW:
            return
        if run.failed_agent is None:
            run.failed_agent = node.agent
        duration = round(time.monotonic() - node.started, 6)
        self._send(
            run, AgentLifecycleEvent, agent=node.agent, phase="failed", duration_s=duration, error=redact_error(error)
        )

    def on_interrupt(self, event: GraphInterruptEvent) -> None:
        """LangGraph paused the run for human input."""
        try:
            run = self._owner.get(event.run_id) if event.run_id is not None else None
            if run is None:
                return
            run.interrupted = True
            infos = tuple(
                InterruptInfo(id=getattr(i, "id", None), value=self._jsonable(getattr(i, "value", None)))
                for i in event.interrupts
            )
            agent = "/".join(p.split(":", 1)[0] for p in event.checkpoint_ns) or None
            self._send(run, InterruptEvent, agent=agent, interrupts=infos)
        except Exception:
            self.errors += 1
            logger.exception("KikiCallbackHandler.on_interrupt failed; the run continues")

    # -- LLM calls -----------------------------------------------------------------------------
    @_guard
    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._llm_start(run_id, parent_run_id, tags, metadata)

    @_guard
    def on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._llm_start(run_id, parent_run_id, tags, metadata)

    def _llm_start(
        self, run_id: UUID, parent_run_id: UUID | None, tags: list[str] | None, metadata: dict[str, Any] | None
    ) -> None:
        run = self._owner.get(parent_run_id) if parent_run_id is not None else None
        if run is None:
            return
        self._adopt(run, run_id)
        silent = bool(tags) and (_NOSTREAM in tags or _HIDDEN in tags)  # type: ignore[operator]
        call = _LLMCall(run, _agent_path(metadata), f"m{next(run.messages)}", silent)
        run.llm_calls[run_id] = call
        self._llm_calls[run_id] = call

    def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        # The hot path (once per token): no decorator, one lookup, no I/O.
        call = self._llm_calls.get(run_id)
        if call is None or call.silent:
            return
        try:
            message = getattr(chunk, "message", None)
            if message is None:
                if isinstance(token, str) and token:
                    self._token(call, token, "text")
                return
            content = message.content
            if content.__class__ is str:
                if content:
                    self._token(call, content, "text")
            else:
                for block in content:
                    self._content_block(call, block)
            if message.additional_kwargs:
                reasoning = message.additional_kwargs.get("reasoning_content")
                if isinstance(reasoning, str) and reasoning:
                    self._token(call, reasoning, "reasoning")
            chunks = getattr(message, "tool_call_chunks", None)
            if chunks:
                for piece in chunks:
                    self._tool_call_chunk(call, piece)
        except Exception:
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                logger.exception(
                    "KikiCallbackHandler.on_llm_new_token failed (%d so far); the run continues", self.errors
                )

    def _content_block(self, call: _LLMCall, block: Any) -> None:
        if isinstance(block, str):
            if block:
                self._token(call, block, "text")
            return
        if not isinstance(block, dict):
            return
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            self._token(call, block["text"], "text")
        elif kind in ("reasoning", "thinking"):
            text = block.get("reasoning") or block.get("thinking") or block.get("text")
            if isinstance(text, str) and text:
                self._token(call, text, "reasoning")

    def _token(self, call: _LLMCall, text: str, kind: str) -> None:
        call.tokens += 1
        run = call.run
        event = trusted_token(
            run.run_id,
            next(run.seq),
            time.time(),
            run.thread_id,
            call.agent,
            run.causation_id,
            self.node,
            call.message_id,
            text,
            kind,  # type: ignore[arg-type]
        )
        if self._emit(event) is False:
            self.dropped += 1

    def _tool_call_chunk(self, call: _LLMCall, piece: Any) -> None:
        index = piece.get("index")
        key = index if index is not None else piece.get("id")
        state = call.tool_calls.get(key)
        args = piece.get("args") or ""
        if state is None:
            tool_call_id = piece.get("id") or f"{call.message_id}.{len(call.tool_calls)}"
            state = _ToolCall(tool_call_id, piece.get("name") or "")
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

    @_guard
    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._owner_llm(run_id)
        if call is None:
            return
        run = call.run
        self._release(run, run_id)
        message = _final_message(response)
        usage = getattr(message, "usage_metadata", None) if message is not None else None
        if usage:
            run.input_tokens += int(usage.get("input_tokens") or 0)
            run.output_tokens += int(usage.get("output_tokens") or 0)
            run.total_tokens += int(usage.get("total_tokens") or 0)
        elif isinstance(response.llm_output, dict):
            raw = response.llm_output.get("token_usage") or response.llm_output.get("usage") or {}
            if isinstance(raw, dict):
                run.input_tokens += int(raw.get("prompt_tokens") or raw.get("input_tokens") or 0)
                run.output_tokens += int(raw.get("completion_tokens") or raw.get("output_tokens") or 0)
                run.total_tokens += int(raw.get("total_tokens") or 0)
        if call.silent:
            return
        if call.tokens == 0 and message is not None:
            # The model did not stream: deliver the whole message as one delta.
            text = message.text if isinstance(message.text, str) else ""
            if text:
                self._token(call, text, "text")
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
        self, call: _LLMCall, tool_call_id: str | None, name: str, args: dict[str, Any]
    ) -> _ToolCall:
        state = _ToolCall(tool_call_id or f"{call.message_id}.{len(call.tool_calls)}", name)
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

    def _close_tool_call(self, call: _LLMCall, state: _ToolCall, args: dict[str, Any]) -> None:
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
        if len(run.pending_tool_calls) > 256:
            del run.pending_tool_calls[:128]

    @_guard
    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._owner_llm(run_id)
        if call is not None:
            self._release(call.run, run_id)

    # -- tools ---------------------------------------------------------------------------------------
    @_guard
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
        name = kwargs.get("name") or _name(serialized) or "tool"
        tool_call_id = kwargs.get("tool_call_id")
        if not isinstance(tool_call_id, str) or not tool_call_id:
            tool_call_id = self._match_pending(run, name, inputs if inputs is not None else input_str)
        else:
            run.pending_tool_calls = [p for p in run.pending_tool_calls if p[0] != tool_call_id]
        run.tools[run_id] = (tool_call_id or str(run_id), name, _agent_path(metadata))

    def _match_pending(self, run: _Run, name: str, inputs: Any) -> str | None:
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

    @_guard
    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._owner.get(run_id)
        if run is None:
            return
        self._release(run, run_id)
        tool_call_id, name, agent = run.tools.pop(run_id, (str(run_id), "tool", None))
        tool_call_id = getattr(output, "tool_call_id", None) or tool_call_id
        content = getattr(output, "content", output)
        text, truncated = self._payload(content)
        if getattr(output, "status", None) == "error":
            self._send(
                run,
                ToolResultEvent,
                agent=agent,
                tool_call_id=tool_call_id,
                name=name,
                error=text,
                truncated=truncated or None,
            )
        else:
            self._send(
                run,
                ToolResultEvent,
                agent=agent,
                tool_call_id=tool_call_id,
                name=name,
                output=text,
                truncated=truncated or None,
            )

    @_guard
    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._owner.get(run_id)
        if run is None:
            return
        self._release(run, run_id)
        tool_call_id, name, agent = run.tools.pop(run_id, (str(run_id), "tool", None))
        given = kwargs.get("tool_call_id")
        if isinstance(given, str) and given:
            tool_call_id = given
        if type(error).__name__ in _CANCELLED:
            return
        self._send(run, ToolResultEvent, agent=agent, tool_call_id=tool_call_id, name=name, error=redact_error(error))

    # -- custom events -----------------------------------------------------------------------------
    @_guard
    def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        run = self._owner.get(run_id)
        if run is None:
            return
        self._send(run, CustomEvent, agent=_agent_path(metadata), name=str(name), data=self._jsonable(data))

    # -- internals -------------------------------------------------------------------------------------
    def _start_run(self, root: UUID, metadata: dict[str, Any] | None, name: str | None) -> None:
        run_id = short_run_id(root)
        thread_id = self.thread_id
        if thread_id is None and metadata:
            found = metadata.get("thread_id")
            thread_id = str(found) if found is not None else None
        run = _Run(run_id, root, thread_id, self.causation_id, time.monotonic())
        run.members.add(root)
        self._runs[run_id] = run
        self._owner[root] = run
        self._send(run, StatusEvent, status="started", graph=self.graph_name or name)

    def _end_run(self, run: _Run, status: RunStatus, error: BaseException | None = None) -> None:
        for member in run.members:
            self._owner.pop(member, None)
        for member in run.llm_calls:
            self._llm_calls.pop(member, None)
        self._runs.pop(run.run_id, None)
        self._finished[run.run_id] = None
        if len(self._finished) > _FINISHED_MEMORY:
            self._finished.popitem(last=False)
        if error is not None and not run.error_sent:
            run.error_sent = True
            self._send(
                run, ErrorEvent, agent=run.failed_agent, message=redact_message(error), error_type=type(error).__name__
            )
        usage = Usage(input_tokens=run.input_tokens, output_tokens=run.output_tokens, total_tokens=run.total_tokens)
        duration = round(time.monotonic() - run.started, 6)
        self._send(run, DoneEvent, status=status, usage=usage, duration_s=duration)

    def _adopt(self, run: _Run, run_id: UUID) -> None:
        run.members.add(run_id)
        self._owner[run_id] = run

    def _release(self, run: _Run, run_id: UUID) -> None:
        run.members.discard(run_id)
        self._owner.pop(run_id, None)
        if run.llm_calls.pop(run_id, None) is not None:
            self._llm_calls.pop(run_id, None)

    def _owner_llm(self, run_id: UUID) -> _LLMCall | None:
        return self._llm_calls.get(run_id)

    def _send(self, run: _Run, kind: type[StreamEvent], **fields: Any) -> None:
        event = kind(
            run_id=run.run_id,
            seq=next(run.seq),
            ts=_now(),
            thread_id=run.thread_id,
            causation_id=run.causation_id,
            node=self.node,
            **fields,
        )
        if self._emit(event) is False:
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

    # -- events of other runs, relayed into a live run (agents on other nodes) ------------
    # Used by kiki_events.handoff: a node that hands work to an agent on another node
    # re-emits that agent's events inside its own run, so whoever watches this run
    # sees them. Relayed events get this run's id, next seq and thread; their
    # ``causation_id`` is the id of the original event, their ``node`` the node that
    # made it. The relayed run's usage counts in this run's.

    def run_id_of(self, lc_run_id: UUID | None) -> str | None:
        """Our run id of the live root run that LangChain run ``lc_run_id`` belongs to."""
        run = self._owner.get(lc_run_id) if lc_run_id is not None else None
        return run.run_id if run is not None else None

    def emit_custom(self, run_id: str, name: str, data: Any, *, agent: str | None = None) -> CustomEvent | None:
        """Add a ``custom`` event to the live run ``run_id``; ``None`` if it is not live."""
        run = self._runs.get(run_id)
        if run is None:
            return None
        event = CustomEvent(
            run_id=run.run_id,
            seq=next(run.seq),
            ts=_now(),
            thread_id=run.thread_id,
            causation_id=run.causation_id,
            node=self.node,
            agent=agent,
            name=name,
            data=self._jsonable(data),
        )
        if self._emit(event) is False:
            self.dropped += 1
        return event

    def relay(self, run_id: str, event: StreamEvent, *, agent_prefix: str | None = None) -> StreamEvent | None:
        """Re-emit ``event`` (of another run) inside the live run ``run_id``.

        The copy gets ``run_id``'s id, next seq and thread, ``causation_id`` = the
        original event's id, and its agent under ``agent_prefix`` (like a subgraph:
        ``writer`` + ``draft`` → ``writer/draft``). Message and tool call ids are
        renamed so they cannot collide with this run's own. A run's framing events
        (``status``, ``error``, ``done``, ``interrupt``) and notices are not relayed:
        the relaying node reports the outcome itself. The copy keeps the ``node``
        that produced the original: it is an event of ``run_id``'s run all the same,
        and travels with it (the bridge sends a run's events by the run's owner).
        The relayed run's ``done`` is not relayed, but its ``usage`` is added to this
        run's totals, once per relayed run (its own delegates are in it already).
        Returns the relayed event, or ``None`` when nothing was emitted (not
        relayable, or ``run_id`` is not live).
        """
        run = self._runs.get(run_id)
        if run is None or event.seq == 0 or event.run_id == run_id:
            return None
        if event.type in _NOT_RELAYED:
            if type(event) is DoneEvent and event.run_id not in run.relayed_usage:
                run.relayed_usage.add(event.run_id)
                run.input_tokens += event.usage.input_tokens
                run.output_tokens += event.usage.output_tokens
                run.total_tokens += event.usage.total_tokens
            return None
        agent = event.agent
        if agent_prefix:
            agent = f"{agent_prefix}/{agent}" if agent else agent_prefix
        update: dict[str, Any] = {
            "run_id": run.run_id,
            "seq": next(run.seq),
            "thread_id": run.thread_id,
            "causation_id": event.id,
            "agent": agent,
        }
        message_id = getattr(event, "message_id", None)
        if message_id is not None:
            key = f"{event.run_id}|{message_id}"
            mapped = run.relayed_ids.get(key)
            if mapped is None:
                mapped = run.relayed_ids[key] = f"m{next(run.messages)}"
            update["message_id"] = mapped
        tool_call_id = getattr(event, "tool_call_id", None)
        if tool_call_id is not None:
            update["tool_call_id"] = f"{tool_call_id}~{event.run_id[:8]}"
        relayed: StreamEvent
        if type(event) is TokenEvent:
            relayed = trusted_token(
                run.run_id,
                update["seq"],
                event.ts,
                run.thread_id,
                agent,
                update["causation_id"],
                event.node,
                update["message_id"],
                event.text,
                event.kind,
            )
        else:
            relayed = type(event).model_construct(**{**dict(event), **update})
        if self._emit(relayed) is False:
            self.dropped += 1
        return relayed


def _name(serialized: dict[str, Any] | None) -> str | None:
    if not serialized:
        return None
    name = serialized.get("name")
    if isinstance(name, str):
        return name
    ids = serialized.get("id")
    if isinstance(ids, Sequence) and ids and isinstance(ids[-1], str):
        return ids[-1]
    return None


def _final_message(response: LLMResult) -> Any:
    try:
        generation = response.generations[0][0]
    except IndexError:
        return None
    return getattr(generation, "message", None)


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
