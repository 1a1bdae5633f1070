"""Attach KikiCallbackHandler to your own graph and print its events.

    python examples/01_attach_handler.py

The graph here is the demo research team, run with a plain ``ainvoke()``: the
handler alone makes the chat models stream their tokens.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from typing import Any

from kiki_events import EventBus, KikiCallbackHandler, StreamEvent


def load_demo_graph() -> Any:
    path = Path(__file__).resolve().parent.parent / "agents" / "research_team.py"
    spec = importlib.util.spec_from_file_location("research_team_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # LangGraph resolves the state's type hints through it
    spec.loader.exec_module(module)
    return module.build_graph(token_delay=0.0)


def show(event: StreamEvent) -> None:
    if event.type == "token":
        print(event.text, end="", flush=True)
    elif event.type == "agent_lifecycle":
        print(f"\n[{event.agent}] {event.phase}")
    elif event.type == "tool_call" and event.phase == "end":
        print(f"\n[{event.agent}] calls {event.name}({event.args})")
    elif event.type == "tool_result":
        print(f"[{event.agent}] {event.name} -> {(event.error or event.output or '')[:60]!r}")
    elif event.type == "done":
        print(f"\ndone: {event.status}, {event.usage.total_tokens} tokens, {event.duration_s:.2f}s")


async def main() -> None:
    graph = load_demo_graph()
    async with EventBus() as bus:
        bus.subscribe(show)  # or: async for event in bus.subscribe(run_id=...)
        handler = KikiCallbackHandler(bus)
        await graph.ainvoke(
            {"messages": [{"role": "user", "content": "Compare Redis streams and pub/sub"}]},
            config={"callbacks": [handler], "configurable": {"thread_id": "example-1"}},
        )
        await bus.drain()


if __name__ == "__main__":
    asyncio.run(main())
