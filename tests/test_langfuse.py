"""Langfuse tracing of the runs the server starts, checked offline.

Langfuse's span processor exports into an in-memory exporter (nothing leaves the
process; ``base_url`` points at a closed port) on a tracer provider of the test's
own, so the spans checked are the ones Langfuse would send.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import langfuse
import pytest
from langchain_core.messages import HumanMessage
from langfuse._client.resource_manager import LangfuseResourceManager
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kiki_events.config import Settings
from kiki_events.core.tracing import TracedRun
from kiki_events.events import DoneEvent
from kiki_events.runtime import KikiRuntime
from kiki_events.server import create_app
from kiki_events.sinks import langfuse as langfuse_sink
from tests.servers import live_server, read_stream, wait_for

ROOT_URL = "http://127.0.0.1:9"  # nothing listens: a test never reaches a Langfuse server
TASK = "Compare Redis streams and pub/sub"
TOKEN = "alice-token-0123456789"
KEYS = {"public_key": "pk-lf-kiki-test", "secret_key": "sk-lf-kiki-test", "base_url": ROOT_URL}


def _settings(**langfuse_keys: Any) -> Settings:
    return Settings.model_validate(
        {
            "langfuse": {"enabled": True, **KEYS, **langfuse_keys},
            "server": {"auth": {"bearer_tokens": {"alice": TOKEN}}},
        }
    )


@pytest.fixture(autouse=True)
def _fresh_langfuse(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No Langfuse keys from the environment, and no client left over (one per public key in a process)."""
    for name in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_BASE_URL", "LANGFUSE_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("LANGFUSE_TRACING_ENABLED", raising=False)
    LangfuseResourceManager.reset()
    yield
    LangfuseResourceManager.reset()


class Traced:
    """Langfuse tracing built from settings, exporting into memory."""

    def __init__(self, settings: Settings) -> None:
        self.exporter = InMemorySpanExporter()
        tracing = langfuse_sink.create(settings, tracer_provider=TracerProvider(), span_exporter=self.exporter)
        assert tracing is not None
        self.tracing = tracing

    def spans(self, trace_id: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if _trace_id(span) == trace_id]

    def wait_for_root(self, trace_id: str) -> ReadableSpan:
        """The root span of ``trace_id``, once exported (the run's last callbacks may still be running)."""

        def root() -> ReadableSpan | None:
            self.tracing.flush()
            spans = self.spans(trace_id)
            ids = {span.context.span_id for span in spans if span.context is not None}
            # Langfuse gives the root of a trace whose id it was told a parent it never exports.
            return next((span for span in spans if span.parent is None or span.parent.span_id not in ids), None)

        wait_for(root, what=f"the root span of trace {trace_id}")
        found = root()
        assert found is not None
        return found


def _trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _done(frames: list[Any]) -> dict[str, Any]:
    """The ``done`` of a streamed run, with its ``run_id`` (from the frame's id)."""
    [frame] = [frame for frame in frames if frame.event == "done"]
    done: dict[str, Any] = frame.json
    done.setdefault("run_id", frame.id.rpartition(":")[0])
    return done


def test_every_span_of_a_multi_agent_run_carries_the_run_attributes_and_the_done_trace_id(
    research_team: ModuleType,
) -> None:
    settings = _settings(tags=["kiki", "research"])
    traced = Traced(settings)
    runtime = KikiRuntime(settings, graphs={"team": research_team.build_graph()}, tracing=traced.tracing)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with (
        live_server(create_app(runtime=runtime)) as server,
        httpx.Client(base_url=server.url, headers=headers) as client,
    ):
        first = _done(read_stream(client, "POST", "/runs/stream", json={"graph": "team", "message": TASK}))
        thread_id = first["thread_id"]
        body = {"graph": "team", "message": TASK, "thread_id": thread_id}
        second = _done(read_stream(client, "POST", "/runs/stream", json=body))
        statuses = [client.get(f"/runs/{done['run_id']}").json() for done in (first, second)]

    assert first["status"] == second["status"] == "success"
    assert first["trace_id"] != second["trace_id"]  # one trace per run
    for done, status in zip((first, second), statuses, strict=True):
        trace_id = done["trace_id"]
        assert len(trace_id) == 32
        assert status["trace_id"] == trace_id
        assert trace_id == traced.tracing.trace_id_of(done["run_id"])  # known when the run started
        root = traced.wait_for_root(trace_id)
        spans = traced.spans(trace_id)
        generations = [s for s in spans if _attrs(s).get("langfuse.observation.type") == "generation"]
        # The demo team: supervisor twice, researcher twice, writer once; each a model call.
        assert len(generations) == 5
        for span in spans:
            attrs = _attrs(span)
            assert attrs.get("session.id") == thread_id, span.name
            assert attrs.get("user.id") == "alice", span.name
            assert sorted(attrs.get("langfuse.trace.tags", ())) == ["kiki", "research"], span.name
        assert all("langfuse.observation.usage_details" in _attrs(g) for g in generations)
        assert _attrs(root).get("langfuse.trace.name") == "team"  # the graph's name
    # Every span of both runs belongs to one of the two traces.
    assert {_trace_id(s) for s in traced.exporter.get_finished_spans()} == {first["trace_id"], second["trace_id"]}


@pytest.mark.asyncio
async def test_a_span_a_graph_node_opens_itself_gets_the_run_attributes_too() -> None:
    """The attributes are bound around the whole run, so they reach spans Langfuse's handler does not make."""
    from langgraph.graph import END, START, StateGraph
    from typing_extensions import TypedDict

    class State(TypedDict):
        text: str

    async def lookup(state: State) -> State:
        with langfuse.get_client(public_key=KEYS["public_key"]).start_as_current_observation(name="lookup"):
            return {"text": state["text"].upper()}

    builder = StateGraph(State)
    builder.add_node("lookup", lookup)
    builder.add_edge(START, "lookup")
    builder.add_edge("lookup", END)
    settings = _settings(trace_name="kiki-lookup")
    traced = Traced(settings)
    async with KikiRuntime(settings, graphs={"lookup": builder.compile()}, tracing=traced.tracing) as runtime:
        handle = runtime.runs.start("lookup", {"text": "hi"}, principal="bob")
        assert await handle.task == "success"
    traced.tracing.flush()

    [own] = [s for s in traced.exporter.get_finished_spans() if s.name == "lookup" and s.parent is not None]
    attrs = _attrs(own)
    assert attrs.get("session.id") == handle.thread_id
    assert attrs.get("user.id") == "bob"
    assert attrs.get("langfuse.trace.name") == "kiki-lookup"
    assert handle.record.trace_id == traced.tracing.trace_id_of(handle.run_id)


async def _run_once(runtime: KikiRuntime, research_team: ModuleType) -> DoneEvent:
    done: list[DoneEvent] = []
    remove = runtime.bus.add_sink(lambda event: done.append(event) if isinstance(event, DoneEvent) else None)
    try:
        handle = runtime.runs.start("team", {"messages": [HumanMessage(TASK)]}, principal="alice")
        assert await handle.task == "success"
    finally:
        remove()
    assert runtime.store.get(handle.run_id, "alice").info().public()["trace_id"] is None
    [event] = [event for event in done if event.run_id == handle.run_id]
    return event


@pytest.mark.asyncio
async def test_enabled_without_keys_warns_once_and_runs_go_on_untraced(
    research_team: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.model_validate({"langfuse": {"enabled": True, "base_url": ROOT_URL}})
    caplog.set_level(logging.DEBUG)
    runtime = KikiRuntime(settings, graphs={"team": research_team.build_graph()})
    async with runtime:
        assert runtime.runs.tracing is None
        done = [await _run_once(runtime, research_team) for _ in range(2)]

    assert [d.trace_id for d in done] == [None, None]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "langfuse.public_key (or LANGFUSE_PUBLIC_KEY)" in message
    assert "langfuse.secret_key (or LANGFUSE_SECRET_KEY)" in message
    assert "not traced" in message


@pytest.mark.asyncio
async def test_disabled_never_constructs_langfuse(
    research_team: ModuleType, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    constructed: list[object] = []
    monkeypatch.setattr(langfuse, "Langfuse", lambda *a, **kw: constructed.append(kw))
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-from-env")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-from-env")
    caplog.set_level(logging.DEBUG)
    runtime = KikiRuntime(Settings(), graphs={"team": research_team.build_graph()})
    async with runtime:
        assert runtime.runs.tracing is None
        done = await _run_once(runtime, research_team)

    assert done.trace_id is None
    assert constructed == []
    assert not [r for r in caplog.records if "langfuse" in r.name or "Langfuse" in r.getMessage()]


def test_keys_come_from_the_environment_and_langfuse_tracing_enabled_false_turns_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings.model_validate({"langfuse": {"enabled": True, "base_url": ROOT_URL}})
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-from-env")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-from-env")
    tracing = langfuse_sink.create(settings, tracer_provider=TracerProvider(), span_exporter=InMemorySpanExporter())
    assert tracing is not None
    assert tracing.public_key == "pk-lf-from-env"

    monkeypatch.setenv("LANGFUSE_TRACING_ENABLED", "false")
    assert langfuse_sink.create(settings, tracer_provider=TracerProvider()) is None


def test_the_sample_rate_decides_by_trace_id_and_an_unsampled_run_has_no_trace() -> None:
    none = Traced(_settings(sample_rate=0.0)).tracing
    run = TracedRun("r-1", "t-1", "team", "alice")
    untraced = none.trace(run)
    assert (untraced.trace_id, tuple(untraced.callbacks), dict(untraced.metadata)) == (None, (), {})

    LangfuseResourceManager.reset()
    half = Traced(_settings(sample_rate=0.5)).tracing
    kept = [half.trace(TracedRun(f"r-{i}", "t-1", "team")).trace_id is not None for i in range(200)]
    assert 60 < sum(kept) < 140  # a fixed set of run ids: the same share on every run
    assert kept == [half.trace(TracedRun(f"r-{i}", "t-1", "team")).trace_id is not None for i in range(200)]


def test_the_global_tracer_provider_is_left_alone_unless_asked() -> None:
    before = trace.get_tracer_provider()
    assert langfuse_sink.create(_settings()) is not None
    assert trace.get_tracer_provider() is before

    # Installing one is for good in a process: check it in a fresh one.
    script = textwrap.dedent(
        f"""
        from opentelemetry import trace
        from kiki_events.config import Settings
        from kiki_events.sinks import langfuse
        keys = {KEYS!r}
        before = trace.get_tracer_provider()
        langfuse.create(Settings.model_validate({{"langfuse": {{"enabled": True, **keys}}}}))
        print(trace.get_tracer_provider() is before)
        keys["public_key"] = "pk-lf-other"
        keys["global_tracer_provider"] = True
        langfuse.create(Settings.model_validate({{"langfuse": {{"enabled": True, **keys}}}}))
        print(type(trace.get_tracer_provider()).__module__)
        """
    )
    env = {name: value for name, value in os.environ.items() if not name.startswith("LANGFUSE_")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "opentelemetry.sdk.trace"]
