"""Attach KikiCallbackHandler to your own graph and print its events.

    python3 scripts/dev.py run python examples/01_attach_handler.py

The graph here is the demo research team, run with a plain ``ainvoke()``: the
handler alone makes the chat models stream their tokens.
"""

from __future__ import annotations

import asyncio

from _demo import research_team

from kiki_events import EventBus, KikiCallbackHandler, StreamEvent


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
    graph = research_team()
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
