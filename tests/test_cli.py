"""The ``kiki-events`` command: ``schema``, ``serve`` errors, and SIGTERM with live clients."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiki_events.cli import main
from kiki_events.events import EVENT_TYPES
from tests.processes import dying_with_us
from tests.servers import iter_frames, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "kiki_events.cli", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_schema_prints_the_json_schema_of_every_event(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0

    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "StreamEvent"
    assert set(schema["discriminator"]["mapping"]) == set(EVENT_TYPES)
    assert len(schema["oneOf"]) == len(EVENT_TYPES)
    for ref in _refs(schema):
        assert ref.startswith("#/$defs/")
        assert ref.removeprefix("#/$defs/") in schema["$defs"]
    done = schema["$defs"]["DoneEvent"]
    assert {"run_id", "seq", "ts", "status"} <= set(done["required"])


@pytest.mark.parametrize(
    ("config", "args", "expected"),
    [
        ("eventbus:\n  provider: kafka\n", (), "eventbus.provider: provider 'kafka' is not supported yet"),
        ("sse:\n  keepalive: soon\n", (), "sse.keepalive: expected a duration"),
        ("runs: [1, 2\n", (), "not valid YAML"),
        ("nonsense: 1\n", (), "nonsense: unknown key"),
        ("graphs:\n  team: ./nowhere.py:graph\n", (), "nowhere.py not found"),
        ("{}\n", ("--graph", "broken"), "--graph 'broken': expected NAME=PATH:ATTR"),
        ("{}\n", ("--port", "70000"), "--port 70000: must be between 0 and 65535"),
    ],
)
def test_serve_with_a_bad_config_returns_2_with_one_clear_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    config: str,
    args: tuple[str, ...],
    expected: str,
) -> None:
    path = tmp_path / "kiki.yaml"
    path.write_text(config)
    monkeypatch.chdir(tmp_path)

    assert main(["serve", "--config", str(path), *args]) == 2

    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("kiki-events: error: ")
    assert expected in lines[0]


def test_the_command_exits_2_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "kiki.yaml"
    path.write_text("eventbus:\n  provider: kafka\n")

    result = _cli("serve", "--config", str(path), cwd=tmp_path)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"kiki-events: error: {path}: eventbus.provider: provider 'kafka' is not supported")


def test_serve_without_arguments_reads_config_eventbus_yaml_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "eventbus.yaml").write_text("runs:\n  max_active: 0\n")
    monkeypatch.chdir(tmp_path)

    assert main(["serve"]) == 2
    assert "config/eventbus.yaml: runs.max_active" in capsys.readouterr().err


def test_serve_without_graphs_serves_the_demo_graph_of_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)

    assert main(["serve", "--config", str(ROOT / "config" / "eventbus.yaml")]) == 2
    err = capsys.readouterr().err
    assert "'./agents/research_team.py:graph'" in err
    assert "not found" in err


def test_serve_settles_the_heap_and_tunes_the_collector_before_it_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    import uvicorn

    from kiki_events.heap import SERVING_THRESHOLDS

    seen: dict[str, Any] = {}

    def run(app: Any, **options: Any) -> None:  # the server itself is not started here
        seen.update(threshold=gc.get_threshold(), frozen=gc.get_freeze_count(), port=options["port"])

    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.chdir(ROOT)
    before = gc.get_threshold()
    root = logging.getLogger()
    level = root.level
    try:
        assert main(["serve", "--config", "config/eventbus.yaml", "--port", "0"]) == 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        # serve configured the process's logging: undo it for the tests that follow
        root.handlers = [h for h in root.handlers if not getattr(h, "_kiki", False)]
        root.setLevel(level)
    assert seen["port"] == 0
    assert seen["threshold"] == SERVING_THRESHOLDS
    assert seen["frozen"] > 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sigterm_gives_live_clients_a_final_done_cancelled_and_exits_cleanly(tmp_path: Path) -> None:
    config = tmp_path / "kiki.yaml"
    config.write_text(f"runs:\n  shutdown_grace: 0.2s\ngraphs:\n  team: {ROOT / 'agents' / 'research_team.py'}:graph\n")
    port = _free_port()
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "KIKI_DEMO_TOKEN_DELAY": "0.05"}
    process = subprocess.Popen(
        dying_with_us([sys.executable, "-m", "kiki_events.cli", "serve", "--config", str(config), "--port", str(port)]),
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the server exited: {process.communicate()}")
            try:
                return httpx.get(f"{url}/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=30, what="the server to start")
        body = {"graph": "team", "message": "Compare Redis streams and pub/sub", "thread_id": "t-1"}
        with (
            httpx.stream("POST", f"{url}/runs/stream", json=body, timeout=30) as response,
            httpx.stream("GET", f"{url}/threads/t-1/stream", timeout=30) as thread,
        ):
            frames = iter_frames(response)
            seen = [next(frames) for _ in range(5)]
            thread_frames = iter_frames(thread)
            on_thread = [next(thread_frames)]
            process.send_signal(signal.SIGTERM)
            seen += list(frames)
            on_thread += list(thread_frames)  # a thread stream ends too, once its runs are done
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert seen[-1].event == "done"
    assert seen[-1].json["status"] == "cancelled"
    assert [f.event for f in seen].count("done") == 1
    assert [f.id for f in on_thread] == [f.id for f in seen]
    # uvicorn re-raises the signal once its graceful shutdown is complete.
    assert process.returncode in (0, -signal.SIGTERM)
    assert "kiki runtime stopped" in err
    assert "Traceback" not in err
    assert f"serving http://127.0.0.1:{port}/" in out


PASSWORD = "s3cret-pw"
_REDIS = "eventbus:\n  provider: redis\n  redis:\n"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (_REDIS + f"    url: 'redis://u:{PASSWORD}@127.0.0.1:notaport/0'\n", "eventbus.redis.url: port 'notaport'"),
        (_REDIS + f"    url: 'redis://:{PASSWORD}@[::1/0'\n", "eventbus.redis.url: the host is not well-formed"),
        (
            _REDIS + f"    url: 'redis://:{PASSWORD}@127.0.0.1:70000/0'\n",
            "eventbus.redis.url: port 70000 is out of range",
        ),
        (_REDIS + f"    url: 'redis://:{PASSWORD}@bad host:6379/0'\n", "eventbus.redis.url: host 'bad host'"),
        (_REDIS + f"    url: 'redis://:{PASSWORD}@127.0.0.1:6379/zero'\n", "eventbus.redis.url: database 'zero'"),
        (
            _REDIS + f"    url: 'http://:{PASSWORD}@127.0.0.1:6379/0'\n",
            "eventbus.redis.url: expected a URL such as redis://",
        ),
        (_REDIS + "    db: one\n", "eventbus.redis.db: expected a database number"),
        (_REDIS + "    db: 1.5\n", "eventbus.redis.db: expected a database number"),
        (
            _REDIS + f"    password: {PASSWORD}\n    mode: pubsub\n    mode: streams\n",
            "eventbus.redis.mode: duplicate key at line 6 (first at line 5)",
        ),
        (
            "handoff:\n  serve: [writer]\n",
            "handoff.serve: serving agents to other nodes needs eventbus.provider: redis",
        ),
    ],
    ids=["port", "ipv6", "port-range", "host", "url-db", "scheme", "db", "db-float", "duplicate", "serve-memory"],
)
@pytest.mark.parametrize("command", ["serve", "tail"])
def test_a_bad_redis_setting_is_one_line_naming_the_key_and_exit_2(
    tmp_path: Path, command: str, config: str, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(config)

    result = _cli(command, "--config", path.name, cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"kiki-events: error: bad.yaml: {expected}"), lines[0]
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stderr + result.stdout


def test_schema_into_a_pipe_nobody_reads_exits_quietly() -> None:
    # Like ``kiki-events schema | head -1`` once head has gone: the write fails with EPIPE.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "kiki_events.cli", "schema"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)

    assert result.stderr == ""
    assert result.returncode == 1


@pytest.mark.parametrize("seq", ["²", "٣", "-1", "1" * 30])
def test_tail_after_takes_a_seq_in_ascii_digits(seq: str) -> None:
    result = _cli("tail", "--run", "r1", "--after", seq)

    assert result.returncode == 2
    assert f"argument --after: expected a seq (0 or more, in digits 0-9), got {seq!r}" in result.stderr
