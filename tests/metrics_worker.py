"""One worker process of the multiprocess metrics test (``python -m tests.metrics_worker NAME``).

Its ``PROMETHEUS_MULTIPROC_DIR`` is set by the test before it starts. It runs one demo
run to its end and parks a second one (after its team's work), prints a JSON line with
what the events of both say, then answers commands read from stdin: ``scrape`` (prints the exposition this
process would answer ``GET /metrics`` with, as JSON) and ``exit`` (lets the parked run
finish and stops cleanly).
"""

from __future__ import annotations

import asyncio
import json
import sys

from kiki_events.config import Settings
from kiki_events.events import LLMCallEvent
from kiki_events.runtime import KikiRuntime
from tests.conftest import load_demo
from tests.servers import Gate, gated_graph

TASK = {"messages": [{"role": "user", "content": "Compare Redis streams and pub/sub"}]}


def _say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def main(name: str) -> None:
    team = load_demo("research_team")
    gate = Gate()
    graphs = {"team": team.build_graph(token_delay=0.0), "gated": gated_graph(team, gate, tokens=5)}
    async with KikiRuntime(Settings.model_validate({"node": name}), graphs=graphs) as runtime:
        handle = runtime.runs.start("team", TASK)
        await handle.task
        parked = runtime.runs.start("gated", TASK)
        await asyncio.to_thread(gate.reached.wait)
        # Both runs' events so far (the parked run went through the whole team first).
        frames = [f for run in (handle, parked) for f in run.record.log.read(0, 1_000_000)[0]]
        usage = [f.event.usage for f in frames if isinstance(f.event, LLMCallEvent)]
        _say(
            ready=name,
            llm_calls=len(usage),
            input=sum(u.input_tokens for u in usage),
            output=sum(u.output_tokens for u in usage),
        )
        while (command := (await asyncio.to_thread(sys.stdin.readline)).strip()) != "exit":
            if command == "scrape":
                _say(metrics=runtime.metrics_text().decode())
        gate.open()
        await parked.task


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
