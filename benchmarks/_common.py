"""Shared benchmark plumbing: demo loading, a private Redis, medians, JSON output."""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def load_demo(stem: str) -> ModuleType:
    """Import ``agents/<stem>.py`` by path (``agents`` is not a package)."""
    path = ROOT / "agents" / f"{stem}.py"
    spec = importlib.util.spec_from_file_location(f"kiki_bench_{stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """``preexec_fn`` of a helper process: the kernel kills it when ``parent`` dies, even by SIGKILL.

    Linux only (``PR_SET_PDEATHSIG``); elsewhere the parent's ``finally``/``atexit`` must do.
    The signal follows the thread that started the child: start helpers from the main thread.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def start_helper(args: list[str]) -> subprocess.Popen[bytes]:
    """Start a helper process (output discarded) that dies with this one however it ends."""
    parent = os.getpid()
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=lambda: die_with_parent(parent)
    )
    atexit.register(_kill, process)
    return process


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)


class PrivateRedis:
    """Our own ``redis-server`` on a free port (never the machine's shared one); it dies with us."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="kiki-bench-redis-")
        self.process = start_helper(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--protected-mode", "no"]
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        _kill(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_results(name: str, results: dict[str, Any], out: str | None) -> Path:
    """Write ``results`` (plus machine facts) as JSON; return the path."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "machine": platform.machine(),
        **results,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def verdict(value: float, bar: float, *, higher_is_better: bool = False) -> str:
    ok = value >= bar if higher_is_better else value <= bar
    return "PASS" if ok else "FAIL"
