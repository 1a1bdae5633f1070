"""Cost where usage is shown: ``GET /runs/{id}`` on a real server, the registry entry, the Prometheus counter."""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

import httpx
import pytest

from kiki_events.config import Settings
from kiki_events.core.records import RunInfo
from kiki_events.events import Cost, DoneEvent, LLMCallEvent, ModelCost, Usage
from kiki_events.runtime import KikiRuntime
from kiki_events.server import create_app
from kiki_events.server.responses import RunStatus
from kiki_events.testing import CapturedEvents
from tests.metrics_support import samples, tally
from tests.servers import async_wait_for, live_server, read_stream
from tests.test_cost import PRICES, dollars, three_models

TIMEOUT = 30.0


def _runtime(scripted: ModuleType, prices: dict[str, Any] | None) -> KikiRuntime:
    settings = Settings.model_validate({"runs": {"shutdown_grace": "1s"}, "prices": prices or {}})
    return KikiRuntime(settings, graphs={"three": three_models(scripted)})


def _streamed_run(client: httpx.Client) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stream a run of ``three`` to its end; its ``done`` (with its run id) and its ``llm`` events' fields."""
    frames = read_stream(client, "POST", "/runs/stream", json={"graph": "three", "message": "Price this run"})
    [done] = [frame for frame in frames if frame.event == "done"]
    fields: dict[str, Any] = done.json
    fields["run_id"] = done.id.rpartition(":")[0]
    return fields, {"llm": [frame.json for frame in frames if frame.event == "llm"]}


def _status(client: httpx.Client, run_id: str) -> dict[str, Any]:
    response = client.get(f"/runs/{run_id}")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    RunStatus.model_validate(body)  # the documented response model holds it
    return body


@pytest.mark.parametrize("priced", [True, False], ids=["prices", "no-prices"])
def test_the_run_status_shows_the_usage_and_cost_of_its_done(scripted: ModuleType, priced: bool) -> None:
    runtime = _runtime(scripted, PRICES if priced else None)
    with live_server(create_app(runtime=runtime)) as server, httpx.Client(base_url=server.url) as client:
        done, streamed = _streamed_run(client)
        status = _status(client, done["run_id"])

    assert status["status"] == done["status"] == "success"
    assert status["usage"] == Usage.model_validate(done["usage"]).model_dump()
    assert status["usage"]["total_tokens"] > 0
    if not priced:
        assert status["cost"] is None and "cost" not in done
        assert all("cost_usd" not in call for call in streamed["llm"])
        return
    assert status["cost"] == done["cost"]
    cost = Cost.model_validate(status["cost"])
    calls = [LLMCallEvent.model_validate({"run_id": "r", "seq": 1, "ts": 0.0, **c}) for c in streamed["llm"]]
    priced_calls = [c for c in calls if c.model != "scripted-c"]
    expected = sum(dollars(c.usage, PRICES.get(f"kiki:{c.model}") or PRICES[c.model or ""]) for c in priced_calls)
    assert cost.total_usd == pytest.approx(expected, abs=1e-8) and cost.total_usd > 0
    assert cost.unpriced_calls == 1 and [m.model for m in cost.models if m.usd is None] == ["scripted-c"]
    # JSON as the wire gives it: an unpriced model has no ``usd``.
    assert [("usd" in m) for m in status["cost"]["models"]] == [True, True, False]


def test_usage_and_cost_survive_the_registry_entry() -> None:
    cost = Cost(
        total_usd=0.0042,
        unpriced_calls=1,
        unpriced_tokens=30,
        models=(
            ModelCost(model="gpt-4o-mini", provider="openai", calls=2, usage=Usage(input_tokens=9), usd=0.0042),
            ModelCost(model="mystery", calls=1, usage=Usage(input_tokens=20, output_tokens=10, total_tokens=30)),
        ),
    )
    usage = Usage(input_tokens=29, output_tokens=10, total_tokens=39, cached_tokens=4)
    info = RunInfo("r1", "node-a", "success", "t1", "team", "alice", 10.5, 12.0, 99, usage=usage, cost=cost)
    plain = RunInfo("r2", "node-a", "running", "t1", "team")

    fields = {k.encode(): v.encode() for k, v in info.to_fields().items()}

    assert RunInfo.from_fields("r1", fields) == info
    assert "usage" not in plain.to_fields() and "cost" not in plain.to_fields()
    assert plain.public()["usage"] is None and plain.public()["cost"] is None
    assert info.public()["cost"]["models"][1] == {
        "model": "mystery",
        "calls": 1,
        "usage": Usage(input_tokens=20, output_tokens=10, total_tokens=30).model_dump(),
    }
    # A malformed value shows nothing rather than something wrong; the rest of the entry stands.
    broken = {**fields, b"cost": b'{"total_usd": "lots"}', b"usage": b"[1, 2]"}
    assert RunInfo.from_fields("r1", broken) == RunInfo(
        "r1", "node-a", "success", "t1", "team", "alice", 10.5, 12.0, 99
    )


@pytest.mark.asyncio
async def test_the_cost_counter_adds_up_what_each_priced_call_cost(scripted: ModuleType) -> None:
    async with _runtime(scripted, PRICES) as runtime:
        runs = []
        for text in ("first run", "second run, a little longer"):
            handle = runtime.runs.start("three", {"messages": [{"role": "user", "content": text}]})
            await asyncio.wait_for(asyncio.shield(handle.task), TIMEOUT)
            runs.append(CapturedEvents([e async for e in runtime.follow(handle.run_id) if e.seq > 0]))
        registry = runtime.metrics_registry
        await async_wait_for(lambda: sum(samples(registry, "kiki_runs_total").values()) == 2, TIMEOUT, "both runs")

        counted = samples(registry, "kiki_llm_cost_usd_total")
        events = [event for run in runs for event in run]
        expected = tally(events).get("kiki_llm_cost_usd_total", {})
        assert counted.keys() == expected.keys()
        for labels, value in expected.items():
            assert counted[labels] == pytest.approx(value, abs=1e-12)
        assert {dict(labels)["model"] for labels in counted} == {"scripted-a", "scripted-b"}  # not the unpriced c
        dones = [run.done for run in runs]
        assert all(isinstance(done, DoneEvent) and done.cost is not None for done in dones)
        total = sum(done.cost.total_usd for done in dones if done.cost is not None)
        assert sum(counted.values()) == pytest.approx(total, abs=1e-8)


@pytest.mark.asyncio
async def test_without_prices_the_cost_counter_has_no_series(scripted: ModuleType) -> None:
    async with _runtime(scripted, None) as runtime:
        handle = runtime.runs.start("three", {"messages": [{"role": "user", "content": "no prices"}]})
        await asyncio.wait_for(asyncio.shield(handle.task), TIMEOUT)
        registry = runtime.metrics_registry
        await async_wait_for(lambda: samples(registry, "kiki_runs_total"), TIMEOUT, "the run counted")

        assert samples(registry, "kiki_llm_tokens_total")
        assert not [s for f in registry.collect() for s in f.samples if s.name == "kiki_llm_cost_usd_total"]
