"""Adapter for code already built on ``graph.astream_events(..., version="v2")``.

It replays each ``astream_events`` record into a :class:`KikiCallbackHandler`, so
both paths share one translation and produce the same event sequence. Prefer the
handler itself: ``astream_events`` costs two to three times more per token.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import Any
from uuid import UUID

from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, LLMResult
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.callbacks import GraphInterruptEvent

from ..cost import PricesLike
from ..events import StreamEvent
from .handler import KikiCallbackHandler

__all__ = ["events_from_astream_events", "translate_astream_events"]


async def events_from_astream_events(
    graph: Runnable[Any, Any],
    input: Any,
    config: RunnableConfig | None = None,
    *,
    node: str | None = None,
    thread_id: str | None = None,
    graph_name: str | None = None,
    max_payload_chars: int = 4000,
    prices: PricesLike = None,
) -> AsyncIterator[StreamEvent]:
    """Run ``graph`` through ``astream_events(version="v2")`` and yield StreamEvents.

    The graph's own exceptions end the sequence with ``error`` and ``done``; they
    are not re-raised (the events carry them). Cancellation yields ``done``
    (cancelled) and then propagates.
    """
    records = graph.astream_events(input, config, version="v2")
    async for event in translate_astream_events(
        records,
        node=node,
        thread_id=thread_id,
        graph_name=graph_name,
        max_payload_chars=max_payload_chars,
        prices=prices,
    ):
        yield event


async def translate_astream_events(
    records: AsyncIterable[Mapping[str, Any]],
    *,
    node: str | None = None,
    thread_id: str | None = None,
    graph_name: str | None = None,
    max_payload_chars: int = 4000,
    prices: PricesLike = None,
) -> AsyncIterator[StreamEvent]:
    """Translate an ``astream_events`` v2 iterator you already have into StreamEvents."""
    out: deque[StreamEvent] = deque()
    handler = KikiCallbackHandler(
        out.append,
        node=node,
        thread_id=thread_id,
        graph_name=graph_name,
        max_payload_chars=max_payload_chars,
        prices=prices,
    )
    root: UUID | None = None
    iterator = aiter(records)
    try:
        while True:
            try:
                record = await anext(iterator)
            except StopAsyncIteration:
                break
            except asyncio.CancelledError:
                if root is not None:
                    handler.on_chain_error(asyncio.CancelledError(), run_id=root)
                while out:
                    yield out.popleft()
                raise
            except Exception as exc:
                if root is not None:
                    handler._fail_open_nodes(root, exc)
                    handler.on_chain_error(exc, run_id=root)
                break
            run_id = UUID(record["run_id"])
            if root is None:
                root = run_id
            _replay(handler, record, run_id)
            while out:
                yield out.popleft()
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()
    while out:
        yield out.popleft()


_Replayer = Callable[[KikiCallbackHandler, "_Record", UUID], None]


class _Record:
    """One ``astream_events`` record, its fields parsed the way the callbacks take them."""

    __slots__ = ("data", "metadata", "name", "parent", "tags")

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.data: Mapping[str, Any] = record.get("data") or {}
        parents = record.get("parent_ids") or []
        self.parent = UUID(parents[-1]) if parents else None
        self.tags = list(record.get("tags") or [])
        self.metadata = dict(record.get("metadata") or {})
        self.name = record.get("name")


def _replay(handler: KikiCallbackHandler, record: Mapping[str, Any], run_id: UUID) -> None:
    kind = record["event"]
    parsed = _Record(record)
    replay = _REPLAYERS.get(kind)
    if replay is not None:
        replay(handler, parsed, run_id)


def _chain_start(handler: KikiCallbackHandler, r: _Record, run_id: UUID) -> None:
    handler.on_chain_start(
        None, r.data.get("input"), run_id=run_id, parent_run_id=r.parent, tags=r.tags, metadata=r.metadata, name=r.name
    )


def _chain_stream(handler: KikiCallbackHandler, r: _Record, run_id: UUID) -> None:
    chunk = r.data.get("chunk")
    if r.parent is None and isinstance(chunk, Mapping) and chunk.get("__interrupt__"):
        handler.on_interrupt(
            GraphInterruptEvent(
                run_id=run_id,
                status="interrupt_after",
                checkpoint_id="",
                checkpoint_ns=(),
                interrupts=tuple(chunk["__interrupt__"]),
            )
        )


def _chain_end(handler: KikiCallbackHandler, r: _Record, run_id: UUID) -> None:
    handler.on_chain_end(r.data.get("output"), run_id=run_id)


def _model_start(handler: KikiCallbackHandler, r: _Record, run_id: UUID) -> None:
    handler.on_chat_model_start(None, [], run_id=run_id, parent_run_id=r.parent, tags=r.tags, metadata=r.metadata)


def _model_stream(handler: KikiCallbackHandler, r: _Record, run_id: UUID) -> None:
    chunk = r.data.get("chunk")
    if chunk is not None and hasattr(chunk, "content"):
        handler.on_llm_new_token("", chunk=ChatGenerationChunk(message=chunk), run_id=run_id)


def _model_end(handler: KikiCallbackHandler, r: _Record, run_id: UUID) -> None:
    output = r.data.get("output")
    generations = [[ChatGeneration(message=output)]] if hasattr(output, "content") else [[]]
    handler.on_llm_end(LLMResult(generations=generations), run_id=run_id)


def _tool_start(handler: KikiCallbackHandler, r: _Record, run_id: UUID) -> None:
    raw = r.data.get("input")
    handler.on_tool_start(
        None,
        "",
        run_id=run_id,
        parent_run_id=r.parent,
        tags=r.tags,
        metadata=r.metadata,
        inputs=raw if isinstance(raw, dict) else None,
        name=r.name,
    )


def _tool_end(handler: KikiCallbackHandler, r: _Record, run_id: UUID) -> None:
    handler.on_tool_end(r.data.get("output"), run_id=run_id)


def _tool_error(handler: KikiCallbackHandler, r: _Record, run_id: UUID) -> None:
    error = r.data.get("error")
    handler.on_tool_error(error if isinstance(error, BaseException) else RuntimeError(str(error)), run_id=run_id)


def _custom_event(handler: KikiCallbackHandler, r: _Record, run_id: UUID) -> None:
    handler.on_custom_event(str(r.name), r.data, run_id=run_id, tags=r.tags, metadata=r.metadata)


_REPLAYERS: dict[str, _Replayer] = {
    "on_chain_start": _chain_start,
    "on_chain_stream": _chain_stream,
    "on_chain_end": _chain_end,
    "on_chat_model_start": _model_start,
    "on_llm_start": _model_start,
    "on_chat_model_stream": _model_stream,
    "on_llm_stream": _model_stream,
    "on_chat_model_end": _model_end,
    "on_llm_end": _model_end,
    "on_tool_start": _tool_start,
    "on_tool_end": _tool_end,
    "on_tool_error": _tool_error,
    "on_custom_event": _custom_event,
}
"""``astream_events`` record kind → how it is replayed into the handler (other kinds are skipped)."""
