"""``GET /metrics`` on a real server, SSE disconnect reasons, and several worker processes summed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from kiki_events.config import Settings
from kiki_events.formats.kiki import decode_sse
from kiki_events.server import create_app
from kiki_events.testing import CapturedEvents
from tests.metrics_support import samples, samples_of_text, streamed_calls, tally
from tests.processes import ROOT, dying_with_us
from tests.servers import Gate, gated_graph, live_server, read_stream, wait_for

START = {"graph": "team", "message": "Compare Redis streams and pub/sub"}
PROMTOOL = shutil.which("promtool")


def _app(research_team: ModuleType, gate: Gate | None = None, **sections: Any) -> Any:
    graphs: dict[str, object] = {"team": research_team.build_graph(token_delay=0.0)}
    if gate is not None:
        graphs["gated"] = gated_graph(research_team, gate, tokens=5)
    return create_app(Settings.from_mapping(sections), graphs=graphs)


def test_metrics_after_a_demo_run_over_http(research_team: ModuleType) -> None:
    with live_server(_app(research_team)) as srv, httpx.Client(base_url=srv.url) as client:
        frames = read_stream(client, "POST", "/runs/stream", json=START)
        failing = read_stream(client, "POST", "/runs/stream", json={**START, "message": "fail to fetch it"})
        events = CapturedEvents(decode_sse(f.id or "", f.event or "", f.data or "") for f in [*frames, *failing])

        def scrape() -> httpx.Response:
            return client.get("/metrics", follow_redirects=False)

        wait_for(lambda: 'kiki_sse_disconnects_total{reason="completed"} 2.0' in scrape().text, what="2 streams ended")
        response = scrape()

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    expected = tally(events)
    for name in ("kiki_llm_tokens_total", "kiki_llm_requests_total", "kiki_tool_calls_total", "kiki_agent_runs_total"):
        assert samples_of_text(text, name) == dict(expected[name]), name
    assert samples_of_text(text, "kiki_llm_tokens_total")
    ttft = samples_of_text(text, "kiki_llm_time_to_first_token_seconds_count")
    assert sum(ttft.values()) == streamed_calls(events) > 0
    assert samples_of_text(text, "kiki_errors_total") == {(("component", "tool"), ("error_type", "PermissionError")): 1}
    assert samples_of_text(text, "kiki_runs_total") == {(("graph", "team"), ("status", "success")): 2}
    assert samples_of_text(text, "kiki_sse_connections_total") == {(): 2}
    assert 'le="81.92"' in text and 'le="409.6"' in text  # the LLM and run buckets
    if PROMTOOL is not None:
        check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
        assert (check.returncode, check.stdout, check.stderr) == (0, "", "")


def test_metrics_can_move_or_be_switched_off(research_team: ModuleType) -> None:
    with live_server(_app(research_team, metrics={"path": "/prom"})) as srv:
        assert httpx.get(f"{srv.url}/prom").status_code == 200
        assert httpx.get(f"{srv.url}/metrics").status_code == 404
    with live_server(_app(research_team, metrics={"enabled": False})) as srv:
        assert httpx.get(f"{srv.url}/metrics").status_code == 404
        assert httpx.get(f"{srv.url}/healthz").status_code == 200


def test_a_client_that_leaves_is_counted_as_client(research_team: ModuleType) -> None:
    gate = Gate()
    try:
        with live_server(_app(research_team, gate)) as srv, httpx.Client(base_url=srv.url) as client:
            with client.stream("POST", "/runs/stream", json={**START, "graph": "gated"}) as response:
                assert response.status_code == 200
                assert gate.reached.wait(30)
            wait_for(
                lambda: 'kiki_sse_disconnects_total{reason="client"} 1.0' in client.get("/metrics").text,
                what="the disconnect to be counted",
            )
            text = client.get("/metrics").text
            assert samples_of_text(text, "kiki_sse_disconnects_total") == {(("reason", "client"),): 1}
            assert samples_of_text(text, "kiki_sse_clients_connected") == {}
    finally:
        gate.open()


def _line(stream: IO[str] | None) -> dict[str, Any]:
    assert stream is not None
    line = stream.readline()
    assert line, "the worker ended early (see its log)"
    data: dict[str, Any] = json.loads(line)
    return data


def _send(process: subprocess.Popen[str], command: str) -> None:
    assert process.stdin is not None
    process.stdin.write(command + "\n")
    process.stdin.flush()


def test_several_worker_processes_are_summed_in_one_exposition(tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    workers: list[subprocess.Popen[str]] = []
    logs = [(tmp_path / f"worker-{i}.log").open("w") for i in (1, 2)]
    try:
        for i, log in enumerate(logs, 1):
            command = dying_with_us([sys.executable, "-m", "tests.metrics_worker", f"worker-{i}"])
            pipes: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": log}
            workers.append(subprocess.Popen(command, cwd=ROOT, env=env, text=True, **pipes))
        ready = [_line(worker.stdout) for worker in workers]

        def scrape() -> str:
            _send(workers[0], "scrape")
            text: str = _line(workers[0].stdout)["metrics"]
            return text

        # The runs each worker keeps reach the file of worker-2 by its periodic copy.
        wait_for(lambda: samples_of_text(scrape(), "kiki_runs_kept") == {(): 4}, what="both workers' runs_kept")
        text = scrape()

        tokens = samples_of_text(text, "kiki_llm_tokens_total")
        for kind in ("input", "output"):
            assert sum(v for k, v in tokens.items() if ("token_type", kind) in k) == sum(r[kind] for r in ready)
        assert sum(samples_of_text(text, "kiki_llm_requests_total").values()) == sum(r["llm_calls"] for r in ready)
        assert samples_of_text(text, "kiki_runs_total") == {(("graph", "team"), ("status", "success")): 2}
        assert sum(samples_of_text(text, "kiki_llm_tokens_total").values()) > 0
        assert samples_of_text(text, "kiki_runs_in_progress") == {(("graph", "gated"),): 2}  # livesum
        assert samples_of_text(text, "kiki_agent_runs_in_progress") == {(("agent", "hold"),): 2}

        for worker in workers:
            _send(worker, "exit")
        for worker in workers:
            assert worker.wait(60) == 0, (tmp_path / "worker-1.log").read_text()
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
            for stream in (worker.stdin, worker.stdout):
                if stream is not None:
                    stream.close()
        for log in logs:
            log.close()

    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=str(directory))
    assert samples(merged, "kiki_runs_total") == {
        (("graph", "team"), ("status", "success")): 2,
        (("graph", "gated"), ("status", "success")): 2,
    }
    assert not samples(merged, "kiki_runs_in_progress")
    assert not samples(merged, "kiki_agent_runs_in_progress")
