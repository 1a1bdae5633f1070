"""SSE responses, built on sse-starlette, written through a wire format.

A response body is a cursor over a replay buffer (see :mod:`kiki_events.core.cursors`)
written by a format's encoder (see :mod:`kiki_events.formats.base`; ours by default,
:mod:`kiki_events.formats.kiki`): every wake-up writes everything available as
**one** chunk, so a client's backlog costs one send, and with a format that
memoises its frames no event is encoded per client. sse-starlette races that body
against client disconnect, keep-alive comment lines and server shutdown in one
task group, so nothing polls for disconnects.

A client that accepts nothing for ``sse.send_timeout`` is dropped, and its
connection is aborted (reset) rather than closed: a graceful close would wait
for the unsent backlog to drain, which a stalled peer never lets happen, so the
socket and its buffers would stay until the peer went away. Aborting needs the
connection's transport, which the ready-made app notes in the request scope
(:func:`keep_transport`); elsewhere the server closes the connection its own way.

:func:`stream_agent_sse` is for applications with their own FastAPI app: it runs
a graph for one request and streams its events, ``done`` last.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message, Receive, Scope, Send

from ..capture.handler import KikiCallbackHandler, new_run_id
from ..config import SSESettings
from ..core.bus import EventBus
from ..core.cursors import RunCursor, ThreadCursor
from ..core.manager import ensure_done, execute_run
from ..core.runlog import RunLog
from ..core.store import RunStore
from ..core.threadreplay import Reader, StoredThreadCursor
from ..cost import PricesLike, PriceTable
from ..errors import BusError
from ..events import StreamEvent
from ..formats import Format, get_format
from ..log import bound_stream, get_logger

__all__ = ["TRANSPORT_KEY", "cursor_body", "keep_transport", "sse_response", "stream_agent_sse"]

logger = get_logger("kiki_events.server")

_SEP = "\n"
_BATCH = 512
_CLEANUP_TIMEOUT = 5.0
_RESET = struct.pack("ii", 1, 0)
"""``SO_LINGER`` on, zero seconds: closing resets the connection and frees its buffers at once."""

TRANSPORT_KEY = "kiki.transport"
"""Request scope key holding the connection's transport (see :func:`keep_transport`)."""


def keep_transport(scope: Scope, send: Send) -> None:
    """Note the connection's transport in ``scope``, if the server's ``send`` shows it.

    Call it with the server's own ``send`` (before any middleware wraps it): uvicorn's
    is a method of the request cycle, which holds the transport.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None and hasattr(transport, "abort"):
        scope[TRANSPORT_KEY] = transport


def _reset(transport: asyncio.BaseTransport) -> None:
    """Drop a connection now: no graceful close, unsent bytes discarded (TCP reset)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    transport.abort()  # type: ignore[attr-defined]


def _ping() -> ServerSentEvent:
    return ServerSentEvent(comment="ping", sep=_SEP)


def cursor_body(
    cursor: Reader,
    *,
    retry: float,
    store: RunStore | None = None,
    on_abandon: Callable[[], object] | None = None,
    wire_format: Format | None = None,
) -> AsyncGenerator[bytes, None]:
    """The body of an SSE response: the format's ``retry:`` and its encoder's ``start()`` first, then coalesced frames.

    Ends when the cursor is finished (the run's ``done`` was sent, or a slow
    client is dropped), with what the format sends last. ``on_abandon`` runs if
    the body stops before that, i.e. the client went away (the ``on_disconnect:
    cancel`` policy). ``store`` gets the client counted while connected.
    ``wire_format``: how items become bytes (default: ours). A client gone before
    the end is logged as one INFO line; what the body logs carries the run's (or
    the thread's) id.
    """
    body = _cursor_body(cursor, retry=retry, store=store, on_abandon=on_abandon, wire_format=wire_format)
    if isinstance(cursor, ThreadCursor | StoredThreadCursor):
        return bound_stream(body, thread_id=cursor.thread_id)
    return bound_stream(body, run_id=cursor.log.run_id if isinstance(cursor, RunCursor) else cursor.run_id)


async def _cursor_body(
    cursor: Reader,
    *,
    retry: float,
    store: RunStore | None,
    on_abandon: Callable[[], object] | None,
    wire_format: Format | None,
) -> AsyncGenerator[bytes, None]:
    fmt = wire_format or get_format()
    encoder = fmt.encoder()
    if store is not None:
        store.clients += 1
        store.connections += 1
    try:
        first = fmt.retry_frame(retry) + encoder.start()
        if first:
            yield first
        while not encoder.ended:
            items = await cursor.next(_BATCH)
            if not items:
                break
            yield encoder.encode_all(items)
        last = encoder.finish()
        if last:
            yield last
    finally:
        if store is not None:
            store.clients -= 1
        if not cursor.finished and not encoder.ended:
            # The usual way a reader leaves: one line (with the run's or thread's id), no error.
            logger.info("SSE client gone before the end of its stream")
            if on_abandon is not None:
                try:
                    on_abandon()
                except Exception:
                    logger.exception("on-disconnect action failed")


class _EventStream(EventSourceResponse):
    """An ``EventSourceResponse`` that resets the connection of a stalled client.

    ``on_end`` is told why the stream ended: ``completed`` (the body ended and its
    last bytes were sent), ``client`` (the client went away), ``stalled``,
    ``shutdown`` (the server began shutting down while it was open) or ``error``.
    """

    def __init__(
        self,
        *args: Any,
        on_stalled: Callable[[], object] | None = None,
        on_end: Callable[[str], object] | None = None,
        exit_hook: _ExitHook | None = None,
        **kwargs: Any,
    ) -> None:
        # sse-starlette only ever calls ``set()`` on it, when it sees the server exit.
        kwargs["shutdown_event"] = exit_hook
        super().__init__(*args, **kwargs)
        self._on_stalled = on_stalled
        self._on_end = on_end
        self._exit_hook = exit_hook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        timeout = self.send_timeout
        ended = "client"

        async def send_bounded(message: Message) -> None:
            nonlocal ended
            # sse-starlette bounds data and keep-alive sends, not the one that ends
            # the body: a client stalled when its run ended would hold it forever.
            final = message["type"] == "http.response.body" and not message.get("more_body", False)
            if timeout is None or not final:
                await send(message)
            else:
                with anyio.move_on_after(timeout) as waited:
                    await send(message)
                if waited.cancelled_caught:
                    raise SendTimeoutError
            if final:
                ended = "completed"

        try:
            await super().__call__(scope, receive, send_bounded)
        except SendTimeoutError:
            ended = "stalled"
            _count_stalled(self._on_stalled)
            transport = scope.get(TRANSPORT_KEY)
            if transport is None:
                raise  # the server closes the connection its own way
            _reset(transport)
            # Let the server see the connection lost before this response returns
            # unfinished, so it does not report an incomplete response.
            await asyncio.sleep(0)
        except Exception:
            ended = "error"
            raise
        finally:
            if self._on_end is not None:
                exiting = self._exit_hook is not None and self._exit_hook.fired
                self._on_end("shutdown" if exiting and ended in ("completed", "client") else ended)


class _ExitHook:
    """Stands in for sse-starlette's shutdown event: ``set()`` calls the hook at once.

    Cheaper than an event and a task per connection waiting for it.
    """

    __slots__ = ("_hook", "fired")

    def __init__(self, hook: Callable[[], object] | None) -> None:
        self._hook = hook
        self.fired = False

    def set(self) -> None:
        self.fired = True
        if self._hook is not None:
            self._hook()


_stalled_logged = False


def _count_stalled(on_stalled: Callable[[], object] | None) -> None:
    global _stalled_logged
    if on_stalled is not None:
        on_stalled()
    if not _stalled_logged:
        _stalled_logged = True
        logger.warning("an SSE client accepted nothing for sse.send_timeout: connection reset (counted from now on)")


def sse_response(
    body: AsyncIterator[bytes],
    settings: SSESettings,
    *,
    headers: Mapping[str, str] | None = None,
    on_server_exit: Callable[[], object] | None = None,
    exit_grace: float = 0.0,
    on_stalled: Callable[[], object] | None = None,
    wire_format: Format | None = None,
    on_end: Callable[[str], object] | None = None,
) -> EventSourceResponse:
    """An ``EventSourceResponse`` with our headers and keep-alive, of ``wire_format``'s media type and headers.

    ``on_server_exit`` is called when the server starts shutting down while this
    stream is open; the stream then has ``exit_grace`` seconds to end by itself
    (runs finish or are cancelled, so the client gets its final ``done``).
    ``on_stalled`` is called when the client is dropped for accepting nothing
    for ``send_timeout``. ``on_end`` is told why the stream ended (``completed``,
    ``client``, ``stalled``, ``shutdown`` or ``error``).
    """
    fmt = wire_format or get_format()
    return _EventStream(
        body,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no", **fmt.headers, **(headers or {})},
        media_type=fmt.media_type,
        ping=settings.keepalive,
        sep=_SEP,
        ping_message_factory=_ping,
        send_timeout=settings.send_timeout,
        exit_hook=_ExitHook(on_server_exit),
        shutdown_grace_period=exit_grace,
        on_stalled=on_stalled,
        on_end=on_end,
    )


def stream_agent_sse(
    graph: Any,
    input: Any,
    config: Mapping[str, Any] | None = None,
    *,
    bus: EventBus | None = None,
    thread_id: str | None = None,
    graph_name: str | None = None,
    node: str | None = None,
    max_payload_chars: int = 4000,
    replay_events: int = 20000,
    settings: SSESettings | None = None,
    prices: PricesLike = None,
) -> EventSourceResponse:
    """Run ``graph`` for one request and stream its events as SSE, ``done`` last.

    For an existing FastAPI app::

        @app.post("/chat")
        async def chat(body: Chat) -> EventSourceResponse:
            return stream_agent_sse(graph, {"messages": [...]})

    A handler is attached to ``config["callbacks"]``; the run belongs to the
    response: it starts when streaming starts and is cancelled if the client
    disconnects. With ``bus``, events are also published there (other
    subscribers see the run); otherwise a private bus carries them.
    ``replay_events`` bounds what is buffered for a slow client. ``prices`` (see
    :class:`KikiCallbackHandler`) puts a cost on the ``llm`` and ``done`` events.

    Raises:
        BusError: ``bus`` is given but not running.
        InvalidArgumentError: ``prices`` is not a valid price table.
    """
    if bus is not None and not bus.running:
        raise BusError("stream_agent_sse needs a running EventBus (use it inside 'async with EventBus()')")
    sse = settings or SSESettings()
    options: dict[str, Any] = {"node": node, "thread_id": thread_id, "graph_name": graph_name}
    options.update(max_payload_chars=max_payload_chars, prices=PriceTable.of(prices))  # a bad table fails here
    run_uuid, run_id = new_run_id()
    log = RunLog(run_id, replay_events)
    running: list[asyncio.Task[Any]] = []

    def cancel_run() -> None:
        for task in running:
            task.cancel()

    async def body() -> AsyncIterator[bytes]:
        events = bus if bus is not None else EventBus(node=node)
        if bus is None:
            await events.start()
        remove = events.add_sink(_keeper(log))
        handler = KikiCallbackHandler(events, **options)
        run_config = _with_handler(config, handler, run_uuid, thread_id)
        label = graph_name or getattr(graph, "name", None) or type(graph).__name__
        task = asyncio.get_running_loop().create_task(
            execute_run(graph, input, run_config, handler, run_id, label=label), name=f"kiki-run:{run_id}"
        )
        task.add_done_callback(lambda t: _finish(t, handler, run_id, log))
        running.append(task)
        cursor = RunCursor(log, 0, thread_id=thread_id, slow_client=sse.slow_client, max_backlog=sse.max_backlog)
        try:
            async with contextlib.aclosing(cursor_body(cursor, retry=sse.retry)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            remove()
            task.cancel()
            # Shielded: this runs while the response's task group is being cancelled.
            with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
                await asyncio.gather(task, return_exceptions=True)
                if bus is None:
                    await events.close()

    # On server shutdown the run is cancelled at once, so the client still gets
    # its ``done`` (cancelled) before the connection closes.
    return sse_response(
        body(), sse, headers={"X-Kiki-Run-Id": run_id}, on_server_exit=cancel_run, exit_grace=_CLEANUP_TIMEOUT
    )


def _keeper(log: RunLog) -> Callable[[StreamEvent], None]:
    """A bus sink keeping the events of ``log``'s run in it."""
    run_id = log.run_id

    def keep(event: StreamEvent) -> None:
        if event.run_id == run_id:
            log.append(event)

    return keep


def _finish(task: asyncio.Task[Any], handler: KikiCallbackHandler, run_id: str, log: RunLog) -> None:
    ensure_done(task, handler, run_id)
    if not log.ended:  # the done event was lost (bus full or closed): still end the stream
        log.close()


def _with_handler(
    config: Mapping[str, Any] | None, handler: KikiCallbackHandler, run_uuid: Any, thread_id: str | None
) -> dict[str, Any]:
    merged = dict(config or {})
    callbacks = merged.get("callbacks")
    if callbacks is None:
        merged["callbacks"] = [handler]
    elif isinstance(callbacks, list | tuple):
        merged["callbacks"] = [*callbacks, handler]
    else:  # a callback manager
        manager = callbacks.copy()
        manager.add_handler(handler, inherit=True)
        merged["callbacks"] = manager
    merged["run_id"] = run_uuid
    if thread_id is not None:
        merged["configurable"] = {**merged.get("configurable", {}), "thread_id": thread_id}
    return merged
