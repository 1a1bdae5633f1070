"""Custom events, and events of other runs relayed into a live run.

:mod:`kiki_events.handoff` uses the relay: a node that hands work to an agent on
another node re-emits that agent's events inside its own run, so whoever watches
this run sees them. Relayed events get this run's id, next seq and thread; their
``causation_id`` is the id of the original event, their ``node`` the node that
made it. The relayed run's usage counts in this run's, and so does its cost (when
this handler has prices): its calls by model are those its ``done``'s ``cost`` lists
(which cover the runs relayed into it), or, when it has none, its ``llm`` events
seen here, with the rest of its ``usage`` counted as unpriced calls of an unknown
model. Every call is priced with this handler's table.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from ..cost import CostTally, usage_minus, usage_of
from ..events import CustomEvent, DoneEvent, LLMCallEvent, StreamEvent, TokenEvent, trusted_token
from .base import HandlerBase, guard, now
from .ids import agent_path
from .state import RUNNING_TOOL, RunState, add_usage

__all__ = ["RelayMixin"]

_NOT_RELAYED = frozenset({"status", "error", "done", "interrupt", "llm"})
_RELAYED_RUNS_PRICED = 256
"""Relayed runs still going whose ``llm`` calls a run keeps for its cost; beyond, the oldest is dropped."""


class RelayMixin(HandlerBase):
    """``custom`` events (from the graph or :meth:`emit_custom`) and :meth:`relay`."""

    @guard
    def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        run = self._owner.get(run_id)
        if run is None:
            return
        running = RUNNING_TOOL.get()
        tool_call_id = running[1] if running is not None and running[0] == run.run_id else None
        self._send(
            run,
            CustomEvent,
            agent=agent_path(metadata),
            name=str(name),
            data=self._jsonable(data),
            tool_call_id=tool_call_id,
        )

    @guard
    def on_stream_write(self, run_id: str, namespace: tuple[str, ...], data: Any) -> None:
        """A write of LangGraph's stream writer in the live run ``run_id``: a ``custom`` event named ``stream``.

        ``namespace`` is the (sub)graph the writing node runs in, as LangGraph's
        ``custom`` stream mode gives it. The write belongs to a tool call when its
        ``data`` names one (a ``tool_call_id`` key) or when exactly one tool call of
        the run is running; it then carries that call's ``tool_call_id`` and agent.
        """
        run = self._runs.get(run_id)
        if run is None:
            return
        tool_call_id: str | None = None
        agent: str | None = "/".join(part.split(":", 1)[0] for part in namespace) or None
        named = data.get("tool_call_id") if isinstance(data, dict) else None
        for call_id, _name, tool_agent, _started in run.tools.values():
            if call_id == named or (named is None and len(run.tools) == 1):
                tool_call_id, agent = call_id, tool_agent
        if tool_call_id is None and isinstance(named, str):
            tool_call_id = named
        self._send(run, CustomEvent, agent=agent, name="stream", data=self._jsonable(data), tool_call_id=tool_call_id)

    def run_id_of(self, lc_run_id: UUID | None) -> str | None:
        """Our run id of the live root run that LangChain run ``lc_run_id`` belongs to."""
        run = self._owner.get(lc_run_id) if lc_run_id is not None else None
        return run.run_id if run is not None else None

    def emit_custom(self, run_id: str, name: str, data: Any, *, agent: str | None = None) -> CustomEvent | None:
        """Add a ``custom`` event to the live run ``run_id``; ``None`` if it is not live."""
        run = self._runs.get(run_id)
        if run is None:
            return None
        event = CustomEvent(
            run_id=run.run_id,
            seq=next(run.seq),
            ts=now(),
            thread_id=run.thread_id,
            causation_id=run.causation_id,
            node=self.node,
            agent=agent,
            name=name,
            data=self._jsonable(data),
        )
        if self._emit(event) is False:
            self.dropped += 1
        return event

    def relay(self, run_id: str, event: StreamEvent, *, agent_prefix: str | None = None) -> StreamEvent | None:
        """Re-emit ``event`` (of another run) inside the live run ``run_id``.

        The copy gets ``run_id``'s id, next seq and thread, ``causation_id`` = the
        original event's id, and its agent under ``agent_prefix`` (like a subgraph:
        ``writer`` + ``draft`` → ``writer/draft``). Message and tool call ids are
        renamed so they cannot collide with this run's own. A run's framing events
        (``status``, ``error``, ``done``, ``interrupt``), its ``llm`` call reports and
        notices are not relayed:
        the relaying node reports the outcome itself. The copy keeps the ``node``
        that produced the original: it is an event of ``run_id``'s run all the same,
        and travels with it (the bridge sends a run's events by the run's owner).
        The relayed run's ``done`` is not relayed, but its ``usage`` is added to this
        run's totals, once per relayed run (its own delegates are in it already).
        Returns the relayed event, or ``None`` when nothing was emitted (not
        relayable, or ``run_id`` is not live).
        """
        run = self._runs.get(run_id)
        if run is None or event.seq == 0 or event.run_id == run_id:
            return None
        if event.type in _NOT_RELAYED:
            if type(event) is DoneEvent and event.run_id not in run.relayed_usage:
                run.relayed_usage.add(event.run_id)
                add_usage(run, event.usage)
                if run.cost is not None:
                    _add_relayed_cost(run, run.cost, event)
            elif type(event) is LLMCallEvent and run.cost is not None and event.run_id not in run.relayed_usage:
                _keep_relayed_call(run, run.cost, event)
            return None
        agent = event.agent
        if agent_prefix:
            agent = f"{agent_prefix}/{agent}" if agent else agent_prefix
        update: dict[str, Any] = {
            "run_id": run.run_id,
            "seq": next(run.seq),
            "thread_id": run.thread_id,
            "causation_id": event.id,
            "agent": agent,
        }
        message_id = getattr(event, "message_id", None)
        if message_id is not None:
            key = f"{event.run_id}|{message_id}"
            mapped = run.relayed_ids.get(key)
            if mapped is None:
                mapped = run.relayed_ids[key] = f"m{next(run.messages)}"
            update["message_id"] = mapped
        tool_call_id = getattr(event, "tool_call_id", None)
        if tool_call_id is not None:
            update["tool_call_id"] = f"{tool_call_id}~{event.run_id[:8]}"
        relayed: StreamEvent
        if type(event) is TokenEvent:
            relayed = trusted_token(
                run.run_id,
                update["seq"],
                event.ts,
                run.thread_id,
                agent,
                update["causation_id"],
                event.node,
                update["message_id"],
                event.text,
                event.kind,
            )
        else:
            relayed = type(event).model_construct(**{**dict(event), **update})
        if self._emit(relayed) is False:
            self.dropped += 1
        return relayed


def _keep_relayed_call(run: RunState, tally: CostTally, event: LLMCallEvent) -> None:
    """Remember a relayed run's LLM call until its ``done`` says whether its own cost covers it."""
    calls = run.relayed_calls.get(event.run_id)
    if calls is None:
        if len(run.relayed_calls) >= _RELAYED_RUNS_PRICED:
            del run.relayed_calls[next(iter(run.relayed_calls))]
        calls = run.relayed_calls[event.run_id] = CostTally(tally.prices)
    calls.add(event.model, event.provider, event.usage)


def _add_relayed_cost(run: RunState, tally: CostTally, done: DoneEvent) -> None:
    """Add a relayed run's calls to ``run``'s cost: by its ``done``'s cost, else by the calls seen here."""
    seen = run.relayed_calls.pop(done.run_id, None)
    covered = done.cost if done.cost is not None else seen.cost() if seen is not None else None
    if covered is not None:
        tally.add_cost(covered)
        tally.add_unknown(usage_minus(done.usage, usage_of(covered)))
    else:
        tally.add_unknown(done.usage)
