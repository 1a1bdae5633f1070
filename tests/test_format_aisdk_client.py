"""The AI SDK format read by the AI SDK's own client (``ai`` 6 on Node): chunk schema and message state.

Each body goes through ``DefaultChatTransport`` (which parses every chunk against the
SDK's UI message chunk schema) and ``readUIMessageStream`` (the state machine
``useChat`` runs), with a ``fetch`` that answers with the body. The ``ai`` package is
installed with npm into a temporary folder; without Node, npm or the registry the test
skips, unless ``KIKI_REQUIRE_NODE=1``, where that fails it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from kiki_events.events import StatusEvent
from kiki_events.formats.aisdk import FORMAT
from kiki_events.testing import capture_run
from tests.scenarios import frames_of, interrupted_run, one_chunk_run, user

REQUIRE_ENV = "KIKI_REQUIRE_NODE"
AI_VERSION = "6"

CLIENT = """
import { readFileSync } from "node:fs";
import { DefaultChatTransport, readUIMessageStream } from "ai";

const body = readFileSync(process.argv[2]);
const headers = { "content-type": "text/event-stream", "x-vercel-ai-ui-message-stream": "v1" };
const transport = new DefaultChatTransport({
  api: "http://kiki.invalid/chat",
  fetch: async () => new Response(body, { headers }),
});
const errors = [];
let message = null;
try {
  const stream = await transport.sendMessages({
    chatId: "c", messages: [], abortSignal: undefined, trigger: "submit-message", messageId: undefined,
  });
  for await (const m of readUIMessageStream({ stream, onError: (e) => errors.push(String(e?.message ?? e)) })) {
    message = m;
  }
} catch (e) {
  errors.push("thrown: " + String(e?.message ?? e));
}
process.stdout.write(JSON.stringify({ message, errors }));
"""


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def ai_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``ai`` installed and the client script; skipped when it cannot be made."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are needed to run the AI SDK's client")
    folder = tmp_path_factory.mktemp("aisdk-client")
    (folder / "package.json").write_text('{"private": true, "type": "module"}')
    try:
        installed = subprocess.run(
            [str(npm), "install", "--no-audit", "--no-fund", "--loglevel=error", f"ai@{AI_VERSION}"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    except subprocess.TimeoutExpired:
        _unavailable("npm install ai timed out (is the registry reachable?)")
    if installed.returncode != 0:
        _unavailable(f"npm install ai failed: {installed.stderr.strip()[-500:]}")
    (folder / "client.mjs").write_text(CLIENT)
    return folder


def _read(folder: Path, body: bytes) -> dict[str, Any]:
    """What the AI SDK's client makes of ``body``: the final message and the errors it reported."""
    path = folder / "body.txt"
    path.write_bytes(body)
    done = subprocess.run(
        ["node", "client.mjs", str(path)], cwd=folder, capture_output=True, text=True, timeout=60, check=True
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _body(items: list[Any]) -> bytes:
    encoder = FORMAT.encoder()
    return encoder.encode_all(items) + encoder.finish()


def _text(message: dict[str, Any]) -> str:
    return "".join(part["text"] for part in message["parts"] if part["type"] == "text")


def _tools(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {part["toolCallId"]: part for part in message["parts"] if part["type"] == "dynamic-tool"}


@pytest.mark.slow
@pytest.mark.timeout(360)
@pytest.mark.asyncio
async def test_the_ai_sdk_client_reads_every_kind_of_stream(
    ai_client: Path, research_team: ModuleType, scripted: ModuleType
) -> None:
    # A demo run: text, parallel tool calls with streamed arguments, agents as data parts.
    events = await capture_run(research_team.build_graph(), user("Compare Redis streams and pub/sub"))
    read = _read(ai_client, _body(frames_of(events)))
    message = read["message"]
    assert read["errors"] == [] and message["id"] == events.runs()[0] and message["role"] == "assistant"
    assert _text(message) == events.text()
    assert all(part["state"] == "done" for part in message["parts"] if part["type"] == "text")
    tools = _tools(message)
    for call_id, call in events.tool_calls().items():
        assert (tools[call_id]["state"], tools[call_id]["input"]) == ("output-available", call["args"])
        assert tools[call_id]["output"] == call["output"] and tools[call_id]["toolName"] == call["name"]
    assert {p["data"]["agent"] for p in message["parts"] if p["type"] == "data-kiki-agent"} == set(events.agents())

    # A failed tool is an output error.
    events = await capture_run(research_team.build_graph(), user("Please fail to fetch the Redis docs"))
    read = _read(ai_client, _body(frames_of(events)))
    [failed_id] = [i for i, c in events.tool_calls().items() if c.get("error")]
    assert read["errors"] == [] and _tools(read["message"])[failed_id]["state"] == "output-error"

    # A crash: the client reports the error, once.
    events = await capture_run(research_team.build_graph(), user("Compare queues and crash"))
    read = _read(ai_client, _body(frames_of(events)))
    [error] = events.of_type("error")
    assert read["errors"] == [f"RuntimeError: {error.message}"]  # type: ignore[union-attr]

    # An interrupt arrives as a data part.
    read = _read(ai_client, _body(frames_of(await interrupted_run())))
    [carried] = [p for p in read["message"]["parts"] if p["type"] == "data-kiki-interrupt"]
    assert read["errors"] == [] and carried["data"]["interrupts"][0]["value"] == "Publish the report?"

    # Tool calls whose arguments came in one chunk.
    read = _read(ai_client, _body(frames_of(await one_chunk_run(scripted))))
    assert read["errors"] == []
    assert {i: p["input"] for i, p in _tools(read["message"]).items()} == {
        "call-a": {"key": "a"},
        "call-b": {"key": "b"},
    }

    # A stream cut short after a gap notice.
    gap = StatusEvent(run_id="r1", seq=0, ts=1.0, status="gap", first_seq=2, detail="older events are gone")
    read = _read(ai_client, _body([gap]))
    assert read["errors"] == ["the stream ended before the run finished"] and read["message"]["id"] == "r1"


def test_the_client_rejects_a_broken_stream(ai_client: Path) -> None:
    broken = b'data: {"type":"start"}\n\ndata: {"type":"text-delta","id":"a","delta":"x"}\n\ndata: [DONE]\n\n'
    assert _read(ai_client, broken)["errors"], "a delta without its start must be refused"
    unknown = b'data: {"type":"start"}\n\ndata: {"type":"kiki-unknown"}\n\ndata: [DONE]\n\n'
    assert _read(ai_client, unknown)["errors"], "an unknown chunk type must be refused"
