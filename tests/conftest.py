"""Shared fixtures: demo modules loaded by file path, like the server does."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import settings as hypothesis_settings

from tests import log_capture
from tests.postgres import postgres_dsn
from tests.prometheus import prometheus_server
from tests.redis_server import key_prefix, redis_server, redis_url
from tests.stores import store

__all__ = ["key_prefix", "postgres_dsn", "prometheus_server", "redis_server", "redis_url", "store"]

ROOT = Path(__file__).resolve().parent.parent

# The suite passes every time: properties draw the same examples on every run. To look
# for new failures, run with KIKI_HYPOTHESIS=explore (fresh random examples each run).
hypothesis_settings.register_profile("kiki", derandomize=True)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("KIKI_HYPOTHESIS", "kiki"))
_loaded: dict[str, ModuleType] = {}
_secret_scan: log_capture.SecretScan | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Scan every log line of the run for the tests' fake credentials (tests/log_capture.py)."""
    global _secret_scan
    _secret_scan = log_capture.install()


def load_demo(stem: str) -> ModuleType:
    """Import ``agents/<stem>.py`` by path (``agents`` is not a package)."""
    if stem not in _loaded:
        path = ROOT / "agents" / f"{stem}.py"
        spec = importlib.util.spec_from_file_location(f"kiki_demo_tests_{stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _loaded[stem] = module
    return _loaded[stem]


@pytest.fixture(scope="session")
def research_team() -> ModuleType:
    """The demo research team module (``build_graph``, ``build_benchmark_graph``)."""
    return load_demo("research_team")


@pytest.fixture(scope="session")
def scripted() -> ModuleType:
    """The scripted chat model module."""
    return load_demo("scripted_model")


def _descendants(pid: int) -> list[tuple[int, str]]:
    """Live (non-zombie) processes below ``pid``, as (pid, command line), read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid …": comm may hold spaces or parentheses, so split after the last ')'.
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            parents.setdefault(int(ppid), []).append(int(entry.name))
    found: list[tuple[int, str]] = []
    todo = list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        try:
            raw = (Path("/proc") / str(child) / "cmdline").read_bytes()
            cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append((child, cmdline.strip()))
        todo.extend(parents.get(child, []))
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No secret in any log line, and every process a test started died with it; either fails the run."""
    if _secret_scan is not None:
        log_capture.report(session, _secret_scan)
    if not Path("/proc/self/stat").exists():
        return
    import time

    deadline = time.monotonic() + 5
    left = _descendants(os.getpid())
    while left and time.monotonic() < deadline:
        time.sleep(0.05)  # a killed child may take a moment to be reaped
        left = _descendants(os.getpid())
    if left:
        listing = "\n".join(f"  pid {pid}: {cmd[:200]}" for pid, cmd in left)
        session.config.get_terminal_writer().line(f"\nprocesses left behind by the tests:\n{listing}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
