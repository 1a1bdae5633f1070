"""A deterministic chat model that streams like a real LLM.

``ScriptedChatModel`` is a LangChain chat model whose replies come from a
*script* instead of a provider API, so demo graphs, tests and benchmarks run
offline and produce the same output on every run. It still behaves like a
streaming provider integration:

* text is streamed in word-sized chunks (each chunk keeps its leading
  whitespace, so joining the chunk contents gives back the full text);
* tool calls are streamed after the text as ``tool_call_chunks``: a first chunk
  with the call id and tool name, then several chunks with pieces of the JSON
  arguments (or everything in one chunk with ``tool_args_in_one_chunk=True``);
* a final empty chunk carries ``usage_metadata``, ``response_metadata`` and
  ``chunk_position="last"`` (providers also send usage at the end), so the
  aggregated message handed to ``on_llm_end`` has token usage; a reply of N
  text chunks therefore streams N + 1 chunks;
* ``token_delay`` seconds pass before each text or tool call chunk
  (``asyncio.sleep`` when streaming asynchronously, ``time.sleep`` otherwise,
  no call at all for 0); the final usage chunk follows without delay.

This file is self-contained (it depends only on ``langchain-core``) so it can be
loaded by file path, like the graphs in this directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.language_models.base import LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ToolCall,
    ToolCallChunk,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field, PrivateAttr, SkipValidation, field_validator

__all__ = [
    "Script",
    "ScriptExhaustedError",
    "ScriptFunction",
    "ScriptedChatModel",
    "fit_to_tokens",
    "lorem_tokens",
    "split_text",
]

ScriptFunction = Callable[[list[BaseMessage]], AIMessage | str]
"""Decides the next reply from the conversation the model is called with."""

Script = ScriptFunction | list[AIMessage | str]
"""A script function, or a fixed list of replies consumed one per call."""

# One chunk per word, each carrying the whitespace that precedes it; trailing
# whitespace becomes a chunk of its own. Compiled once: splitting is done once
# per reply, never per chunk.
_WORD_CHUNK = re.compile(r"\s*\S+|\s+")
# Pieces of a JSON arguments string, roughly the way providers stream them.
_ARGS_PIECE = re.compile(r'[^\s"{}\[\],:]+|[\s"{}\[\],:]+')

# fmt: off
_LOREM_WORDS = (
    "stream", "event", "graph", "node", "token", "message", "state", "queue", "consumer",
    "producer", "latency", "buffer", "channel", "replica", "cursor", "offset", "partition",
    "snapshot", "delta", "backlog", "window", "signal", "batch", "retry", "timeout", "payload",
    "schema", "index", "ledger", "shard", "the", "a", "of", "and", "with", "for", "to", "each",
    "every", "across", "quickly", "safely", "durable", "ordered", "bounded", "typed", "steady",
)
# fmt: on


class ScriptExhaustedError(RuntimeError):
    """Raised when a list script has no reply left for another model call."""


def split_text(text: str) -> list[str]:
    """Split ``text`` into the word-sized chunks the model streams.

    Each chunk is a word with the whitespace before it, plus a final
    whitespace-only chunk when the text ends with whitespace, so
    ``"".join(split_text(text)) == text`` always holds.
    """
    return _WORD_CHUNK.findall(text)


def lorem_tokens(n: int, seed: int = 0) -> str:
    """Return deterministic filler text that streams as exactly ``n`` chunks.

    The text is made of sentences and paragraphs of pseudo-random words, so it
    looks like prose in a demo; ``len(split_text(lorem_tokens(n))) == n``.
    """
    if n < 0:
        msg = f"n must be >= 0, got {n}"
        raise ValueError(msg)
    rng = random.Random(seed)
    words: list[str] = []
    sentence_left = 0
    sentences_in_paragraph = 0
    for i in range(n):
        word = rng.choice(_LOREM_WORDS)
        if sentence_left == 0:
            word = word.capitalize()
            sentence_left = rng.randint(6, 14)
            if i:
                sentences_in_paragraph += 1
                separator = "\n\n" if sentences_in_paragraph % 4 == 0 else " "
            else:
                separator = ""
        else:
            separator = " "
        sentence_left -= 1
        if sentence_left == 0 or i == n - 1:
            word += "."
        words.append(separator + word)
    return "".join(words)


def fit_to_tokens(text: str, n: int, seed: int = 0) -> str:
    """Cut or pad ``text`` so that it streams as exactly ``n`` chunks.

    Longer texts are truncated after ``n`` chunks; shorter ones continue with a
    new paragraph of :func:`lorem_tokens` filler.
    """
    chunks = split_text(text)
    if len(chunks) >= n:
        return "".join(chunks[:n])
    base = text.rstrip()
    filler = lorem_tokens(n - len(split_text(base)), seed)
    # The paragraph break is absorbed into the filler's first chunk, so the
    # chunk count stays exact.
    return f"{base}\n\n{filler}" if base else filler


class ScriptedChatModel(BaseChatModel):
    """Chat model that replays scripted replies as a realistic token stream.

    Example:
        ```python
        model = ScriptedChatModel(script=lambda messages: AIMessage("Hello there"))
        for chunk in model.stream("hi"):
            print(chunk.content, end="")
        ```
    """

    script: SkipValidation[Script]
    """A function ``(messages) -> AIMessage | str`` deciding each reply from the
    conversation, or a list of replies consumed in order (one per call)."""

    token_delay: float = Field(default=0.0, ge=0.0)
    """Seconds to wait before each text or tool call chunk; 0 disables waiting."""

    streaming: bool = False
    """Stream even on ``invoke`` (as providers do); ``stream()``/``astream()``
    and LangGraph's ``messages`` stream mode always stream."""

    tool_args_in_one_chunk: bool = False
    """Stream each tool call as a single chunk with name and full JSON args."""

    model_name: str = "scripted-1"
    """Model name reported in response and tracing metadata."""

    _cursor: int = PrivateAttr(default=0)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @field_validator("script", mode="before")
    @classmethod
    def _check_script(cls, value: Any) -> Any:
        if callable(value):
            return value
        if isinstance(value, (list, tuple)):
            for reply in value:
                if not isinstance(reply, (AIMessage, str)):
                    msg = f"script replies must be AIMessage or str, got {type(reply)!r}"
                    raise TypeError(msg)
            return list(value)
        msg = f"script must be a callable or a list of replies, got {type(value)!r}"
        raise TypeError(msg)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="kiki",
            ls_model_name=self.model_name,
            ls_model_type="chat",
        )
        if stop:
            params["ls_stop"] = stop
        return params

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tool schemas like a provider integration would.

        The schemas only show up in the invocation params (and so in traces);
        the script alone decides which tools are called.
        """
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=formatted, **kwargs)

    # -- producing replies -------------------------------------------------

    def _next_reply(self, messages: list[BaseMessage]) -> AIMessage:
        if callable(self.script):
            reply = self.script(messages)
        else:
            with self._lock:
                position = self._cursor
                if position >= len(self.script):
                    msg = f"ScriptedChatModel script exhausted: it has {len(self.script)} replies and all were used"
                    raise ScriptExhaustedError(msg)
                self._cursor = position + 1
            reply = self.script[position]
        if isinstance(reply, str):
            return AIMessage(content=reply)
        if not isinstance(reply, AIMessage):
            msg = f"script must produce an AIMessage or str, got {type(reply)!r}"
            raise TypeError(msg)
        return reply

    def _chunks(self, messages: list[BaseMessage]) -> Iterator[tuple[str, AIMessageChunk]]:
        """Compute the next reply and yield it as ``(token, chunk)`` pairs.

        Text chunks come first, then tool call chunks, then one empty final
        chunk with usage, response metadata and ``chunk_position="last"`` (as
        providers send usage at the end of a stream). Content-bearing chunks
        are never marked "last": LangChain treats such a chunk as an aggregate
        and would drop its tool call delta.
        """
        reply = self._next_reply(messages)
        tool_calls = _with_ids(reply.tool_calls, messages)
        text_pieces = split_text(reply.text)
        output_tokens = len(text_pieces)
        for piece in text_pieces:
            yield piece, AIMessageChunk(content=piece)
        for index, call in enumerate(tool_calls):
            for position, piece in enumerate(self._args_pieces(call)):
                output_tokens += 1
                first = position == 0
                tool_chunk = ToolCallChunk(
                    name=call["name"] if first else None,
                    args=piece,
                    id=call["id"] if first else None,
                    index=index,
                    type="tool_call_chunk",
                )
                yield "", AIMessageChunk(content="", tool_call_chunks=[tool_chunk])
        final = AIMessageChunk(
            content="",
            usage_metadata=self._usage(messages, output_tokens),
            response_metadata=self._response_metadata(bool(tool_calls)),
            chunk_position="last",
        )
        yield "", final

    def _args_pieces(self, call: ToolCall) -> list[str]:
        """Pieces of the JSON arguments of ``call``, one per streamed chunk.

        The first piece goes with the call id and name: it is the whole JSON
        string when ``tool_args_in_one_chunk`` is set, else empty.
        """
        args = json.dumps(call["args"])
        if self.tool_args_in_one_chunk:
            return [args]
        return ["", *_ARGS_PIECE.findall(args)]

    def _usage(self, messages: list[BaseMessage], output_tokens: int) -> UsageMetadata:
        input_tokens = max(1, sum(len(message.text) for message in messages) // 4)
        return UsageMetadata(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
        )

    def _response_metadata(self, has_tool_calls: bool) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "finish_reason": "tool_calls" if has_tool_calls else "stop",
        }

    # -- BaseChatModel hooks -----------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reply = self._next_reply(messages)
        tool_calls = _with_ids(reply.tool_calls, messages)
        # Count output tokens exactly as the streamed version would.
        output_tokens = len(split_text(reply.text)) + sum(len(self._args_pieces(call)) for call in tool_calls)
        message = AIMessage(
            content=reply.text,
            tool_calls=tool_calls,
            usage_metadata=self._usage(messages, output_tokens),
            response_metadata=self._response_metadata(bool(tool_calls)),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        delay = self.token_delay
        for token, message_chunk in self._chunks(messages):
            if delay and message_chunk.chunk_position is None:
                time.sleep(delay)
            chunk = ChatGenerationChunk(message=message_chunk)
            if run_manager is not None:
                run_manager.on_llm_new_token(token, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        delay = self.token_delay
        for token, message_chunk in self._chunks(messages):
            if delay and message_chunk.chunk_position is None:
                await asyncio.sleep(delay)
            chunk = ChatGenerationChunk(message=message_chunk)
            if run_manager is not None:
                await run_manager.on_llm_new_token(token, chunk=chunk)
            yield chunk


def _with_ids(tool_calls: list[ToolCall], messages: list[BaseMessage]) -> list[ToolCall]:
    """Give every tool call an id; missing ids are derived deterministically."""
    result: list[ToolCall] = []
    for index, call in enumerate(tool_calls):
        call_id = call.get("id")
        if not call_id:
            seed = f"{len(messages)}:{index}:{call['name']}:{json.dumps(call['args'])}"
            call_id = "call_" + hashlib.sha1(seed.encode()).hexdigest()[:24]
        result.append(ToolCall(name=call["name"], args=call["args"], id=call_id, type="tool_call"))
    return result
