"""LLM calls: streamed tokens (text and reasoning), the final message of a model
that did not stream, and one ``llm`` event per call (model, timings, token usage)."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk, LLMResult

from ..events import LLMCallEvent, Usage, trusted, trusted_token
from .base import CANCELLED, HIDDEN, guard
from .ids import agent_path
from .state import LLMCallState, add_usage
from .tools import ToolsMixin

__all__ = ["LLMMixin"]

_NOSTREAM = "nostream"
_NO_USAGE = Usage()


class LLMMixin(ToolsMixin):
    """``token`` events, the tool calls an LLM streams, and the run's token usage."""

    @guard
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
        self._llm_start(run_id, parent_run_id, tags, metadata, kwargs)

    @guard
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
        self._llm_start(run_id, parent_run_id, tags, metadata, kwargs)

    def _llm_start(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        tags: list[str] | None,
        metadata: dict[str, Any] | None,
        extra: dict[str, Any],
    ) -> None:
        run = self._owner.get(parent_run_id) if parent_run_id is not None else None
        if run is None:
            return
        self._adopt(run, run_id)
        silent = bool(tags) and (_NOSTREAM in tags or HIDDEN in tags)  # type: ignore[operator]
        call = LLMCallState(run, agent_path(metadata), f"m{next(run.messages)}", silent, time.perf_counter())
        call.model, call.provider = _model_of(metadata, extra.get("invocation_params"))
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
        # The hot path (once per token): no decorator, one lookup, no I/O; a chat
        # chunk with text content makes exactly one call (``_token``).
        call = self._llm_calls.get(run_id)
        if call is None:
            return
        if not call.first_chunk:
            call.first_chunk = time.perf_counter()
        if call.silent:
            return
        try:
            message = getattr(chunk, "message", None)
            if message is None:
                self._plain_token(call, token)
                return
            content = message.content
            if content.__class__ is str:
                if content:
                    self._token(call, content, "text")
            else:
                for block in content:
                    self._content_block(call, block)
            if message.additional_kwargs:
                self._reasoning_content(call, message.additional_kwargs)
            chunks = getattr(message, "tool_call_chunks", None)
            if chunks:
                for piece in chunks:
                    self._tool_call_chunk(call, piece)
        except Exception:
            self._failed("on_llm_new_token")

    def _reasoning_content(self, call: LLMCallState, extra: dict[str, Any]) -> None:
        """Reasoning some integrations put beside the content (``reasoning_content``)."""
        reasoning = extra.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            self._token(call, reasoning, "reasoning")

    def _plain_token(self, call: LLMCallState, token: Any) -> None:
        """A token of a (non-chat) LLM: the text itself, no message around it."""
        if isinstance(token, str) and token:
            self._token(call, token, "text")

    def _content_block(self, call: LLMCallState, block: Any) -> None:
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

    def _token(self, call: LLMCallState, text: str, kind: str) -> None:
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

    @guard
    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._llm_calls.get(run_id)
        if call is None:
            return
        run = call.run
        self._release(run, run_id)
        message = _final_message(response)
        usage = _usage_of(message, response)
        add_usage(run, usage)
        if not call.silent:
            if call.tokens == 0 and message is not None:
                # The model did not stream: deliver the whole message as one delta.
                text = message.text if isinstance(message.text, str) else ""
                if text:
                    self._token(call, text, "text")
            self._finish_tool_calls(call, message)
        if call.model is None and message is not None:
            metadata = getattr(message, "response_metadata", None) or {}
            name = metadata.get("model_name") or metadata.get("model")
            call.model = name if isinstance(name, str) and name else None
        self._llm_event(call, "success", usage)

    @guard
    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._llm_calls.get(run_id)
        if call is None:
            return
        self._release(call.run, run_id)
        kind = type(error).__name__
        if kind in CANCELLED:
            self._llm_event(call, "cancelled", None)
        else:
            self._llm_event(call, "error", None, kind)

    def _llm_event(self, call: LLMCallState, status: str, usage: Usage | None, error_type: str | None = None) -> None:
        ended = time.perf_counter()
        used = usage if usage is not None else _NO_USAGE
        fields: dict[str, Any] = {
            "agent": call.agent,
            "message_id": call.message_id,
            "status": status,
            "model": call.model,
            "provider": call.provider,
            "duration_s": round(ended - call.started, 6),
            "ttft_s": round(call.first_chunk - call.started, 6) if call.first_chunk else None,
            "usage": used,
            "error_type": error_type,
        }
        tally = call.run.cost
        if tally is not None:
            fields["cost_usd"] = tally.add(call.model, call.provider, used)
        self._send_own(call.run, LLMCallEvent, fields)


def _final_message(response: LLMResult) -> Any:
    try:
        generation = response.generations[0][0]
    except IndexError:
        return None
    return getattr(generation, "message", None)


def _model_of(metadata: dict[str, Any] | None, params: Any) -> tuple[str | None, str | None]:
    """The model and provider of a call, from LangChain's ``ls_*`` metadata or the invocation params."""
    model = provider = None
    if metadata:
        model, provider = metadata.get("ls_model_name"), metadata.get("ls_provider")
    if not model and isinstance(params, dict):
        model = params.get("model") or params.get("model_name") or params.get("model_id")
    return (model if isinstance(model, str) and model else None), (
        provider if isinstance(provider, str) and provider else None
    )


def _usage_of(message: Any, response: LLMResult) -> Usage:
    """An LLM call's token usage: the message's ``usage_metadata``, else the provider's ``llm_output``."""
    usage = getattr(message, "usage_metadata", None) if message is not None else None
    if usage:
        given = _count(usage.get("total_tokens"))
        inputs, outputs = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
        in_details = usage.get("input_token_details") or {}
        out_details = usage.get("output_token_details") or {}
        counts = {
            "input_tokens": inputs,
            "output_tokens": outputs,
            "total_tokens": given or inputs + outputs,
            "reasoning_tokens": _count(out_details.get("reasoning")),
            "cached_tokens": _count(in_details.get("cache_read")),
        }
        return trusted(Usage, counts)  # every count is an int >= 0 (``_count``)
    raw = response.llm_output.get("token_usage") or response.llm_output.get("usage") if response.llm_output else None
    if not isinstance(raw, dict):
        return Usage()
    inputs = _count(raw.get("prompt_tokens") or raw.get("input_tokens"))
    outputs = _count(raw.get("completion_tokens") or raw.get("output_tokens"))
    total = _count(raw.get("total_tokens")) or inputs + outputs
    return Usage(input_tokens=inputs, output_tokens=outputs, total_tokens=total)


def _count(value: Any) -> int:
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError):
        return 0
