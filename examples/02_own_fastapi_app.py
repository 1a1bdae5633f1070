"""Stream a graph from your own FastAPI app, two ways.

    python3 scripts/dev.py run python examples/02_own_fastapi_app.py

* ``POST /chat`` — one endpoint with ``stream_agent_sse``: the run belongs to the
  response and is cancelled if the client goes away.
* ``/agents/...`` — the full router (start, join, resume with Last-Event-ID,
  cancel) backed by a ``KikiRuntime`` started in the app's lifespan.

The program starts the app on a free port, calls both with httpx, prints what
arrives and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator

import httpx
import uvicorn
from _demo import research_team
from fastapi import FastAPI
from pydantic import BaseModel

from kiki_events import Settings
from kiki_events.heap import freeze_startup_heap, tune_collector
from kiki_events.runtime import KikiRuntime
from kiki_events.server import create_router, stream_agent_sse

graph = research_team()
runtime = KikiRuntime(Settings(), graphs={"team": graph})


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with runtime:
        freeze_startup_heap()  # what start-up built stays out of the collector's full passes
        tune_collector()  # fewer, larger young passes: full passes become rare under load
        yield


app = FastAPI(lifespan=lifespan)
app.include_router(create_router(runtime), prefix="/agents")


class Chat(BaseModel):
    text: str


@app.post("/chat")
async def chat(body: Chat):  # type: ignore[no-untyped-def]
    return stream_agent_sse(graph, {"messages": [{"role": "user", "content": body.text}]}, graph_name="team")


async def read_frames(response: httpx.Response) -> list[tuple[str, str, dict[str, object]]]:
    frames, fields = [], {}
    async for line in response.aiter_lines():
        if not line:
            if "event" in fields:
                frames.append((fields.get("id", ""), fields["event"], json.loads(fields["data"])))
            fields = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            fields[key] = value
    return frames


async def main() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no "started" event
        await asyncio.sleep(0.01)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        async with client.stream("POST", "/chat", json={"text": "Compare Redis streams and pub/sub"}) as response:
            frames = await read_frames(response)
        tokens = sum(1 for _, kind, _ in frames if kind == "token")
        print(f"/chat: {len(frames)} frames, {tokens} tokens, last: {frames[-1][1]} {frames[-1][2].get('status')}")

        started = (await client.post("/agents/runs", json={"graph": "team", "message": "Explain SSE"})).json()
        async with client.stream("GET", started["stream_url"]) as response:
            frames = await read_frames(response)
        print(f"{started['stream_url']}: {len(frames)} frames, last: {frames[-1][1]}")
    server.should_exit = True
    await serving


if __name__ == "__main__":
    asyncio.run(main())
