"""Per-event sinks: built from the registered factories, attached while the runtime runs."""

from __future__ import annotations

import logging

import pytest

from kiki_events.config import Settings
from kiki_events.events import StreamEvent, TokenEvent
from kiki_events.runtime import KikiRuntime, build
from kiki_events.sinks import Sink, SinkContext, SinkSet


class Recorder(Sink):
    """Keeps every event and what happened to it."""

    def __init__(self, name: str = "recorder") -> None:
        self.name = name
        self.events: list[StreamEvent] = []
        self.calls: list[str] = []

    def __call__(self, event: StreamEvent) -> None:
        self.events.append(event)

    async def start(self) -> None:
        self.calls.append("start")

    async def close(self) -> None:
        self.calls.append("close")


class Plain(Sink):
    """A sink that inherits the do-nothing start and close."""

    name = "plain"

    def __call__(self, event: StreamEvent) -> None:
        return


def token(seq: int) -> TokenEvent:
    return TokenEvent(run_id="run-1", seq=seq, ts=1.0, thread_id="thread-1", message_id="m1", text=f"t{seq}")


def test_a_sink_follows_the_protocol() -> None:
    assert isinstance(Recorder(), Sink)
    assert isinstance(Plain(), Sink)


def test_build_sinks_calls_every_registered_factory_and_skips_the_ones_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[SinkContext] = []

    def on(context: SinkContext) -> Sink:
        seen.append(context)
        return Recorder("on")

    def off(context: SinkContext) -> Sink | None:
        return None

    monkeypatch.setattr(build, "SINKS", (on, off, lambda context: Plain()))
    context = SinkContext(Settings(), node="node-a")

    sinks = build.build_sinks(context)

    assert sinks.names() == ["on", "plain"]
    assert seen == [context]
    assert len(build.build_sinks(context)) == 2
    monkeypatch.setattr(build, "SINKS", ())
    assert len(build.build_sinks(context)) == 0


@pytest.mark.asyncio
async def test_the_runtime_attaches_its_sinks_while_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(build, "SINKS", (lambda context: recorder, lambda context: Plain()))
    runtime = KikiRuntime(Settings())
    assert runtime.sinks.names() == ["recorder", "plain"]

    async with runtime:
        assert recorder.calls == ["start"]
        for seq in (1, 2):
            runtime.bus.publish(token(seq))
        await runtime.bus.drain()

    assert [event.seq for event in recorder.events] == [1, 2]
    assert recorder.calls == ["start", "close"]


@pytest.mark.asyncio
async def test_a_sink_that_fails_to_close_is_logged_and_the_others_still_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Recorder):
        async def close(self) -> None:
            raise RuntimeError("cannot flush")

    broken, after = Broken("broken"), Recorder("after")
    sinks = SinkSet([broken, after])
    async with KikiRuntime(Settings()) as runtime:
        await sinks.attach(runtime.bus)
        runtime.bus.publish(token(1))
        await runtime.bus.drain()
        with caplog.at_level(logging.ERROR, logger="kiki_events.sinks"):
            await sinks.detach()
        runtime.bus.publish(token(2))
        await runtime.bus.drain()
        await sinks.detach()  # idempotent

    assert [event.seq for event in broken.events] == [1]
    assert after.calls == ["start", "close"]
    assert "sink broken failed to close" in caplog.text
