"""Prometheus metrics: exact values after real runs, no double counting, gauges released, settings."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import ModuleType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kiki_events.config import Settings
from kiki_events.errors import ConfigError
from kiki_events.events import (
    AgentLifecycleEvent,
    DoneEvent,
    LLMCallEvent,
    StatusEvent,
    StreamEvent,
    TokenEvent,
    ToolResultEvent,
    Usage,
)
from kiki_events.runtime import KikiRuntime
from kiki_events.sinks.eventmetrics import EventMetrics
from kiki_events.sinks.metrics import KikiMetrics
from kiki_events.testing import CapturedEvents, MemoryHub
from tests.metrics_support import samples, streamed_calls, tally
from tests.servers import Gate, async_wait_for, gated_graph

TIMEOUT = 30.0
EVENT_FED = (
    "kiki_events_published_total",
    "kiki_llm_requests_total",
    "kiki_llm_request_duration_seconds_count",
    "kiki_llm_time_to_first_token_seconds_count",
    "kiki_llm_tokens_total",
    "kiki_tool_calls_total",
    "kiki_agent_runs_total",
    "kiki_runs_total",
    "kiki_errors_total",
)


def _user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def _runtime(research_team: ModuleType, gate: Gate | None = None, **sections: Any) -> KikiRuntime:
    graphs: dict[str, object] = {"team": research_team.build_graph(token_delay=0.0)}
    if gate is not None:
        graphs["gated"] = gated_graph(research_team, gate, tokens=5)
    return KikiRuntime(Settings.model_validate({"runs": {"shutdown_grace": "1s"}, **sections}), graphs=graphs)


async def _events(runtime: KikiRuntime, run_id: str) -> CapturedEvents:
    return CapturedEvents([e async for e in runtime.follow(run_id) if e.seq > 0])


async def _run(runtime: KikiRuntime, text: str, graph: str = "team") -> CapturedEvents:
    handle = runtime.runs.start(graph, _user(text))
    await asyncio.wait_for(asyncio.shield(handle.task), TIMEOUT)
    return await _events(runtime, handle.run_id)


def _assert_event_fed(registry: CollectorRegistry, events: list[StreamEvent]) -> None:
    expected = tally(events)
    for name in EVENT_FED:
        assert samples(registry, name) == dict(expected.get(name, Counter())), name


def _gauges_are_zero(registry: CollectorRegistry) -> bool:
    return not samples(registry, "kiki_runs_in_progress") and not samples(registry, "kiki_agent_runs_in_progress")


# -- real runs through the runtime -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_demo_runs_give_exactly_what_their_own_events_say(research_team: ModuleType) -> None:
    async with _runtime(research_team) as runtime:
        ok = await _run(runtime, "Compare Redis streams and pub/sub")
        failing_tool = await _run(runtime, "Compare Redis streams and pub/sub, but fail to fetch the page")
        crash = await _run(runtime, "Compare Redis streams and pub/sub and crash")
        registry = runtime.metrics_registry
        events = [*ok, *failing_tool, *crash]

        _assert_event_fed(registry, events)
        tokens = samples(registry, "kiki_llm_tokens_total")
        usage = [e.usage for e in events if isinstance(e, LLMCallEvent)]
        assert sum(v for k, v in tokens.items() if ("token_type", "input") in k) == sum(u.input_tokens for u in usage)
        assert sum(v for k, v in tokens.items() if ("token_type", "output") in k) == sum(u.output_tokens for u in usage)
        assert sum(u.output_tokens for u in usage) > 0
        assert sum(samples(registry, "kiki_llm_requests_total").values()) == len(usage)
        ttft = sum(samples(registry, "kiki_llm_time_to_first_token_seconds_count").values())
        assert ttft == streamed_calls(events) > 0
        # The demo's failing tool and crashing writer, and nothing else, are errors.
        errors = samples(registry, "kiki_errors_total")
        assert errors[(("component", "tool"), ("error_type", "PermissionError"))] == 1
        assert errors[(("component", "run"), ("error_type", "RuntimeError"))] == 1
        assert errors[(("component", "agent"), ("error_type", "RuntimeError"))] >= 1
        assert {k[0][1] for k in errors} == {"tool", "agent", "run"}
        assert samples(registry, "kiki_runs_total") == {
            (("graph", "team"), ("status", "success")): 2,
            (("graph", "team"), ("status", "error")): 1,
        }
        assert (
            samples(registry, "kiki_tool_calls_total")[
                (("agent", "research/tools"), ("status", "error"), ("tool", "fetch_page"))
            ]
            == 1
        )
        assert _gauges_are_zero(registry)
        assert samples(registry, "kiki_run_duration_seconds_count") == {(("graph", "team"),): 3}


@pytest.mark.asyncio
async def test_relayed_copies_count_as_published_only(research_team: ModuleType) -> None:
    gate = Gate()
    handlers: list[Any] = []

    def keep(*args: Any, **kwargs: Any) -> Any:
        from kiki_events.capture.handler import KikiCallbackHandler

        handler = KikiCallbackHandler(*args, **kwargs)
        handlers.append(handler)
        return handler

    async with _runtime(research_team, gate) as runtime:
        parent = runtime.runs.start("gated", _user("Compare Redis streams and pub/sub"), handler_factory=keep)
        await asyncio.wait_for(asyncio.to_thread(gate.reached.wait), TIMEOUT)
        child = await _run(runtime, "Compare Redis streams and pub/sub, but fail to fetch the page")
        relayed = [handlers[0].relay(parent.run_id, e, agent_prefix="delegate") for e in child]
        copies = {e.id for e in relayed if e is not None}
        assert len(copies) > 20  # tokens, tool calls and results, agent steps
        gate.open()
        await asyncio.wait_for(parent.task, TIMEOUT)
        own = await _events(runtime, parent.run_id)
        registry = runtime.metrics_registry

        expected = tally([*child, *(e for e in own if e.id not in copies)])
        for name in EVENT_FED[1:]:
            assert samples(registry, name) == dict(expected.get(name, Counter())), name
        # Each event is counted once, copies included: they are events of the parent run.
        assert samples(registry, "kiki_events_published_total") == dict(
            tally([*child, *own])["kiki_events_published_total"]
        )
        assert _gauges_are_zero(registry)


@pytest.mark.asyncio
async def test_a_cancelled_run_releases_its_in_progress_gauges(research_team: ModuleType) -> None:
    gate = Gate()
    try:
        async with _runtime(research_team, gate) as runtime:
            handle = runtime.runs.start("gated", _user("Compare Redis streams and pub/sub"))
            await asyncio.wait_for(asyncio.to_thread(gate.reached.wait), TIMEOUT)
            registry = runtime.metrics_registry
            await async_wait_for(lambda: samples(registry, "kiki_agent_runs_in_progress"), TIMEOUT)
            assert samples(registry, "kiki_runs_in_progress") == {(("graph", "gated"),): 1}
            assert samples(registry, "kiki_agent_runs_in_progress") == {(("agent", "hold"),): 1}

            await runtime.runs.cancel_and_wait(handle.run_id, timeout=TIMEOUT)
            await async_wait_for(lambda: samples(registry, "kiki_runs_total"), TIMEOUT)

            assert samples(registry, "kiki_runs_total") == {(("graph", "gated"), ("status", "cancelled")): 1}
            assert _gauges_are_zero(registry)
            assert not samples(registry, "kiki_errors_total")
    finally:
        gate.open()


@pytest.mark.asyncio
async def test_a_run_of_another_node_is_counted_by_its_own_node_only(research_team: ModuleType) -> None:
    hub = MemoryHub()
    graphs = {"team": research_team.build_graph(token_delay=0.0)}
    nodes = [
        KikiRuntime(Settings.model_validate({"node": name, "eventbus": {"provider": "memory"}}), graphs=graphs, hub=hub)
        for name in ("node-a", "node-b")
    ]
    a, b = nodes
    async with a, b:
        assert await a.connected(TIMEOUT) and await b.connected(TIMEOUT)
        handle = a.runs.start("team", _user("Compare Redis streams and pub/sub"))
        seen = await asyncio.wait_for(_events(b, handle.run_id), TIMEOUT)  # followed through the bridge
        assert seen.done.status == "success"

        _assert_event_fed(a.metrics_registry, seen)
        for name in EVENT_FED:
            assert not samples(b.metrics_registry, name), name


@pytest.mark.asyncio
async def test_failing_sinks_and_handler_callbacks_are_errors_by_type(research_team: ModuleType) -> None:
    from kiki_events.capture.handler import KikiCallbackHandler

    class Failing(KikiCallbackHandler):
        def _payload(self, value: Any) -> tuple[str, bool]:
            raise ValueError("cannot encode")  # every tool result fails inside the handler

    def broken_sink(event: StreamEvent) -> None:
        if event.type == "done":
            raise KeyError(event.type)

    async with _runtime(research_team) as runtime:
        runtime.bus.add_sink(broken_sink)
        handler: list[Failing] = []

        def make(*args: Any, **kwargs: Any) -> Failing:
            handler.append(Failing(*args, **kwargs))
            return handler[-1]

        handle = runtime.runs.start("team", _user("Compare Redis streams and pub/sub"), handler_factory=make)
        await asyncio.wait_for(asyncio.shield(handle.task), TIMEOUT)
        await async_wait_for(lambda: runtime.runs.handler_errors, TIMEOUT)
        errors = samples(runtime.metrics_registry, "kiki_errors_total")

        assert handler[0].errors >= 2  # web_search and fetch_page
        assert errors == {
            (("component", "handler"), ("error_type", "ValueError")): handler[0].errors,
            (("component", "sink"), ("error_type", "KeyError")): 1,
        }
        assert samples(runtime.metrics_registry, "kiki_bus_handler_errors_total") == {(): 1}


# -- the sink on its own -------------------------------------------------------------------------------------


def _sink(node: str = "node-a", max_runs: int = 100) -> tuple[EventMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return EventMetrics(KikiMetrics(registry), node=node, max_runs=max_runs), registry


def _started(run_id: str, node: str = "node-a", causation: str | None = None) -> StatusEvent:
    return StatusEvent(run_id=run_id, seq=1, ts=1.0, status="started", graph="g", node=node, causation_id=causation)


def test_done_closes_the_agent_steps_a_run_left_open_and_interruptions_are_not_errors() -> None:
    sink, registry = _sink()
    sink(_started("r1"))
    sink(AgentLifecycleEvent(run_id="r1", seq=2, ts=1.0, agent="a", phase="started", node="node-a"))
    sink(AgentLifecycleEvent(run_id="r1", seq=3, ts=1.0, agent="a", phase="started", node="node-a"))
    sink(TokenEvent(run_id="r1", seq=4, ts=1.0, message_id="m", text="x", node="node-a"))
    sink(
        LLMCallEvent(
            run_id="r1", seq=5, ts=1.0, message_id="m", status="cancelled", duration_s=0.5, usage=Usage(input_tokens=3)
        )
    )
    sink(
        ToolResultEvent(
            run_id="r1", seq=6, ts=1.0, tool_call_id="t", name="ask", error="x", error_type="GraphInterrupt"
        )
    )
    assert samples(registry, "kiki_agent_runs_in_progress") == {(("agent", "a"),): 2}
    sink(DoneEvent(run_id="r1", seq=7, ts=1.0, status="interrupted", duration_s=2.0))

    assert _gauges_are_zero(registry)
    assert sink.tracked == 0
    assert not samples(registry, "kiki_errors_total")
    assert not samples(registry, "kiki_tool_calls_total")
    assert samples(registry, "kiki_llm_requests_total") == {
        (("agent", ""), ("model", ""), ("provider", ""), ("status", "cancelled")): 1
    }
    assert samples(registry, "kiki_runs_total") == {(("graph", "g"), ("status", "interrupted")): 1}
    assert samples(registry, "kiki_events_published_total") == {
        (("type", t),): n
        for t, n in {"status": 1, "agent_lifecycle": 2, "token": 1, "llm": 1, "tool_result": 1, "done": 1}.items()
    }


def test_only_runs_started_here_are_counted_and_relayed_copies_only_as_published() -> None:
    sink, registry = _sink()
    sink(_started("remote", node="node-b"))
    sink(LLMCallEvent(run_id="remote", seq=2, ts=1.0, message_id="m", status="success", duration_s=1.0))
    sink(_started("r1", causation="caller:3"))
    relayed = LLMCallEvent(
        run_id="r1", seq=2, ts=1.0, message_id="m", status="error", duration_s=1.0, causation_id="other:9"
    )
    sink(relayed)  # not a kind the relay sends, but the rule does not depend on the kind
    sink(
        ToolResultEvent(run_id="r1", seq=3, ts=1.0, tool_call_id="t", name="x", causation_id="other:10", node="node-b")
    )
    sink(ToolResultEvent(run_id="r1", seq=4, ts=1.0, tool_call_id="u", name="x", causation_id="caller:3"))

    assert samples(registry, "kiki_tool_calls_total") == {(("agent", ""), ("status", "success"), ("tool", "x")): 1}
    assert not samples(registry, "kiki_llm_requests_total")
    assert samples(registry, "kiki_events_published_total") == {
        (("type", "status"),): 1,
        (("type", "llm"),): 1,
        (("type", "tool_result"),): 2,
    }


def test_past_max_runs_the_oldest_run_is_forgotten_and_its_gauges_released() -> None:
    sink, registry = _sink(max_runs=2)
    for run_id in ("r1", "r2", "r3"):
        sink(_started(run_id))
        sink(AgentLifecycleEvent(run_id=run_id, seq=2, ts=1.0, agent="a", phase="started"))

    assert sink.tracked == 2
    assert sink.forgotten == 1
    assert samples(registry, "kiki_runs_in_progress") == {(("graph", "g"),): 2}
    assert samples(registry, "kiki_agent_runs_in_progress") == {(("agent", "a"),): 2}
    sink(DoneEvent(run_id="r1", seq=3, ts=1.0, status="success"))  # forgotten: not counted
    assert not samples(registry, "kiki_runs_total")


# -- settings and registries ---------------------------------------------------------------------------------


def test_a_metrics_path_must_start_with_a_slash() -> None:
    with pytest.raises(ConfigError, match=r"metrics\.path: must start with '/', e.g. /metrics \(got 'metrics'\)"):
        Settings.from_mapping({"metrics": {"path": "metrics"}})


def test_an_application_passes_its_own_registry_once() -> None:
    registry = CollectorRegistry()
    runtime = KikiRuntime(registry=registry)
    assert runtime.metrics_registry is registry
    assert registry.get_sample_value("kiki_sse_connections_total") == 0
    with pytest.raises(ConfigError, match="holds kiki metrics already"):
        KikiRuntime(registry=registry)


def test_metrics_off_means_no_metric_objects_and_no_sink() -> None:
    runtime = KikiRuntime(Settings.model_validate({"metrics": {"enabled": False}}))
    assert runtime.metrics is None
    assert "metrics" not in runtime.sinks.names()
    assert "metrics" in KikiRuntime().sinks.names()


def test_a_multiprocess_directory_set_after_import_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="set after prometheus_client was imported"):
        KikiRuntime()
