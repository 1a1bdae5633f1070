"""What the metrics tests share: reading samples, and the values a run's own events imply."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from kiki_events.events import (
    AgentLifecycleEvent,
    DoneEvent,
    ErrorEvent,
    LLMCallEvent,
    StatusEvent,
    StreamEvent,
    TokenEvent,
    ToolResultEvent,
)

Labels = tuple[tuple[str, str], ...]

__all__ = ["Labels", "samples", "samples_of_text", "streamed_calls", "tally"]


def _collect(families: Iterable[Any], name: str) -> dict[Labels, float]:
    found: dict[Labels, float] = {}
    for family in families:
        for sample in family.samples:
            if sample.name == name and sample.value:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def samples(registry: CollectorRegistry, name: str) -> dict[Labels, float]:
    """The nonzero samples called ``name`` (e.g. ``kiki_llm_tokens_total``), by their sorted labels."""
    return _collect(registry.collect(), name)


def samples_of_text(text: str, name: str) -> dict[Labels, float]:
    """The same, read from a text exposition."""
    return _collect(text_string_to_metric_families(text), name)


def _key(**labels: str) -> Labels:
    return tuple(sorted(labels.items()))


class _Tally:
    """What events add to every event-fed metric (named as exposed), each event counted."""

    def __init__(self) -> None:
        self.out: dict[str, Counter[Labels]] = {}
        self.graphs: dict[str, str] = {}
        self.error_types: dict[str, str] = {}

    def add(self, name: str, labels: Labels, amount: float = 1) -> None:
        self.out.setdefault(name, Counter())[labels] += amount

    def event(self, e: StreamEvent) -> None:
        self.add("kiki_events_published_total", _key(type=e.type))
        if isinstance(e, StatusEvent) and e.status == "started":
            self.graphs[e.run_id] = e.graph or ""
        elif isinstance(e, LLMCallEvent):
            self.llm(e)
        elif isinstance(e, ToolResultEvent):
            status = "error" if e.error is not None else "success"
            self.add("kiki_tool_calls_total", _key(agent=e.agent or "", tool=e.name or "", status=status))
            if e.error is not None:
                self.add("kiki_errors_total", _key(component="tool", error_type=e.error_type or "ToolMessage"))
        elif isinstance(e, AgentLifecycleEvent) and e.phase != "started":
            status = "success" if e.phase == "completed" else "error"
            self.add("kiki_agent_runs_total", _key(agent=e.agent or "", status=status))
            if e.error:
                self.add("kiki_errors_total", _key(component="agent", error_type=e.error.split(":")[0]))
        elif isinstance(e, ErrorEvent):
            self.error_types[e.run_id] = e.error_type
        elif isinstance(e, DoneEvent):
            self.add("kiki_runs_total", _key(graph=self.graphs[e.run_id], status=e.status))
            if e.status == "error":
                self.add("kiki_errors_total", _key(component="run", error_type=self.error_types[e.run_id]))

    def llm(self, e: LLMCallEvent) -> None:
        agent, provider, model = e.agent or "", e.provider or "", e.model or ""
        self.add("kiki_llm_requests_total", _key(agent=agent, provider=provider, model=model, status=e.status))
        self.add("kiki_llm_request_duration_seconds_count", _key(provider=provider, model=model))
        if e.ttft_s is not None:
            self.add("kiki_llm_time_to_first_token_seconds_count", _key(provider=provider, model=model))
        for kind in ("input", "output", "reasoning", "cached"):
            count = getattr(e.usage, f"{kind}_tokens")
            if count:
                labels = _key(agent=agent, provider=provider, model=model, token_type=kind)
                self.add("kiki_llm_tokens_total", labels, count)
        if e.cost_usd:
            self.add("kiki_llm_cost_usd_total", _key(agent=agent, provider=provider, model=model), e.cost_usd)


def tally(events: Iterable[StreamEvent]) -> dict[str, Counter[Labels]]:
    """What the given events, each counted, add to every event-fed metric (named as exposed)."""
    counts = _Tally()
    for e in events:
        if e.seq > 0:
            counts.event(e)
    return counts.out


def streamed_calls(events: Iterable[StreamEvent]) -> int:
    """LLM calls whose message streamed at least one token."""
    events = list(events)
    streamed = {(e.run_id, e.message_id) for e in events if isinstance(e, TokenEvent)}
    return sum(1 for e in events if isinstance(e, LLMCallEvent) and (e.run_id, e.message_id) in streamed)
