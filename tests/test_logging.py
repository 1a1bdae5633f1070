"""Logs of the package: ids bound at our entry points, credentials masked before any handler.

The server itself is tested as it runs: a ``kiki-events serve`` process writing JSON
lines, read back from its output.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import logging
import re
import socket
import subprocess
import sys
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph.graph import END, START, MessagesState, StateGraph

from kiki_events.cli.logs import JsonFormatter, TextFormatter, configure_logging
from kiki_events.config import LoggingSettings, Settings
from kiki_events.errors import GraphLoadError, InvalidArgumentError
from kiki_events.log import LogFilter, bind, bound_ids, bound_stream, get_logger
from kiki_events.runtime import KikiRuntime
from tests.log_capture import SECRETS, SecretScan, find_secrets
from tests.processes import ROOT, ServeProcess, dying_with_us
from tests.servers import wait_for

PASSWORD = "hunter2"
QUERY_SECRET = "query-secret-4711"
"""In a query string: httpx logs the URLs it requests, so a seeded secret there would be the client's leak."""
TOKEN = "alice-secret-token-0123456789"
assert PASSWORD in SECRETS and TOKEN in SECRETS  # the session's scan looks for both


def _isolated(name: str, handler: logging.Handler) -> logging.Logger:
    """A logger outside the hierarchy: what it logs reaches ``handler`` only (never the session's scan)."""
    logger = logging.Logger(name, logging.DEBUG)
    logger.addHandler(handler)
    return logger


@contextmanager
def server_logging(fmt: str) -> Iterator[logging.Handler]:
    """:func:`configure_logging` into a string, undone afterwards (the root's handlers and level)."""
    root = logging.getLogger()
    level = root.level
    handler = configure_logging(LoggingSettings(format=fmt), stream=io.StringIO())  # type: ignore[arg-type]
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _lines(handler: logging.Handler) -> list[str]:
    stream = getattr(handler, "stream", None)
    assert isinstance(stream, io.StringIO)
    return stream.getvalue().splitlines()


# -- binding ids -------------------------------------------------------------------------------


def test_bind_nests_and_restores(caplog: pytest.LogCaptureFixture) -> None:
    logger = get_logger("kiki_events.tests")
    caplog.set_level(logging.INFO, logger="kiki_events")
    with bind(run_id="r-1", thread_id="t-1"):
        with bind(agent="writer"):
            assert bound_ids() == {"run_id": "r-1", "thread_id": "t-1", "agent": "writer"}
            logger.info("inner")
            logger.info("explicit", extra={"run_id": "r-2"})
        logger.info("outer")
    logger.info("after")
    records = {r.getMessage(): r for r in caplog.records if r.name == "kiki_events.tests"}
    assert (records["inner"].run_id, records["inner"].thread_id, records["inner"].agent) == ("r-1", "t-1", "writer")  # type: ignore[attr-defined]
    assert records["explicit"].run_id == "r-2"  # type: ignore[attr-defined]
    assert not hasattr(records["outer"], "agent") and records["outer"].run_id == "r-1"  # type: ignore[attr-defined]
    assert not any(hasattr(records["after"], key) for key in ("run_id", "thread_id", "agent"))
    assert bound_ids() == {}


def test_get_logger_is_only_for_the_package() -> None:
    with pytest.raises(InvalidArgumentError, match="myapp"):
        get_logger("myapp")
    assert get_logger("kiki_events.bus") is logging.getLogger("kiki_events.bus")
    assert any(isinstance(f, LogFilter) for f in logging.getLogger("kiki_events.bus").filters)


@pytest.mark.asyncio
async def test_bound_stream_binds_while_the_stream_runs_not_while_its_reader_does() -> None:
    seen: list[dict[str, str]] = []

    async def body() -> AsyncGenerator[int, None]:
        try:
            for i in range(3):
                seen.append(bound_ids())
                yield i
        finally:
            seen.append(bound_ids())  # its clean-up, when the reader stops early

    reader: list[dict[str, str]] = []
    stream = bound_stream(body(), run_id="r-9")
    async for item in stream:
        reader.append(bound_ids())
        if item == 1:
            break
    await stream.aclose()
    assert seen == [{"run_id": "r-9"}] * 3
    assert reader == [{}, {}]


def test_every_logger_of_the_package_carries_the_filter() -> None:
    sources = {p: p.read_text() for p in (ROOT / "kiki_events").rglob("*.py") if p.name != "log.py"}
    assert not [p for p, text in sources.items() if 'getLogger("kiki_events' in text]
    for path in sources:  # every module, so that every logger of the package exists
        if path.name == "__main__.py":
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    names = {name for text in sources.values() for name in re.findall(r'get_logger\("([^"]+)"\)', text)}
    assert {"kiki_events.bus", "kiki_events.runs", "kiki_events.server", "kiki_events.bridge"} <= names
    missing = [n for n in sorted(names) if not any(isinstance(f, LogFilter) for f in logging.getLogger(n).filters)]
    assert missing == []


# -- masking -----------------------------------------------------------------------------------


def test_the_filter_masks_message_arguments_extras_and_traceback() -> None:
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(TextFormatter())
    handler.addFilter(LogFilter())  # a handler's filter: records of any logger, e.g. uvicorn's
    logger = _isolated("uvicorn.access", handler)
    try:
        raise ValueError(f"redis://:{PASSWORD}@db:6379/0")
    except ValueError:
        logger.exception(
            "%s - %s",
            "GET /runs?token=abc123&x=1",
            {"Authorization": f"Bearer {TOKEN}"},
            extra={"dsn": f"password={PASSWORD}"},
        )
    logger.warning("bad format %d", "not a number")  # must not raise in the caller
    text = "\n".join(_lines(handler))
    assert find_secrets(text) == []
    assert "token=***" in text and "'Authorization': '***'" in text and "redis://:***@db" in text
    assert "Traceback (most recent call last)" in text and "bad format" in text


def test_records_keep_no_exception_object(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="kiki_events")
    try:
        raise RuntimeError(f"password={PASSWORD}")
    except RuntimeError:
        get_logger("kiki_events.tests").exception("failed")
    record = next(r for r in caplog.records if r.name == "kiki_events.tests")
    assert record.exc_info is None and record.exc_text is not None
    assert "RuntimeError: password=***" in record.exc_text and PASSWORD not in caplog.text


# -- a real run --------------------------------------------------------------------------------


def _failing_graph() -> Any:
    async def work(state: MessagesState) -> dict[str, Any]:
        get_logger("kiki_events.tests.node").info("working")
        await asyncio.sleep(0)
        raise RuntimeError(f"cannot reach redis://app:{PASSWORD}@cache:6379/0")

    builder = StateGraph(MessagesState)
    builder.add_node("work", work)
    builder.add_edge(START, "work")
    builder.add_edge("work", END)
    return builder.compile()


@pytest.mark.asyncio
async def test_records_of_a_real_run_carry_its_ids_and_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kiki_events")
    async with KikiRuntime(Settings(), graphs={"failing": _failing_graph()}) as runtime:
        handle = runtime.runs.start("failing", {"messages": [{"role": "user", "content": "go"}]}, thread_id="t-logs")
        assert await handle.task == "error"
    node = [r for r in caplog.records if r.name == "kiki_events.tests.node"]
    failed = [r for r in caplog.records if r.name == "kiki_events.runs" and r.levelno == logging.ERROR]
    assert len(node) == 1 and len(failed) == 1
    for record in (node[0], failed[0]):
        assert (record.run_id, record.thread_id) == (handle.run_id, "t-logs")  # type: ignore[attr-defined]
    assert "Traceback (most recent call last)" in (failed[0].exc_text or "")
    assert "redis://app:***@cache" in (failed[0].exc_text or "")
    assert PASSWORD not in caplog.text


# -- server formats ----------------------------------------------------------------------------


def test_json_lines_carry_the_bound_ids_and_text_lines_show_them() -> None:
    for fmt in ("json", "text"):
        with server_logging(fmt) as handler:
            logger = get_logger("kiki_events.tests")
            with bind(run_id="r-7", agent="writer"):
                logger.warning("inside")
            logger.warning("outside")
        inside, outside = _lines(handler)[-2:]
        if fmt == "json":
            first, second = json.loads(inside), json.loads(outside)
            assert set(first) == {"ts", "level", "logger", "message", "run_id", "agent"}
            assert (first["message"], first["run_id"], first["agent"], first["level"]) == (
                "inside",
                "r-7",
                "writer",
                "warning",
            )
            assert first["ts"].endswith("Z") and "T" in first["ts"]
            assert set(second) == {"ts", "level", "logger", "message"}
        else:
            assert inside.endswith("kiki_events.tests: inside [run_id=r-7 agent=writer]")
            assert outside.endswith("kiki_events.tests: outside")


def test_the_json_formatter_masks_a_record_no_filter_saw() -> None:
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    handler.addFilter(LogFilter())
    logger = _isolated("app", handler)
    try:
        raise KeyError(f"api_key={SECRETS[8]}")
    except KeyError:
        logger.error("lookup failed", exc_info=True, stack_info=True)
    (line,) = _lines(handler)
    entry = json.loads(line)
    assert "api_key=***" in entry["exception"] and "stack" in entry
    assert find_secrets(line) == []


# -- the secret scan of the whole run -----------------------------------------------------------


def test_the_scan_finds_a_planted_secret_and_passes_clean_lines() -> None:
    scan = SecretScan()
    logger = _isolated("planted", scan)
    logger.info("connected to redis://127.0.0.1:6379/0")
    assert (scan.records, scan.offending) == (1, 0)
    try:
        raise ConnectionError(f"AUTH {PASSWORD} refused")
    except ConnectionError:
        logger.exception("cannot connect")  # the secret only in the traceback
    logger.info("Authorization: Bearer %s", TOKEN)
    assert (scan.records, scan.offending) == (3, 2)
    assert PASSWORD in scan.offenders[0] and TOKEN in scan.offenders[1]


def test_the_session_scan_is_on_the_root_logger() -> None:
    scans = [h for h in logging.getLogger().handlers if isinstance(h, SecretScan)]
    assert len(scans) == 1
    before = scans[0].records
    get_logger("kiki_events.tests").info("counted")
    assert scans[0].records == before + 1


# -- the server process ------------------------------------------------------------------------

_FAILING_IMPORT = f'raise ValueError("cannot reach redis://:{PASSWORD}@cache:6379/0")\n'


def test_a_graph_that_fails_to_import_is_reported_masked(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(_FAILING_IMPORT)
    with pytest.raises(GraphLoadError) as caught:
        KikiRuntime(Settings.from_mapping({"graphs": {"broken": "./broken.py:graph"}}), base_dir=tmp_path)
    assert "redis://:***@cache" in str(caught.value) and PASSWORD not in str(caught.value)

    config = tmp_path / "kiki.yaml"
    config.write_text("graphs:\n  broken: ./broken.py:graph\nlogging:\n  format: json\n")
    done = subprocess.run(
        dying_with_us([sys.executable, "-m", "kiki_events.cli", "serve", "--config", str(config), "--port", "0"]),
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "ValueError: cannot reach redis://:***@cache:6379/0" in done.stderr
    assert PASSWORD not in done.stderr + done.stdout


@pytest.fixture
def json_server(tmp_path: Path) -> Iterator[ServeProcess]:
    config = tmp_path / "kiki.yaml"
    config.write_text(
        f"graphs:\n  team: {ROOT / 'agents' / 'research_team.py'}:graph\n"
        'server:\n  auth:\n    bearer_tokens: {alice: "${ALICE_TOKEN}"}\n'
        "logging:\n  format: json\n  level: INFO\n"
    )
    server = ServeProcess(
        "json-server",
        config,
        tmp_path / "serve.log",
        cwd=tmp_path,
        env={"ALICE_TOKEN": TOKEN, "KIKI_DEMO_TOKEN_DELAY": "0.005"},
    )
    try:
        server.wait_up()
        yield server
    finally:
        server.stop()


def _leave_mid_body(port: int) -> None:
    """Send half a run body, then close the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            b"POST /runs HTTP/1.1\r\nHost: kiki\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"graph\": \"te"
        )  # fmt: skip


def test_the_server_writes_json_lines_without_secrets(json_server: ServeProcess) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=json_server.url, headers=headers, timeout=30) as client:
        assert client.get("/graphs", params={"token": QUERY_SECRET}).status_code == 200
        crashed = client.post("/runs", json={"graph": "team", "message": "Compare queues, then crash"})
        assert crashed.status_code == 202
        run_id = crashed.json()["run_id"]
        wait_for(lambda: client.get(f"/runs/{run_id}").json()["status"] == "error", what="the run to fail")
        # A client that leaves mid-stream, and one that leaves mid-body.
        with client.stream("POST", "/runs/stream", json={"graph": "team", "message": "Compare queues"}) as stream:
            streamed = stream.headers["X-Kiki-Run-Id"]
            for _ in zip(range(3), stream.iter_lines(), strict=False):
                pass
        wait_for(lambda: "gone before the end" in json_server.log.read_text(), what="the mid-stream line")
        _leave_mid_body(json_server.port)
        wait_for(lambda: "client went away" in json_server.log.read_text(), what="the mid-body line")
    output = json_server.stop()

    lines = [line for line in output.splitlines() if not line.startswith("kiki-events: serving")]
    entries = [json.loads(line) for line in lines]  # one JSON object per line, nothing else
    assert all({"ts", "level", "logger", "message"} <= set(entry) for entry in entries)
    assert find_secrets(output) == [] and QUERY_SECRET not in output
    access = [e["message"] for e in entries if e["logger"] == "uvicorn.access"]
    assert any("GET /graphs?token=***" in message for message in access)
    errors = [e for e in entries if e["level"] in ("error", "critical")]
    assert [(e["logger"], e["run_id"]) for e in errors] == [("kiki_events.runs", run_id)]
    assert "Traceback (most recent call last)" in errors[0]["exception"]
    assert "password=***" in errors[0]["exception"]
    left = [e for e in entries if "client went away" in e["message"]]
    assert len(left) == 1 and left[0]["level"] == "info" and left[0]["logger"] == "kiki_events.server"
    assert "POST /runs" in left[0]["message"]
    gone = [e for e in entries if "gone before the end of its stream" in e["message"]]
    assert [(e["level"], e["logger"], e["run_id"]) for e in gone] == [("info", "kiki_events.server", streamed)]
