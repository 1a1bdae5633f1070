"""The cost of LLM calls: the price table, pricing, the ``prices`` settings, and the cost a run's events carry."""

from __future__ import annotations

import asyncio
import contextvars
import math
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import InputTokenDetails, OutputTokenDetails, UsageMetadata
from langgraph.graph import END, START, MessagesState, StateGraph

from kiki_events import KikiCallbackHandler
from kiki_events.capture.handler import new_run_id
from kiki_events.cli.tail import format_event
from kiki_events.codec import decode, encode
from kiki_events.config import Settings, load_settings
from kiki_events.cost import CostTally, Price, PriceTable
from kiki_events.errors import ArgumentTypeError, ConfigError, InvalidArgumentError
from kiki_events.events import Cost, DoneEvent, LLMCallEvent, ModelCost, StreamEvent, TokenEvent, Usage
from kiki_events.testing import CapturedEvents, capture_run
from tests.scenarios import user

ROOT = Path(__file__).resolve().parent.parent

# The prices the handler tests run with: ``scripted-b`` is priced twice, provider-qualified winning.
PRICES: dict[str, dict[str, float]] = {
    "scripted-a": {"input": 2.0, "output": 8.0, "cached": 0.5},
    "scripted-b": {"input": 100.0, "output": 100.0},
    "kiki:scripted-b": {"input": 1.0, "output": 4.0},
}


def _usage(inputs: int, outputs: int, cached: int = 0, reasoning: int = 0) -> Usage:
    return Usage(
        input_tokens=inputs,
        output_tokens=outputs,
        total_tokens=inputs + outputs,
        cached_tokens=cached,
        reasoning_tokens=reasoning,
    )


def dollars(usage: Usage, price: dict[str, float]) -> float:
    """What ``usage`` costs at ``price``, worked out here independently of the library."""
    fresh = usage.input_tokens - usage.cached_tokens
    cached = price.get("cached", price["input"])
    return (fresh * price["input"] + usage.cached_tokens * cached + usage.output_tokens * price["output"]) / 1e6


# -- pricing ----------------------------------------------------------------------------------


def test_cached_tokens_are_part_of_the_input_and_reasoning_is_paid_as_output() -> None:
    price = Price(input=2.0, output=8.0, cached=0.5)

    # 600 fresh input at $2, 400 cached at $0.50, 500 output (200 of them reasoning) at $8, per million.
    assert price.usd(_usage(1000, 500, cached=400, reasoning=200)) == pytest.approx((1200 + 200 + 4000) / 1e6)
    assert price.usd(_usage(1000, 500, cached=400, reasoning=200)) == price.usd(_usage(1000, 500, cached=400))
    # No cached price: cached input costs what input costs.
    assert Price(2.0, 8.0).usd(_usage(1000, 500, cached=400)) == Price(2.0, 8.0).usd(_usage(1000, 500))
    # More cached than input (a confused integration) is never priced below zero input.
    assert price.usd(_usage(100, 0, cached=500)) == pytest.approx(100 * 0.5 / 1e6)
    assert price.usd(Usage()) == 0.0


def test_a_model_is_found_provider_qualified_first_then_by_its_plain_name_exactly() -> None:
    table = PriceTable(
        {
            "gpt-4o": {"input": 2.5, "output": 10.0},
            "openai:gpt-4o": Price(5.0, 15.0),
            "llama3:8b": {"input": 0.1, "output": 0.1},
            "ollama:llama3:8b": {"input": 0.0, "output": 0.0},
        }
    )

    assert table.price_of("gpt-4o", "openai") == Price(5.0, 15.0)
    assert table.price_of("gpt-4o", "azure") == Price(2.5, 10.0)
    assert table.price_of("gpt-4o", None) == Price(2.5, 10.0)
    assert table.price_of("llama3:8b", "ollama") == Price(0.0, 0.0)  # a model name may hold colons
    assert table.price_of("llama3:8b", "groq") == Price(0.1, 0.1)
    for model, provider in [("GPT-4o", "openai"), ("gpt-4o-2024-08-06", "openai"), ("gpt-4", None), (None, "openai")]:
        assert table.price_of(model, provider) is None, model  # never a guess: no case folding, no prefixes
    assert len(table) == 4 and set(table) == {"gpt-4o", "openai:gpt-4o", "llama3:8b", "ollama:llama3:8b"}


@pytest.mark.parametrize(
    ("prices", "error", "fragment"),
    [
        ({"gpt-4o": {"input": -1, "output": 1}}, InvalidArgumentError, "gpt-4o.input must be a finite number"),
        ({"gpt-4o": {"input": 1, "output": math.inf}}, InvalidArgumentError, "gpt-4o.output must be a finite"),
        ({"gpt-4o": {"input": 1, "output": 1, "cache": 1}}, InvalidArgumentError, "unknown keys ['cache']"),
        ({"gpt-4o": {"input": 1}}, InvalidArgumentError, "needs output"),
        ({"gpt-4o": {"input": True, "output": 1}}, ArgumentTypeError, "US dollars per million tokens"),
        ({"gpt-4o": {"input": "1", "output": 1}}, ArgumentTypeError, "US dollars per million tokens"),
        ({"gpt-4o": 3}, ArgumentTypeError, "must be a Price or a mapping"),
        ({"gpt 4o": {"input": 1, "output": 1}}, InvalidArgumentError, "without spaces"),
        ({"openai:": {"input": 1, "output": 1}}, InvalidArgumentError, "provider:model, both non-empty"),
        ({"": {"input": 1, "output": 1}}, InvalidArgumentError, "1 to 200 characters"),
        ([("gpt-4o", {"input": 1, "output": 1})], ArgumentTypeError, "prices must be a PriceTable or a mapping"),
    ],
)
def test_a_bad_price_table_is_refused_naming_the_problem(prices: Any, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error) as caught:
        PriceTable.of(prices)
    assert fragment in str(caught.value)
    with pytest.raises(error):
        KikiCallbackHandler([].append, prices=prices)


def test_a_tally_prices_calls_by_model_and_counts_unpriced_ones_apart() -> None:
    tally = CostTally(PriceTable(PRICES))
    first, second = _usage(1000, 200, cached=600), _usage(500, 100, reasoning=40)

    assert tally.add("scripted-a", "kiki", first) == pytest.approx(dollars(first, PRICES["scripted-a"]))
    assert tally.add("scripted-a", "kiki", second) == pytest.approx(dollars(second, PRICES["scripted-a"]))
    assert tally.add("scripted-b", "kiki", second) == pytest.approx(dollars(second, PRICES["kiki:scripted-b"]))
    assert tally.add("scripted-b", "other", second) == pytest.approx(dollars(second, PRICES["scripted-b"]))
    assert tally.add("mystery-9", "kiki", first) is None
    assert tally.add("mystery-9", "kiki", Usage()) is None  # a failed call: counted, with no tokens
    tally.add_unknown(_usage(70, 30))
    tally.add_unknown(Usage())  # nothing to add: no entry

    cost = tally.cost()
    expected = (
        dollars(first, PRICES["scripted-a"])
        + dollars(second, PRICES["scripted-a"])
        + dollars(second, PRICES["kiki:scripted-b"])
        + dollars(second, PRICES["scripted-b"])
    )
    assert cost.total_usd == pytest.approx(expected, abs=1e-9)
    assert [(m.model, m.provider, m.calls) for m in cost.models] == [
        ("scripted-a", "kiki", 2),
        ("scripted-b", "kiki", 1),
        ("scripted-b", "other", 1),
        ("mystery-9", "kiki", 2),
        (None, None, 0),
    ]
    assert cost.models[0].usage == _usage(1500, 300, cached=600, reasoning=40)
    assert [m.usd is None for m in cost.models] == [False, False, False, True, True]
    assert cost.unpriced_calls == 2
    assert cost.unpriced_tokens == first.total_tokens + 100
    assert tally.usage() == _usage(3 * 500 + 2 * 1000 + 70, 3 * 100 + 2 * 200 + 30, cached=1200, reasoning=120)
    assert decode(encode(_done(cost))) == _done(cost)  # the wire keeps it (an unpriced model has no usd)


def _done(cost: Cost) -> DoneEvent:
    return DoneEvent(run_id="r1", seq=3, ts=1.0, status="success", cost=cost)


def test_a_relayed_cost_is_priced_again_with_this_table() -> None:
    elsewhere = Cost(
        total_usd=99.0,
        models=(
            ModelCost(model="scripted-a", provider="kiki", calls=3, usage=_usage(300, 30, cached=100), usd=99.0),
            ModelCost(model="gpt-x", provider="openai", calls=1, usage=_usage(10, 5)),
        ),
    )
    tally = CostTally(PriceTable(PRICES))

    tally.add_cost(elsewhere)

    cost = tally.cost()
    assert cost.total_usd == pytest.approx(dollars(_usage(300, 30, cached=100), PRICES["scripted-a"]), abs=1e-9)
    assert cost.models[0].calls == 3 and cost.unpriced_calls == 1 and cost.unpriced_tokens == 15


# -- the prices section ------------------------------------------------------------------------


def _config_error(tmp_path: Path, body: str) -> str:
    path = tmp_path / "prices.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    return str(caught.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("gpt-4o: {input: -1, output: 1}", "prices.gpt-4o.input: a price cannot be negative (got -1)"),
        ("gpt-4o: {input: 1, output: 1, cache: 0.5}", "prices.gpt-4o.cache: unknown key"),
        ("gpt-4o: {input: 1}", "prices.gpt-4o.output: Field required"),
        ("gpt-4o: {input: .nan, output: 1}", "prices.gpt-4o.input: Input should be a finite number"),
        (
            "gpt-4o: {input: yes, output: 1}",
            "prices.gpt-4o.input: expected US dollars per million tokens, got a boolean",
        ),
        ("gpt-4o: {input: cheap, output: 1}", "prices.gpt-4o.input: Input should be a valid number"),
        ("gpt-4o: 0.5", "prices.gpt-4o: Input should be a valid dictionary or instance of ModelPrice"),
        ("'gpt 4o': {input: 1, output: 1}", "prices.'gpt 4o': a model name is 1 to 200 characters without spaces"),
        ("'openai:': {input: 1, output: 1}", "prices.'openai:': a provider-qualified model name is provider:model"),
        ("'openai:gpt-4o': {input: 1, output: -2}", "prices.'openai:gpt-4o'.output: a price cannot be negative"),
    ],
)
def test_a_bad_prices_section_names_the_key_and_the_problem(tmp_path: Path, body: str, message: str) -> None:
    assert f"prices.yaml: {message}" in _config_error(tmp_path, f"prices:\n  {body}\n")


def test_the_prices_section_becomes_the_price_table(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        "prices:\n  gpt-4o-mini: {input: 0.15, output: 0.60, cached: 0.075}\n"
        "  openai:gpt-4o: {input: 2.5, output: 10}\n"
    )

    table = load_settings(path, environ={}).price_table

    assert table is not None
    assert table.price_of("gpt-4o-mini") == Price(0.15, 0.60, 0.075)
    assert table.price_of("gpt-4o", "openai") == Price(2.5, 10.0)
    assert table.price_of("gpt-4o", "azure") is None
    assert Settings().price_table is None  # no prices: no cost
    shipped = load_settings(ROOT / "config" / "eventbus.yaml", environ={})
    assert shipped.prices == {} and shipped.price_table is None  # ``prices:`` with its examples commented out


# -- the cost on a run's events ----------------------------------------------------------------


def _cached_model(scripted: ModuleType, **options: Any) -> Any:
    """A scripted model whose provider reports cached input and reasoning tokens."""

    class CachingModel(scripted.ScriptedChatModel):  # type: ignore[name-defined,misc]
        def _usage(self, messages: list[BaseMessage], output_tokens: int) -> UsageMetadata:
            usage: UsageMetadata = super()._usage(messages, output_tokens)
            usage["input_token_details"] = InputTokenDetails(cache_read=usage["input_tokens"] // 2)
            usage["output_token_details"] = OutputTokenDetails(reasoning=output_tokens // 3)
            return usage

    return CachingModel(**options)


def three_models(scripted: ModuleType) -> Any:
    """``a`` (cached input, reasoning) answers twice, then ``b``, then the unpriced ``c``."""
    a = _cached_model(scripted, model_name="scripted-a", script=lambda m: AIMessage("alpha beta gamma delta"))
    b = scripted.ScriptedChatModel(model_name="scripted-b", script=lambda m: AIMessage("one two three"))
    c = scripted.ScriptedChatModel(model_name="scripted-c", script=lambda m: AIMessage("unpriced words here"))

    async def step(state: MessagesState, model: Any) -> dict[str, list[BaseMessage]]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    async def first(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {
            "messages": [
                await a.ainvoke(state["messages"]),
                await a.ainvoke("again, with a longer question about the prices"),
            ]
        }

    async def second(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return await step(state, b)

    async def third(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return await step(state, c)

    builder = StateGraph(MessagesState)
    for name, node in (("first", first), ("second", second), ("third", third)):
        builder.add_node(name, node)
    builder.add_edge(START, "first")
    builder.add_edge("first", "second")
    builder.add_edge("second", "third")
    builder.add_edge("third", END)
    return builder.compile()


def _price_for(call: LLMCallEvent) -> dict[str, float] | None:
    return PRICES.get(f"{call.provider}:{call.model}") or PRICES.get(call.model or "")


def _check_cost_of(events: CapturedEvents, own_calls: list[LLMCallEvent]) -> Cost:
    """The done's cost says what the calls say: totals, per model, unpriced apart; its usages add up to the run's."""
    cost = events.done.cost
    assert cost is not None
    priced = [c for c in own_calls if _price_for(c) is not None]
    expected = sum(dollars(c.usage, _price_for(c) or {}) for c in priced)
    assert cost.total_usd == pytest.approx(expected, abs=1e-8)
    unpriced = [c for c in own_calls if _price_for(c) is None]
    assert cost.unpriced_calls == len(unpriced)
    assert cost.unpriced_tokens == sum(c.usage.total_tokens for c in unpriced)
    summed = CostTally(PriceTable({})).usage()
    for item in cost.models:
        summed = Usage(**{k: getattr(summed, k) + getattr(item.usage, k) for k in Usage.model_fields})
    assert summed == events.done.usage
    return cost


@pytest.mark.asyncio
async def test_done_carries_the_cost_of_priced_and_unpriced_calls(scripted: ModuleType) -> None:
    events = await capture_run(three_models(scripted), user("Price this run"), prices=PRICES)

    events.check_invariants()
    calls: list[LLMCallEvent] = events.of_type("llm")  # type: ignore[assignment]
    assert [(c.model, c.provider) for c in calls] == [("scripted-a", "kiki")] * 2 + [
        ("scripted-b", "kiki"),
        ("scripted-c", "kiki"),
    ]
    assert all(c.usage.cached_tokens > 0 and c.usage.reasoning_tokens > 0 for c in calls[:2])
    for call in calls:
        price = _price_for(call)
        if price is None:
            assert call.cost_usd is None
        else:
            assert call.cost_usd == pytest.approx(dollars(call.usage, price), abs=1e-9)
    cost = _check_cost_of(events, calls)
    assert cost.total_usd > 0
    assert [(m.model, m.calls, m.usd is None) for m in cost.models] == [
        ("scripted-a", 2, False),
        ("scripted-b", 1, False),  # at the provider-qualified price
        ("scripted-c", 1, True),
    ]
    assert cost.unpriced_calls == 1
    line = format_event(events.done)
    assert f" cost=${cost.total_usd:.6f} (unpriced: scripted-c)" in line
    assert f" cost=${calls[0].cost_usd:.6f}" in format_event(calls[0])
    for event in events:  # built without validation, equal to the validated rebuild
        rebuilt = type(event)(**{name: getattr(event, name) for name in event.model_fields_set})
        assert rebuilt == event and encode(rebuilt) == encode(event)


@pytest.mark.asyncio
async def test_without_prices_there_is_no_cost_anywhere(scripted: ModuleType) -> None:
    events = await capture_run(three_models(scripted), user("Price this run"))

    assert events.done.cost is None
    assert all(call.cost_usd is None for call in events.of_type("llm"))  # type: ignore[union-attr]
    assert '"cost' not in "".join(encode(event).decode() for event in events)
    assert "cost=" not in format_event(events.done)


def _relaying_graph(child: Any, child_prices: Any, relayed: list[StreamEvent], parent: list[Any]) -> Any:
    """``delegate`` runs ``child`` with a handler of its own and relays its events into this run."""

    async def delegate(state: MessagesState) -> dict[str, list[BaseMessage]]:
        handler, run_id = parent[0], parent[1]

        def relay(event: StreamEvent) -> None:
            relayed.append(event)
            handler.relay(run_id, event, agent_prefix="delegate")

        # A fresh context, as on the node that serves the agent: the child is a run of its own.
        config = {"callbacks": [KikiCallbackHandler(relay, prices=child_prices)]}
        output = await asyncio.create_task(child.ainvoke(state, config), context=contextvars.Context())
        return {"messages": [output["messages"][-1]]}

    builder = StateGraph(MessagesState)
    builder.add_node("delegate", delegate)
    builder.add_edge(START, "delegate")
    builder.add_edge("delegate", END)
    return builder.compile()


@pytest.mark.asyncio
@pytest.mark.parametrize("child_prices", [PRICES, None], ids=["child-priced", "child-unpriced"])
async def test_a_relayed_runs_calls_count_in_the_relaying_runs_cost(scripted: ModuleType, child_prices: Any) -> None:
    relayed: list[StreamEvent] = []
    events = CapturedEvents()
    handler = KikiCallbackHandler(events.append, prices=PRICES)
    run_uuid, run_id = new_run_id()
    graph = _relaying_graph(three_models(scripted), child_prices, relayed, [handler, run_id])

    await graph.ainvoke(user("Delegate this"), {"callbacks": [handler], "run_id": run_uuid})

    child_done = next(e for e in relayed if isinstance(e, DoneEvent))
    assert (child_done.cost is None) == (child_prices is None)
    assert events.done.run_id == run_id and events.done.usage == child_done.usage
    assert not events.of_type("llm")  # the relayed run's calls are not relayed, their cost is
    cost = _check_cost_of(events, [e for e in relayed if isinstance(e, LLMCallEvent)])
    assert [(m.model, m.calls) for m in cost.models] == [("scripted-a", 2), ("scripted-b", 1), ("scripted-c", 1)]


def test_a_relayed_runs_tokens_its_calls_do_not_explain_are_unpriced_of_an_unknown_model() -> None:
    """A relayed run without a cost whose ``done`` has more tokens than its calls seen here (its own delegates')."""
    out: list[StreamEvent] = []
    handler = KikiCallbackHandler(out.append, prices=PRICES)
    root = uuid.uuid4()
    handler.on_chain_start({"name": "team"}, {}, run_id=root)
    run_id = handler.run_id_of(root) or ""
    child: dict[str, Any] = {"run_id": "CHILDRUN12345", "ts": 1.0, "node": "b"}
    call = _usage(400, 100, cached=100)
    llm = LLMCallEvent(
        seq=3,
        message_id="m1",
        status="success",
        model="scripted-a",
        provider="kiki",
        duration_s=0.5,
        usage=call,
        **child,
    )
    done = DoneEvent(seq=4, status="success", usage=_usage(1000, 300, cached=100), **child)

    for event in (TokenEvent(seq=2, message_id="m1", text="hi", **child), llm, done, done):
        handler.relay(run_id, event)
    handler.on_chain_end({}, run_id=root)

    cost = out[-1].cost  # type: ignore[union-attr]
    assert isinstance(out[-1], DoneEvent) and cost is not None
    assert out[-1].usage == done.usage  # the relayed done counts once
    assert cost.total_usd == pytest.approx(dollars(call, PRICES["scripted-a"]), abs=1e-9)
    assert cost.models[1] == ModelCost(model=None, provider=None, calls=0, usage=_usage(600, 200))
    assert cost.unpriced_calls == 0 and cost.unpriced_tokens == 800
