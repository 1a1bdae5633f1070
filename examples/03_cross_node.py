"""Two nodes: a run executes on node A, node B follows it and cancels another one.

    python3 scripts/dev.py run python examples/03_cross_node.py       # in one process, no Redis
    REDIS_URL=redis://127.0.0.1:6379/0 python3 scripts/dev.py run python examples/03_cross_node.py

(the second through Redis pub/sub).

Each node is a ``KikiRuntime``; in production each is its own ``kiki-events serve``
process with ``eventbus.provider: redis``. Here they share a ``MemoryHub`` (or a
Redis), which is all the bridge needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid

from _demo import research_team

from kiki_events import KikiRuntime, Settings
from kiki_events.transports import MemoryHub

TASK = {"messages": [{"role": "user", "content": "Compare Redis streams and pub/sub"}]}


def settings(node: str, prefix: str) -> Settings:
    url = os.environ.get("REDIS_URL")
    eventbus = {"provider": "redis", "redis": {"url": url, "channel_prefix": prefix}} if url else {}
    return Settings.model_validate({"node": node, "eventbus": eventbus})


async def main() -> None:
    hub = MemoryHub()  # stands in for Redis when REDIS_URL is not set
    prefix = f"kiki-example-{uuid.uuid4().hex[:8]}:"  # isolates this example on a shared Redis
    graphs = {"team": research_team(token_delay=0.002)}
    async with (
        KikiRuntime(settings("node-a", prefix), graphs=graphs, hub=hub) as a,
        KikiRuntime(settings("node-b", prefix), hub=hub) as b,
    ):
        run = a.runs.start("team", TASK)
        tokens = 0
        async for event in b.follow(run.run_id):  # B has no such run: the bridge follows A's
            if event.type == "token":
                tokens += 1
            elif event.type == "agent_lifecycle" and event.phase == "completed":
                print(f"on node-b: [{event.agent}] completed (produced on {event.node})")
            elif event.type == "done":
                print(f"on node-b: done {event.status} after {tokens} tokens from {event.node}")

        second = a.runs.start("team", TASK)
        assert b.bridge is not None
        cancelled = False
        async with contextlib.aclosing(b.follow(second.run_id)) as events:
            async for event in events:
                if event.type == "token" and not cancelled:
                    cancelled = True
                    await b.bridge.cancel(second.run_id)  # runs on node A, cancelled from node B
                elif event.type == "done":
                    print(f"on node-b: the second run ended {event.status}")
        print(f"on node-a: the second run is {second.record.status}")


if __name__ == "__main__":
    asyncio.run(main())
