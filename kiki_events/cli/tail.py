"""``kiki-events tail``: live events from Redis, one line each (or JSON lines).

It joins the deployment like a node that only listens. What it follows:

* ``--run ID`` – every event of one run, from its start (or after ``--after SEQ``),
  then live, wherever the run executes: a runtime of its own follows the run
  (:meth:`KikiRuntime.follow <kiki_events.runtime.KikiRuntime.follow>`), caught up
  from the run's node or stream, gaps repaired; what cannot be recovered is a
  notice line (``missed``, ``gap``, ``lagging``). Ends after the run's ``done``
  (at once for a finished run, once it is printed);
* ``--thread ID`` – every run that starts on the thread from now on (a delegate
  run relayed into another shows there only);
* ``--topic T`` – lifecycle events of every run whose topic matches ``T``
  (``agent:started``, ``agent:*``, ``multiagent:sync`` …);
* nothing – lifecycle events of every run.

The last three listen to the bridge's transport (pub/sub or streams, as configured)
and print each event of the frames it delivers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from ..codec import encode
from ..config import HandoffSettings, Settings, load_settings
from ..errors import ConfigError, MissingDependencyError, RunNotFoundError, TransportError
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
from ..runtime import KikiRuntime, default_node_name
from ..runtime.observer import Observer, check_redis, redis_location
from ..topics import topic_matches, topic_of
from .common import config_file, fail

if TYPE_CHECKING:
    from ..transports.base import ControlMessage
    from ..transports.wire import Message

__all__ = ["format_event", "tail", "tail_command"]

_TEXT = 60
_SEEN = 4096


def _short(value: Any, limit: int = _TEXT) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _token(event: TokenEvent) -> str:
    text = _short(event.text)
    return f"{event.message_id} {text!r}" if event.kind == "text" else f"{event.message_id} (reasoning) {text!r}"


def _tool_call(event: ToolCallEvent) -> str:
    detail = event.name or event.args_delta or (_short(event.args) if event.args is not None else "")
    return f"{event.phase} {event.tool_call_id} {_short(detail or '')}".rstrip()


def _tool_result(event: ToolResultEvent) -> str:
    if event.error is not None:
        return f"{event.tool_call_id} {event.name or ''} error: {_short(event.error)}"
    return f"{event.tool_call_id} {event.name or ''} → {_short(event.output or '')}"


def _lifecycle(event: AgentLifecycleEvent) -> str:
    duration = f" {event.duration_s:.3f}s" if event.duration_s is not None else ""
    error = f" {_short(event.error)}" if event.error else ""
    return f"{event.phase}{duration}{error}"


def _llm(event: LLMCallEvent) -> str:
    model = event.model or "?"
    usage = event.usage
    first = f" ttft={event.ttft_s:.3f}s" if event.ttft_s is not None else ""
    failed = f" {event.error_type}" if event.error_type else ""
    cost = f" cost=${event.cost_usd:.6f}" if event.cost_usd is not None else ""
    return (
        f"{event.message_id} {model} {event.status}{failed} {event.duration_s:.3f}s{first}"
        f" tokens in={usage.input_tokens} out={usage.output_tokens}{cost}"
    )


def _error(event: ErrorEvent) -> str:
    # The type once: ``message`` leaves it out (a node of an older version put it in front).
    message = event.message.removeprefix(f"{event.error_type}: ")
    return f"{event.error_type}: {_short(message)}" if message else event.error_type


def _done(event: DoneEvent) -> str:
    usage = event.usage
    text = f"{event.status} {event.duration_s:.3f}s tokens in={usage.input_tokens} out={usage.output_tokens}"
    cost = event.cost
    if cost is not None:
        text += f" cost=${cost.total_usd:.6f}"
        unpriced = sorted({item.model or "?" for item in cost.models if item.usd is None})
        if unpriced:
            text += f" (unpriced: {', '.join(unpriced)})"
    return text


_PAYLOADS: dict[type[Any], Callable[[Any], str]] = {
    TokenEvent: _token,
    ToolCallEvent: _tool_call,
    ToolResultEvent: _tool_result,
    AgentLifecycleEvent: _lifecycle,
    LLMCallEvent: _llm,
    StatusEvent: lambda event: f"{event.status} {_short(event.graph or event.detail or '')}".rstrip(),
    CustomEvent: lambda event: f"{event.name} {_short(event.data)}",
    InterruptEvent: lambda event: f"{len(event.interrupts)} interrupt(s)",
    ErrorEvent: _error,
    DoneEvent: _done,
}


def _payload(event: StreamEvent) -> str:
    return _PAYLOADS[type(event)](event)


def format_event(event: StreamEvent) -> str:
    """One readable line: time, ``run:seq``, agent, type, a short payload.

    A connection notice (a ``status`` with ``seq`` 0: ``missed``, ``gap``, ``lagging``)
    reads ``<time> <run> -- <status>: <detail>``.
    """
    clock = time.strftime("%H:%M:%S", time.localtime(event.ts)) + f".{int(event.ts * 1000) % 1000:03d}"
    if event.seq == 0 and isinstance(event, StatusEvent):
        return f"{clock} {event.run_id} -- {event.status}: {event.detail or 'see the events around it'}"
    return f"{clock} {event.run_id}:{event.seq} {event.agent or '-'} {event.type} {_payload(event)}".rstrip()


def _line(event: StreamEvent, as_json: bool) -> str:
    return encode(event).decode() if as_json else format_event(event)


class _Printer:
    """The transport's listener: prints the events of the frames it is given."""

    def __init__(
        self,
        out: IO[str],
        *,
        as_json: bool,
        topic: str | None,
        on_announce: Callable[[str], None],
    ) -> None:
        self.out = out
        self.as_json = as_json
        self.topic = topic
        self.on_announce = on_announce
        self.printed = 0
        self._last: OrderedDict[str, int] = OrderedDict()

    def events_of(self, message: Message) -> list[StreamEvent]:
        """The events of a frame this tail shows (decoded and validated by the transport)."""
        from ..transports.wire import KIND_THREAD

        if message.kind == KIND_THREAD and message.run_id is not None:
            fields = message.header.get("i")
            if not (isinstance(fields, dict) and fields.get("relayed_into")):
                self.on_announce(message.run_id)  # a relayed delegate shows in the run relaying it
            return []
        events = message.events
        if self.topic is not None:
            topic = self.topic
            events = [e for e in events if (t := topic_of(e)) is not None and topic_matches(topic, t)]
        return events

    def on_frame(self, message: Message) -> None:
        for event in self.events_of(message):
            last = self._last.get(event.run_id, 0)
            if event.seq <= last:
                continue  # replayed or backfilled twice
            self._last[event.run_id] = event.seq
            self._last.move_to_end(event.run_id)
            if len(self._last) > _SEEN:
                self._last.popitem(last=False)
            self.out.write(_line(event, self.as_json) + "\n")
            self.printed += 1
        self.out.flush()

    def on_control(self, message: ControlMessage) -> None:
        return

    def on_connected(self, resumed: bool) -> None:
        if resumed and not self.as_json:
            self.out.write("-- reconnected to Redis; events sent meanwhile may be missing\n")
            self.out.flush()


async def tail(
    settings: Settings,
    *,
    run: str | None = None,
    after: int = 0,
    thread: str | None = None,
    topic: str | None = None,
    as_json: bool = False,
    out: IO[str],
    node: str | None = None,
    connect_timeout: float = 3.0,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Print events until cancelled or ``stop`` is set; with ``run``, until that run ended.

    ``after`` (with ``run``): print the events with a greater ``seq`` only. ``ready`` is
    set once this tail is connected and listening. Returns ``0``, or ``1`` when the
    followed run ended without its ``done`` reaching this tail (after a ``missed`` notice).

    Raises:
        ConfigError: the provider is not ``redis``, or the Redis settings are invalid.
        TransportError: Redis cannot be reached.
        RunNotFoundError: no node knows ``run``.
    """
    bus = settings.eventbus
    if bus.provider != "redis" or not bus.enabled:
        raise ConfigError(
            f"tail reads events from Redis, but eventbus.provider is {bus.provider!r}"
            + ("" if bus.enabled else " (and eventbus.enabled is false)")
            + "; use a configuration with provider: redis"
        )
    await check_redis(settings, connect_timeout)
    if run is not None:
        return await _tail_run(
            settings,
            run,
            after=after,
            as_json=as_json,
            out=out,
            node=node,
            timeout=connect_timeout,
            ready=ready,
            stop=stop,
        )
    return await _listen(
        settings,
        thread=thread,
        topic=topic,
        as_json=as_json,
        out=out,
        node=node,
        timeout=connect_timeout,
        ready=ready,
        stop=stop,
    )


async def _until_stopped(work: asyncio.Future[int], stop: asyncio.Event | None) -> int:
    """``work``'s result, or ``0`` once ``stop`` is set (``work`` is then cancelled)."""
    stopping = asyncio.ensure_future(stop.wait()) if stop is not None else None
    try:
        await asyncio.wait([w for w in (work, stopping) if w is not None], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in (work, stopping):
            if waiting is not None and not waiting.done():
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
    return work.result() if not work.cancelled() else 0


async def _tail_run(
    settings: Settings,
    run_id: str,
    *,
    after: int,
    as_json: bool,
    out: IO[str],
    node: str | None,
    timeout: float,
    ready: asyncio.Event | None,
    stop: asyncio.Event | None,
) -> int:
    bus = settings.eventbus
    # A node that runs nothing, serves no agent and wants no lifecycle broadcasts:
    # it only follows the run. A reader that falls behind skips ahead with a notice.
    listener = settings.model_copy(
        update={
            "node": node or f"tail-{default_node_name()}",
            "graphs": {},
            "handoff": HandoffSettings(),
            "sse": settings.sse.model_copy(update={"slow_client": "skip"}),
            "eventbus": bus.model_copy(update={"subscribe": bus.subscribe.model_copy(update={"events": ()})}),
        }
    )
    async with KikiRuntime(listener) as runtime:
        if not await runtime.connected(timeout):
            raise TransportError(f"cannot reach Redis at {redis_location(settings)}")
        if ready is not None:
            ready.set()
        return await _until_stopped(asyncio.ensure_future(_print_run(runtime, run_id, after, as_json, out)), stop)


async def _print_run(runtime: KikiRuntime, run_id: str, after: int, as_json: bool, out: IO[str]) -> int:
    done = False
    async for event in runtime.follow(run_id, after=after):
        out.write(_line(event, as_json) + "\n")
        out.flush()
        done = done or event.type == "done"
    return 0 if done else 1


async def _listen(
    settings: Settings,
    *,
    thread: str | None,
    topic: str | None,
    as_json: bool,
    out: IO[str],
    node: str | None,
    timeout: float,
    ready: asyncio.Event | None,
    stop: asyncio.Event | None,
) -> int:
    bus = settings.eventbus
    # Lifecycle broadcasts only when they are wanted; a thread is watched instead.
    wanted = (topic,) if topic is not None else (() if thread else ("*",))
    subscribe = bus.subscribe.model_copy(update={"events": wanted})
    settings = settings.model_copy(update={"eventbus": bus.model_copy(update={"subscribe": subscribe})})
    watching: set[str] = set()
    tasks: set[asyncio.Task[Any]] = set()

    def announce(run_id: str) -> None:
        if run_id not in watching:
            watching.add(run_id)
            task = asyncio.get_running_loop().create_task(observer.watch("run", run_id))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    printer = _Printer(out, as_json=as_json, topic=topic, on_announce=announce)
    observer = Observer(settings, printer, node=node or f"tail-{default_node_name()}")
    async with observer:
        try:
            if thread is not None:
                await observer.watch("thread", thread, connect_timeout=timeout)
            if ready is not None:
                ready.set()
            forever = asyncio.get_running_loop().create_future()  # until cancelled or stopped
            return await _until_stopped(forever, stop)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def tail_command(args: argparse.Namespace) -> int:
    """``kiki-events tail`` with the parsed ``args``; the exit code (2 and one line on stderr
    for a bad configuration, an unreachable Redis or an unknown run; 130 on Ctrl-C)."""
    config = config_file(args.config)
    try:
        settings = load_settings(config)
        if args.topic is not None and not args.topic.strip():
            raise ConfigError("--topic: give a topic such as agent:started or agent:*")
        run = tail(
            settings,
            run=args.run,
            after=args.after,
            thread=args.thread,
            topic=args.topic,
            as_json=args.json,
            out=sys.stdout,
        )
        return asyncio.run(run)
    except (ConfigError, MissingDependencyError, TransportError) as exc:
        source = f"{config}: " if config is not None and not str(exc).startswith(str(config)) else ""
        return fail(f"{source}{exc}")
    except RunNotFoundError as exc:
        return fail(f"{exc} (no node of this deployment knows it)")
    except KeyboardInterrupt:
        return 130
