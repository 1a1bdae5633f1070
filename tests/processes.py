"""Processes the tests start die with the test run, however it ends.

``dying_with_us(command)`` prefixes a command with ``setpriv --pdeathsig KILL`` (util-linux,
Linux) so the kernel kills the process when the test process dies — even by SIGKILL,
when no ``finally`` runs. ``setpriv`` execs the command, so the pid, signals and exit
code stay the command's own. Without ``setpriv`` the command is returned as it is and
the fixtures' ``finally`` blocks are what stop it (``conftest.py`` fails a run that
leaves a process behind either way).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from tests.log_capture import scan_output
from tests.servers import wait_for

__all__ = ["ServeProcess", "dying_with_us"]

ROOT = Path(__file__).resolve().parent.parent

_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def dying_with_us(command: list[str]) -> list[str]:
    """``command``, made to die with this process (see the module docstring)."""
    if _SETPRIV is None:
        return command
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *command]


class ServeProcess:
    """One ``kiki-events serve`` process on a free port, its output in ``log``; it dies with the tests.

    Args:
        name: what the test calls it (in failure messages).
        config: the YAML file it serves.
        log: where its output goes.
        cwd: its working directory.
        env: variables on top of this process's (``KIKI_NODE`` is left out: the config names the node).
    """

    def __init__(self, name: str, config: Path, log: Path, *, cwd: Path, env: Mapping[str, str] = {}) -> None:
        from tests.redis_server import free_port

        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        environ.pop("KIKI_NODE", None)
        self._log_file = log.open("w")
        command = [sys.executable, "-m", "kiki_events.cli", "serve", "--config", str(config), "--port", str(self.port)]
        self.process = subprocess.Popen(
            dying_with_us(command), cwd=cwd, env=environ, stdout=self._log_file, stderr=subprocess.STDOUT
        )

    def health(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/healthz", timeout=5)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def bridge(self) -> dict[str, Any]:
        bridge: dict[str, Any] = self.health()["bridge"]
        return bridge

    def wait_up(self, *, connected: bool = True, timeout: float = 60.0) -> None:
        """Wait until it answers (and, with a bridge and ``connected``, reaches Redis)."""

        def up() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                bridge = self.health()["bridge"]
            except httpx.TransportError:
                return False
            return not connected or bridge is None or bridge["state"] == "connected"

        wait_for(up, timeout, f"{self.name} to serve")

    def stop(self) -> str:
        """SIGTERM (a kill if it does not end within 20 s); returns its output."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log_file.close()
        output = self.log.read_text()
        scan_output(self.name, output)
        return output
