"""LLM calls: streamed tokens (text and reasoning), token usage, and the final
message of a model that did not stream."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk, LLMResult

from ..events import trusted_token
from .base import HIDDEN, guard
from .ids import agent_path
from .state import LLMCallState, RunState
from .tools import ToolsMixin

__all__ = ["LLMMixin"]

_NOSTREAM = "nostream"


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
        self._llm_start(run_id, parent_run_id, tags, metadata)

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
        self._llm_start(run_id, parent_run_id, tags, metadata)

    def _llm_start(
        self, run_id: UUID, parent_run_id: UUID | None, tags: list[str] | None, metadata: dict[str, Any] | None
    ) -> None:
        run = self._owner.get(parent_run_id) if parent_run_id is not None else None
        if run is None:
            return
        self._adopt(run, run_id)
        silent = bool(tags) and (_NOSTREAM in tags or HIDDEN in tags)  # type: ignore[operator]
        call = LLMCallState(run, agent_path(metadata), f"m{next(run.messages)}", silent)
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
        if call is None or call.silent:
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
                reasoning = message.additional_kwargs.get("reasoning_content")
                if isinstance(reasoning, str) and reasoning:
                    self._token(call, reasoning, "reasoning")
            chunks = getattr(message, "tool_call_chunks", None)
            if chunks:
                for piece in chunks:
                    self._tool_call_chunk(call, piece)
        except Exception:
            self._failed("on_llm_new_token")

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
        _add_usage(run, message, response)
        if call.silent:
            return
        if call.tokens == 0 and message is not None:
            # The model did not stream: deliver the whole message as one delta.
            text = message.text if isinstance(message.text, str) else ""
            if text:
                self._token(call, text, "text")
        self._finish_tool_calls(call, message)

    @guard
    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._llm_calls.get(run_id)
        if call is not None:
            self._release(call.run, run_id)


def _final_message(response: LLMResult) -> Any:
    try:
        generation = response.generations[0][0]
    except IndexError:
        return None
    return getattr(generation, "message", None)


def _add_usage(run: RunState, message: Any, response: LLMResult) -> None:
    """Add an LLM call's token usage to its run: the message's ``usage_metadata``, else the provider's."""
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
